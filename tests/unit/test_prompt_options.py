"""Chat-template options reach the template (app.generation.prompt)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from app.generation.prompt import conversation_tokens
from app.generation.request import GenerationSpec, Message, PromptOptions


class RecordingTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def apply_chat_template(self, messages: list, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return "rendered"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1, 2, 3]


def test_chat_template_kwargs_and_flags_are_handed_to_the_template():
    tokenizer = RecordingTokenizer()
    managed = SimpleNamespace(loaded=SimpleNamespace(tokenizer=tokenizer, chat_template=None))
    options = PromptOptions(add_generation_prompt=False, continue_final_message=True,
                            template_kwargs={"enable_thinking": False, "documents": ["d"]})
    spec = GenerationSpec(model="m", capability="chat", prompt_options=options,
                          messages=[Message("user", "hi"), Message("assistant", "so")])
    assert conversation_tokens(managed, spec, None) == [1, 2, 3]
    (call,) = tokenizer.calls
    assert call["enable_thinking"] is False and call["documents"] == ["d"]
    assert call["add_generation_prompt"] is False and call["continue_final_message"] is True
    default = GenerationSpec(model="m", capability="chat", messages=[Message("user", "hi")])
    conversation_tokens(managed, default, None)
    assert tokenizer.calls[-1]["add_generation_prompt"] is True
    assert "continue_final_message" not in tokenizer.calls[-1]
