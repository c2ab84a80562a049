"""OpenAI parity with the real default model: completions, sampling, logprobs, JSON, tools."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest

ASK = [{"role": "user", "content": "Tell me about the sea."}]


def test_legacy_completions(client):
    one = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert one.object == "text_completion" and one.choices[0].text.strip()
    assert one.choices[0].text.startswith(" ")  # the leading space is kept
    many = client.completions.create(
        model="default",
        prompt=["Once upon a time", "1, 2, 3,"],
        max_tokens=4,
        temperature=0,
        echo=True,
        n=2,
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[2].text.startswith("1, 2, 3,")
    lp = (
        client.completions.create(
            model="default", prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=3
        )
        .choices[0]
        .logprobs
    )
    assert len(lp.tokens) == 4 and len(lp.top_logprobs[0]) == 3
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="default",
            prompt="The capital of France is",
            max_tokens=6,
            temperature=0,
            stream=True,
        )
        if c.choices
    )
    assert streamed == one.choices[0].text


def test_prompt_scoring_prefers_the_true_continuation(client):
    """lm-eval-harness's loglikelihood request: echo + logprobs + max_tokens 0."""
    totals = {}
    for city in ("Paris", "Rome"):
        choice = client.completions.create(
            model="default", prompt=f"The capital of France is {city}.", max_tokens=0,
            echo=True, logprobs=1, temperature=0,
        ).choices[0]
        lp = choice.logprobs
        assert choice.text == f"The capital of France is {city}."
        assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
        assert choice.finish_reason == "length"
        totals[city] = sum(lp.token_logprobs[1:])
    assert totals["Paris"] > totals["Rome"]


def test_logprobs_on_chat(client):
    completion = client.chat.completions.create(
        model="default", messages=ASK, max_tokens=5, temperature=0, logprobs=True, top_logprobs=4
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(t.token for t in content) == completion.choices[0].message.content
    for token in content:
        tops = [t.logprob for t in token.top_logprobs]
        assert len(tops) == 4 and tops == sorted(tops, reverse=True)
        assert token.top_logprobs[0].token == token.token


def test_logit_bias_penalties_and_seed(client, server):
    base = client.chat.completions.create(
        model="default", messages=ASK, max_tokens=12, temperature=0, logprobs=True
    )
    first = base.choices[0].logprobs.content[0]
    ids = httpx.post(
        server.base_url + "/tokenize",
        json={"model": "default", "prompt": first.token, "add_special_tokens": False},
    ).json()["tokens"]
    banned = client.chat.completions.create(
        model="default",
        messages=ASK,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        logit_bias={str(ids[0]): -100},
    )
    assert banned.choices[0].logprobs.content[0].token != first.token
    penalised = client.chat.completions.create(
        model="default",
        messages=ASK,
        max_tokens=12,
        temperature=0,
        frequency_penalty=1.5,
        presence_penalty=1.5,
    )
    plain = client.chat.completions.create(
        model="default", messages=ASK, max_tokens=40, temperature=0
    )
    strong = client.chat.completions.create(
        model="default", messages=ASK, max_tokens=40, temperature=0, frequency_penalty=2.0
    )
    assert strong.choices[0].message.content != plain.choices[0].message.content
    assert penalised.choices[0].message.content
    seeded = dict(model="default", messages=ASK, max_tokens=10, temperature=1.2, seed=99)
    assert (
        client.chat.completions.create(**seeded).choices[0].message.content
        == client.chat.completions.create(**seeded).choices[0].message.content
    )


SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "hobbies": {
                "type": "array",
                "items": {"enum": ["chess", "music", "hiking"]},
                "maxItems": 3,
            },
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "zip": {"type": "integer", "minimum": 0, "maximum": 99999},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "hobbies", "address"],
        "additionalProperties": False,
    },
    "verdict": {
        "type": "object",
        "properties": {
            "answer": {"enum": ["yes", "no"]},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_validates(client, name):
    schema = SCHEMAS[name]
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": f"Give me a {name} as JSON."}],
        max_tokens=120,
        temperature=0.8,
        seed=3,
        n=2,
        response_format=fmt,
    )
    for choice in completion.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), schema)
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": f"A {name}, as JSON."}],
        max_tokens=120,
        temperature=0.8,
        response_format=fmt,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
        },
    },
}


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_time"}}]
)
def test_forced_tool_calls_are_valid(client, choice):
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice=choice,
        max_tokens=60,
        temperature=0,
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    call = message.tool_calls[0]
    assert call.id.startswith("call_")
    tool = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}[call.function.name]
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_bad_structured_requests_are_400(client):
    cases = [
        dict(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "bogus"}},
            }
        ),
        dict(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "no"}}),
        dict(tools=[WEATHER_TOOL], tool_choice="always"),
    ]
    for extra in cases:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="default", messages=ASK, max_tokens=4, **extra)


def test_eight_concurrent_constrained_and_free_requests(client):
    schema = SCHEMAS["verdict"]
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": schema}}

    def one(i: int):
        if i % 2 == 0:
            out = client.chat.completions.create(
                model="default",
                messages=[{"role": "user", "content": f"Is {i} even?"}],
                max_tokens=40,
                temperature=0.7,
                seed=i,
                response_format=fmt,
            )
            return "json", out
        out = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=16,
            temperature=0,
        )
        return "free", out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for kind, out in results:
        choice = out.choices[0]
        if kind == "json":
            jsonschema.validate(json.loads(choice.message.content), schema)
        else:
            assert choice.message.content and choice.finish_reason in ("stop", "length")
