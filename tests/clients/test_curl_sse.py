"""Raw HTTP with curl: server-sent events as they come off the wire, and the 429's headers."""

import json
import subprocess


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args],
                          capture_output=True, text=True, check=True).stdout


def test_raw_sse_stream(gateway):
    body = json.dumps({"model": "qwen3-max", "stream": True, "max_tokens": 6,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "Hello"}]})
    out = curl("-N", "-D", "-", gateway + "/v1/chat/completions",
               "-H", "authorization: Bearer sk-client", "-H", "content-type: application/json", "-d", body)
    head, _, events = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "content-type: text/event-stream" in head.lower()
    lines = [l for l in events.split("\n") if l]
    assert lines and all(l.startswith("data: ") for l in lines), lines
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(l[6:]) for l in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert len(text.split()) == 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    # Events are separated by blank lines.
    assert "\n\n".join(lines) + "\n\n" == events.lstrip("\n")


def test_raw_429_carries_retry_after(gateway):
    body = json.dumps({"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})
    args = [gateway + "/v1/chat/completions", "-H", "authorization: Bearer sk-client",
            "-H", "content-type: application/json", "-d", body]
    curl("-o", "/dev/null", *args)  # take the slot (waits for it if needed)
    out = curl("-D", "-", "-H", "x-sluice-max-wait: 0", *args).replace("\r\n", "\n")
    head, _, rest = out.partition("\n\n")
    assert head.startswith("HTTP/1.1 429"), head
    hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in head.split("\n")[1:]}
    assert int(hdrs["retry-after"]) >= 1 and float(hdrs["retry-after-ms"]) > 0
    assert json.loads(rest)["error"]["code"] == "rate_limit_exceeded"
