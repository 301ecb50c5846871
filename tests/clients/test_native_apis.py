"""The OpenAI Responses API and Anthropic's Messages API through the gateway, with the
official SDKs unchanged but for their base URL and the tenant key: answers, streams and
usage as each SDK parses them, and the referee's counts matching what was metered."""

import time

import anthropic
import pytest

from conftest import metric, sim_model

PROMPT = "Hello, world!"


@pytest.fixture()
def claude(gateway):
    """Anthropic's SDK: it sends the tenant key as x-api-key and anthropic-version."""
    return anthropic.Anthropic(base_url=gateway, api_key="sk-client", max_retries=0)


def test_responses_create(client, sim):
    before = sim_model(sim, "qwen3-max")["accepted"]
    r = client.responses.create(model="qwen3-max", instructions="abcd", input=PROMPT,
                                max_output_tokens=6)
    assert r.object == "response"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert len(r.output_text.split()) == 6
    # 3 priming + (3 + 1) instructions + (3 + 4) input, as the simulator counts.
    assert (r.usage.input_tokens, r.usage.output_tokens) == (14, 6)
    assert sim_model(sim, "qwen3-max")["accepted"] == before + 1


def test_responses_stream(client):
    stream = client.responses.create(model="qwen3-max", input=[
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}],
        max_output_tokens=7, stream=True)
    kinds, text, final = [], "", None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[0] == "response.created"
    assert len(text.split()) == 7
    assert final is not None and final.usage.output_tokens == 7
    assert final.usage.input_tokens == 10


def test_messages_create(claude, sim, gateway):
    before = metric(gateway, "sluice_tokens_total", model="claude-sonnet-4-5", source="actual")
    m = claude.messages.create(model="claude-sonnet-4-5", max_tokens=5, system="abcd",
                               messages=[{"role": "user", "content": PROMPT}])
    assert m.type == "message" and m.role == "assistant"
    assert m.stop_reason == "max_tokens"
    assert len(m.content[0].text.split()) == 5
    assert (m.usage.input_tokens, m.usage.output_tokens) == (14, 5)
    # Reconciled from the provider's usage (in the background): poll, bounded.
    for _ in range(100):
        after = metric(gateway, "sluice_tokens_total", model="claude-sonnet-4-5", source="actual")
        if after - before == 19:
            break
        time.sleep(0.05)
    assert after - before == 19


def test_messages_stream(claude):
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=8,
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 8
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 8)


def test_messages_errors_are_anthropic_shaped(gateway):
    bad = anthropic.Anthropic(base_url=gateway, api_key="sk-not-a-tenant", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=5,
                            messages=[{"role": "user", "content": PROMPT}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"
