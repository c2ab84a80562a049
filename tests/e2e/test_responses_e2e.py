"""/v1/responses on the real server and default model: the openai SDK and the OpenAI
Agents SDK, as their users run them."""

from __future__ import annotations

import asyncio
import json

import pytest
from openai import AsyncOpenAI, OpenAI

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


def test_sdk_create_and_chain(client: OpenAI):
    first = client.responses.create(
        model="default", input="What is the capital of France?", temperature=0,
        max_output_tokens=24)
    assert first.output_text.strip() and first.usage.input_tokens > 0
    second = client.responses.create(model="default", input="And of Italy?",
                                     previous_response_id=first.id, temperature=0,
                                     max_output_tokens=24)
    assert second.output_text.strip()
    # the first turn's prompt is served from the prefix cache (template edges aside)
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 2


def test_sdk_stream_matches_the_final_response(client: OpenAI):
    with client.responses.stream(model="default", input="Say hello in five words.",
                                 temperature=0, max_output_tokens=256) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert len(deltas) > 1 and final.output_text == "".join(deltas)
    assert client.responses.retrieve(final.id).output_text == final.output_text


def _agent_run(server: Server, streamed: bool) -> tuple[list[str], object]:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # no trace uploads: this machine has no network
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"It is sunny and 21 C in {city}."

    model = OpenAIResponsesModel(
        model="default", openai_client=AsyncOpenAI(base_url=server.v1, api_key="unused"))
    # The 135M default model cannot pick tools by itself: the call is grammar-forced, and
    # the tool's answer is the agent's final answer.
    agent = Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                  model=model, tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="required", temperature=0))

    async def run():
        if not streamed:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)
        result = Runner.run_streamed(agent, "What is the weather in Paris?", max_turns=3)
        async for _ in result.stream_events():
            pass
        return result

    return cities, asyncio.run(run())


@pytest.mark.parametrize("streamed", [False, True])
def test_agents_sdk_runs_a_function_tool_to_its_answer(server: Server, streamed: bool):
    cities, result = _agent_run(server, streamed)
    assert len(cities) == 1 and cities[0].strip()
    assert result.final_output == f"It is sunny and 21 C in {cities[0]}."


def test_function_call_output_turn(client: OpenAI):
    tool = {"type": "function", "name": "lookup", "description": "Look a word up",
            "parameters": {"type": "object", "properties": {"word": {"type": "string"}},
                           "required": ["word"]}}
    first = client.responses.create(model="default", input="Look up the word 'tide'.",
                                    tools=[tool], tool_choice="required", temperature=0)
    call = first.output[-1]
    assert call.type == "function_call" and "word" in json.loads(call.arguments)
    answer = client.responses.create(
        model="default", tools=[tool], previous_response_id=first.id, temperature=0,
        max_output_tokens=32, tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "tide: the rise and fall of the sea"}])
    assert answer.output[0].type == "message" and answer.output_text.strip()
