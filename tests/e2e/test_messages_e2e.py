"""Anthropic's Messages API through the official ``anthropic`` SDK, against the real server.

The shared server maps ``claude-*`` to the default model (SmolLM2-135M, see conftest.py).
That model does not call tools on its own, so tool calls are forced (``any`` / ``tool``),
which the grammar makes valid whatever the model. The SDK no longer takes ``temperature``
as an argument; it goes in ``extra_body``, as any client of an older API version sends it.
"""

from __future__ import annotations

import anthropic
import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

MODEL = "claude-sonnet-4-5"
GREEDY = {"temperature": 0}
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                     "required": ["city"]},
}
ADD = {
    "name": "add",
    "description": "Add two integers",
    "input_schema": {"type": "object", "properties": {"a": {"type": "integer"},
                                                      "b": {"type": "integer"}},
                     "required": ["a", "b"]},
}


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0,
                               timeout=300)


def test_create_answers_with_usage_and_request_id(claude: anthropic.Anthropic):
    message = claude.messages.create(model=MODEL, max_tokens=40, messages=CAPITAL,
                                     extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.id.startswith("msg_") and message.stop_reason == "end_turn"
    assert "Paris" in message.content[0].text
    assert message.usage.output_tokens > 0
    assert message._request_id == message.model_extra["htdi"]["requestId"]
    counted = claude.messages.count_tokens(model=MODEL, messages=CAPITAL)
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens


def test_stream_helpers_give_the_same_answer(claude: anthropic.Anthropic):
    whole = claude.messages.create(model=MODEL, max_tokens=24, messages=CAPITAL,
                                   extra_body=GREEDY).content[0].text
    with claude.messages.stream(model=MODEL, max_tokens=24, messages=CAPITAL,
                                extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    # the same prompt again: all but its last token comes from the prefix cache
    assert final.usage.cache_read_input_tokens > 0


def test_tool_use_then_tool_result_round_trip(claude: anthropic.Anthropic):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = claude.messages.create(model=MODEL, max_tokens=60, messages=ask, tools=[WEATHER],
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   extra_body=GREEDY)
    assert first.stop_reason == "tool_use"
    (call,) = first.content
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    result = "Sunny and 21 degrees Celsius, light wind from the west."
    history = ask + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": result}]},
    ]
    final = claude.messages.create(model=MODEL, max_tokens=40, messages=history,
                                   tools=[WEATHER], extra_body=GREEDY)
    assert final.content and final.stop_reason in ("end_turn", "tool_use", "max_tokens")
    before = first.usage.input_tokens + first.usage.cache_read_input_tokens
    after = final.usage.input_tokens + final.usage.cache_read_input_tokens
    assert after > before + 10  # the call and its result are in the prompt


def test_any_tool_choice_streams_a_valid_call(claude: anthropic.Anthropic):
    ask = [{"role": "user", "content": "What is 5 plus 60?"}]
    with claude.messages.stream(model=MODEL, max_tokens=80, messages=ask, tools=[WEATHER, ADD],
                                tool_choice={"type": "any"}) as stream:
        fragments = [event.partial_json for event in stream if event.type == "input_json"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and len(fragments) > 1
    (call,) = final.content
    schema = {"get_weather": WEATHER, "add": ADD}[call.name]["input_schema"]
    jsonschema.validate(call.input, schema)


def test_stop_sequences_end_the_answer(claude: anthropic.Anthropic):
    message = claude.messages.create(model=MODEL, max_tokens=40, messages=CAPITAL,
                                     stop_sequences=["Paris", "never"], extra_body=GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "Paris"
    assert "Paris" not in message.content[0].text and message.content[0].text


def test_claude_code_attribution_line_keeps_the_prefix_cache(claude: anthropic.Anthropic):
    rules = "You are a terse assistant. Answer in one sentence. Never use lists. " * 6

    def ask(cch: str):
        system = [
            {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.197.a3f; "
                                     f"cc_entrypoint=cli; cch={cch};"},
            {"type": "text", "text": rules, "cache_control": {"type": "ephemeral"}},
        ]
        return claude.messages.create(model=MODEL, max_tokens=2, system=system,
                                      messages=CAPITAL).usage

    first, second = ask("97bd6"), ask("ead88")
    total = first.input_tokens + first.cache_read_input_tokens
    assert second.cache_read_input_tokens >= total - 4, (first, second)


def test_errors_raise_the_sdks_types(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="gpt-unknown", max_tokens=4, messages=CAPITAL)
    assert missing.value.status_code == 404
    assert missing.value.body["error"]["type"] == "not_found_error"
    assert missing.value.request_id
    with pytest.raises(anthropic.BadRequestError) as too_many:
        claude.messages.create(model=MODEL, max_tokens=99999, messages=CAPITAL)
    assert too_many.value.body["error"]["param"] == "max_tokens"
    with pytest.raises(anthropic.BadRequestError) as image:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]}])
    assert "text only" in image.value.message


def test_x_api_key_is_checked_before_anything_else():
    """The SDK sends its key as ``x-api-key``; a server with keys answers a wrong one 401
    ``authentication_error`` (in process: no model is needed to refuse a request)."""
    app = create_app(Settings(api_key="sk-right"))
    wrong = anthropic.Anthropic(base_url="http://testserver", api_key="sk-wrong",
                                max_retries=0, http_client=TestClient(app))
    with pytest.raises(anthropic.AuthenticationError) as refused:
        wrong.messages.count_tokens(model=MODEL, messages=CAPITAL)
    assert refused.value.status_code == 401
    assert refused.value.body["error"]["type"] == "authentication_error"
    right = anthropic.Anthropic(base_url="http://testserver", api_key="sk-right",
                                max_retries=0, http_client=TestClient(app))
    with pytest.raises(anthropic.NotFoundError):  # past auth: the model name is checked
        right.messages.count_tokens(model="no-such-model", messages=CAPITAL)
