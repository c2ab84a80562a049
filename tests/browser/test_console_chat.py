"""The chat playground in a real browser against the real server and default model."""

from __future__ import annotations

import json
import re
import time

import httpx
import jsonschema

from tests.browser.conftest import metric, screenshot, text_of, wait_until

# Records every length the newest answer's text goes through while it streams.
RECORD_STEPS = """() => {
  window.answerLengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.msg.assistant .answer');
    const last = answers[answers.length - 1];
    if (last) window.answerLengths.push(last.textContent.length);
  }).observe(document.getElementById('chat-log'),
             {subtree: true, childList: true, characterData: true});
}"""


def open_console(page, server, panel: str = ""):
    response = page.goto(server.base_url + "/" + (f"#{panel}" if panel else ""))
    wait_until(page, "document.querySelector('#chat-model').options.length > 0")
    return response


def send(page, text: str, *, max_tokens: int, temperature: float = 0.0) -> None:
    page.fill("#chat-temperature", str(temperature))
    page.fill("#chat-max-tokens", str(max_tokens))
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")  # Enter sends


def finished_turn(page, index: int, timeout_s: float = 120):
    """The index-th assistant turn once its numbers are shown."""
    turn = page.locator(".msg.assistant").nth(index)
    turn.locator("dd[data-stat='finish']").wait_for(timeout=timeout_s * 1000)
    return turn


def stats(turn) -> dict[str, str]:
    keys = turn.locator(".stats dt").all_inner_texts()
    values = turn.locator(".stats dd").all_inner_texts()
    return dict(zip(keys, values, strict=True))


def test_page_is_served_with_the_house_headers_and_picks_the_default_model(page, server):
    response = open_console(page, server)
    assert response.status == 200
    assert response.headers["x-request-id"].startswith("req-")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert page.title() == "mlx-openai-server-lab console"
    # chat-capable models only, the registry's "default" alias selected
    models = httpx.get(server.base_url + "/v1/models", timeout=30).json()["data"]
    chat = [m["id"] for m in models if "chat" in m["metadata"]["capabilities"]]
    options = page.locator("#chat-model option").all_inner_texts()
    assert options == chat and "smollm2-135m-instruct" in chat
    assert page.input_value("#chat-model") == "smollm2-135m-instruct"
    wait_until(page, text_of("#server-status") + ".includes('models')")
    loaded = sum(m["metadata"]["state"] == "loaded" for m in models)
    assert f"{len(models)} models, {loaded} loaded" in page.inner_text("#server-status")


def test_chat_streams_token_by_token_and_shows_each_turns_numbers(page, server):
    open_console(page, server)
    page.evaluate(RECORD_STEPS)
    send(page, "Count from one to twenty, separated by commas.", max_tokens=40)
    first = finished_turn(page, 0)
    steps = {n for n in page.evaluate("window.answerLengths") if n > 0}
    assert len(steps) >= 3, f"the answer arrived in {len(steps)} step(s): {sorted(steps)}"
    answer = first.locator(".answer").inner_text()
    assert answer.strip()
    numbers = stats(first)
    assert re.fullmatch(r"req-[0-9a-f]+", numbers["request id"]), numbers
    assert re.fullmatch(r"\d+ ms", numbers["TTFT"]), numbers
    assert float(numbers["tokens/s"]) > 0
    assert 1 <= int(numbers["tokens"]) <= 40
    assert int(numbers["cached tokens"]) >= 0
    assert numbers["finish"] in {"stop", "length"}
    # the id shown is the one the server logged for this request
    assert f'"request_id": "{numbers["request id"]}"' in server.log_text()

    send(page, "Now count backwards from five.", max_tokens=24)
    second = finished_turn(page, 1)
    # the second turn's prompt starts with the first turn: the prefix cache serves it
    assert int(stats(second)["cached tokens"]) > 0, stats(second)
    assert page.locator(".msg.user").count() == 2
    screenshot(page, "chat")


