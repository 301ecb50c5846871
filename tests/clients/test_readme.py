"""The README's Python snippet, extracted from README.md and run as written against the
gateway run.sh starts from examples/sluice.toml (the README's quick start, with the
simulator as DashScope). The one change: the snippet's http://127.0.0.1:8080 becomes the
free port that gateway listens on."""

import ast
import os
import re

from conftest import get_json

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QUICK_START_URL = "http://127.0.0.1:8080"


def readme_snippet():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README.md has a ```python block"
    assert QUICK_START_URL in blocks[0], "the snippet calls the quick start's gateway"
    return blocks[0]


def run(source):
    """Runs `source` like a script; returns the value of its last expression."""
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    scope = {}
    exec(compile(tree, "README.md", "exec"), scope)
    assert last is not None, "the snippet ends with the call whose answer we check"
    return eval(compile(ast.Expression(last.value), "README.md", "eval"), scope)


def served(sim):
    stats = get_json(sim + "/stats")
    return sum(m["accepted"] for a in stats["accounts"].values() for m in a["models"].values())


def test_the_readme_snippet_runs_as_written_against_the_quick_start():
    gateway = os.environ["SLUICE_README_GATEWAY"]
    sim = os.environ["SLUICE_README_SIM"]
    before = served(sim)
    answer = run(readme_snippet().replace(QUICK_START_URL, gateway))
    assert answer.choices[0].message.content
    assert answer.model == "qwen3-max"
    assert served(sim) == before + 1, "the simulator (as DashScope) served the snippet's request"
