"""The official OpenAI Python SDK against the gateway, unchanged but for its base URL."""

import json

import openai
import pytest

from conftest import captured, metric, sim_model

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}]


def test_plain_chat(client):
    r = client.chat.completions.create(
        model="qwen3-max", messages=[{"role": "user", "content": "Hello, world!"}], max_tokens=5)
    assert r.object == "chat.completion"
    assert len(r.choices) == 1
    assert len(r.choices[0].message.content.split()) == 5
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (10, 5, 15)


def test_plain_chat_carries_sluice_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-max", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert raw.headers["x-sluice-model"] == "qwen3-max"
    assert raw.headers["x-sluice-account"] == "key-0"
    assert raw.parse().usage.completion_tokens == 3


def test_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(
        model="qwen3-max", messages=[{"role": "user", "content": "Hello, world!"}],
        max_tokens=9, stream=True, stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert len(text.split()) == 9
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 9 and usage.prompt_tokens == 10


def test_streaming_chat_without_usage_gets_no_usage_chunk(client):
    # The gateway asks the upstream for usage; a client that did not ask must not see it.
    chunks = list(client.chat.completions.create(
        model="qwen3-max", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).split().__len__() == 4


def test_embeddings(client):
    r = client.embeddings.create(model="text-embedding-3-small", input=["one", "two words"])
    assert [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in r.data)
    assert r.usage.prompt_tokens > 0


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"qwen3-max", "text-embedding-3-small", "tool-model", "tiny"} <= ids


def test_tool_calls_pass_through_intact(client):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(
        model="tool-model", messages=messages, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False, max_tokens=50)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.id == "call_abc123" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    body = captured()[-1]["body"]
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["messages"] == messages

    # The tool's result goes back through the gateway as the SDK writes it.
    follow = messages + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "{\"temp\": 21}"},
    ]
    client.chat.completions.create(model="tool-model", messages=follow, tools=TOOLS, max_tokens=50)
    assert captured()[-1]["body"]["messages"] == follow


def test_streamed_tool_calls_pass_through_intact(client):
    stream = client.chat.completions.create(
        model="tool-model", messages=[{"role": "user", "content": "Weather?"}],
        tools=TOOLS, stream=True, max_tokens=50)
    name, args, finish = "", "", None
    for chunk in stream:
        assert chunk.usage is None  # asked for by the gateway, stripped for this client
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            finish = c.finish_reason or finish
    assert name == "get_weather" and finish == "tool_calls"
    assert json.loads(args) == {"city": "Paris", "unit": "celsius"}
    body = captured()[-1]["body"]
    assert body["tools"] == TOOLS and body["stream"] is True


def test_sdk_retry_honours_the_gateways_retry_after(gateway, sim, client):
    """`tiny` allows 1 request per 1.5 s. A request that may not wait gets the gateway's
    429 with Retry-After; the SDK waits that long and retries once, and the retry fits."""
    msgs = [{"role": "user", "content": "hi"}]
    accepted = sim_model(sim, "tiny")["accepted"]
    limited = metric(gateway, "sluice_requests_total", model="tiny", outcome="rate_limited")

    client.chat.completions.create(model="tiny", messages=msgs, max_tokens=1)  # takes the slot

    # Without retries the SDK surfaces the gateway's honest 429.
    no_retry = client.with_options(max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        no_retry.chat.completions.create(model="tiny", messages=msgs, max_tokens=1,
                                         extra_headers={"x-sluice-max-wait": "0"})
    h = e.value.response.headers
    assert 0 < float(h["retry-after-ms"]) <= 1600 and int(h["retry-after"]) in (1, 2)
    assert e.value.body["code"] == "rate_limit_exceeded"

    # With its default retries it waits Retry-After and succeeds on the next attempt.
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=msgs, max_tokens=1, extra_headers={"x-sluice-max-wait": "0"})
    assert raw.parse().usage.completion_tokens == 1
    assert raw.retries_taken == 1  # the SDK says it retried once
    # Counters, not timing: the gateway refused twice (no-retry call, first SDK attempt),
    # and the provider admitted exactly the two successes and refused nothing.
    assert metric(gateway, "sluice_requests_total", model="tiny", outcome="rate_limited") - limited == 2
    after = sim_model(sim, "tiny")
    assert after["accepted"] - accepted == 2
    assert sum(after["refused"].values()) == 0