def test_stop_cancels_the_request_on_the_server(page, server):
    open_console(page, server)
    aborted_before = _aborted(server)
    send(page, "Write a very long story about a dragon who learns to sail.",
         max_tokens=2000, temperature=0.8)
    wait_until(page, "(document.querySelector('.msg.assistant .answer')?.textContent.length"
                     " ?? 0) > 20", timeout_s=120)
    assert metric(server, "vllm:num_requests_running") >= 1
    assert page.is_enabled("#chat-stop") and not page.is_enabled("#chat-send")
    page.click("#chat-stop")
    turn = finished_turn(page, 0, timeout_s=10)
    assert stats(turn)["finish"] == "stopped"
    deadline = time.monotonic() + 15
    while metric(server, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "the server still runs the stopped request"
        time.sleep(0.2)
    # the server ended the sequence as aborted (client gone), not as a finished answer
    deadline = time.monotonic() + 5
    while _aborted(server) <= aborted_before:
        assert time.monotonic() < deadline, "no aborted sequence counted"
        time.sleep(0.2)
    assert page.is_enabled("#chat-send")


def _aborted(server) -> float:
    return metric(server, "vllm:request_success_total", finished_reason="abort")


def test_json_schema_output_follows_the_example_schema(page, server):
    open_console(page, server)
    assert not page.is_visible("#chat-schema")
    page.check("#chat-json")
    schema = json.loads(page.input_value("#chat-schema"))  # the example is valid JSON
    jsonschema.Draft202012Validator.check_schema(schema)
    send(page, "Tell me about Paris.", max_tokens=80)
    turn = finished_turn(page, 0)
    assert stats(turn)["finish"] == "stop"
    answer = json.loads(turn.locator(".answer.json").inner_text())
    jsonschema.validate(answer, schema)


def test_a_tool_call_is_shown_apart_from_the_answer_and_can_be_answered(page, server):
    open_console(page, server)
    page.check("#chat-tool")
    page.select_option("#chat-tool-choice", "required")
    send(page, "What is the weather in Paris?", max_tokens=60)
    turn = finished_turn(page, 0)
    assert stats(turn)["finish"] == "tool_calls"
    call = turn.locator(".tool-calls .tool-call")
    assert call.count() == 1
    text = call.inner_text()
    assert "get_weather(" in text
    arguments = json.loads(text[text.index("(") + 1:text.rindex(")")])
    assert isinstance(arguments["city"], str) and arguments["city"]
    assert turn.locator(".answer").inner_text() == ""  # the call is not in the answer
    screenshot(page, "chat-tool-call")
    # answer as the tool; the conversation (call, result) goes back to the model
    page.select_option("#chat-tool-choice", "auto")
    page.fill("#chat-max-tokens", "16")
    turn.locator(".tool-result input").fill('{"temperature_c": 21, "sky": "clear"}')
    turn.locator(".tool-result button").click()
    follow_up = finished_turn(page, 1)
    assert follow_up.locator(".error-text").count() == 0
    assert stats(follow_up)["finish"] in {"stop", "length", "tool_calls"}


def test_schema_mistakes_are_shown_where_they_are(page, server):
    open_console(page, server)
    page.check("#chat-json")
    page.fill("#chat-schema", '{"type": "object",')  # not JSON: caught before sending
    send(page, "Hello", max_tokens=8)
    assert "not JSON" in page.inner_text("#chat-schema-error")
    assert page.locator(".msg.assistant").count() == 0
    page.fill("#chat-schema", '{"type": "object", "properties": {"a": {"type": 5}}}')
    assert page.inner_text("#chat-schema-error") == ""  # editing clears the note
    send(page, "Hello", max_tokens=8)
    turn = finished_turn(page, 0)
    # the server's 400 envelope, and its request id, on the turn itself
    assert stats(turn)["finish"] == "error"
    assert "Invalid schema" in turn.locator(".error-text").inner_text()
    assert re.fullmatch(r"req-[0-9a-f]+", stats(turn)["request id"])
