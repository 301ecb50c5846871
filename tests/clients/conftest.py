"""Shared fixtures: the gateway and simulator started by run.sh, and SDK clients."""

import json
import os
import urllib.request

import openai
import pytest


@pytest.fixture(scope="session")
def gateway():
    return os.environ["SLUICE_GATEWAY"]


@pytest.fixture(scope="session")
def sim():
    return os.environ["SLUICE_SIM"]


@pytest.fixture()
def client(gateway):
    """The official SDK, unchanged but for its base URL (and the tenant key)."""
    return openai.OpenAI(base_url=gateway + "/v1", api_key="sk-client")


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def sim_model(sim, model):
    """The referee's counters for `model` on the upstream account."""
    return get_json(sim + "/stats")["accounts"]["acct"]["models"][model]


def metric(gateway, name, **labels):
    """Sum of a Prometheus counter over the series that carry `labels`."""
    with urllib.request.urlopen(gateway + "/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def captured(path=None):
    """Request bodies the capturing upstream received, oldest first."""
    path = path or os.environ["SLUICE_CAPTURED"]
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
