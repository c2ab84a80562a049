"""Chat-template options vLLM and llama.cpp accept on chat requests (``null``: the default)."""

from __future__ import annotations

from typing import Any

from app.schemas.common import StrictRequest


class TemplateOptions(StrictRequest):
    """How the conversation is rendered: open a new assistant turn (``add_generation_prompt``,
    default true) or continue the final assistant message unclosed
    (``continue_final_message``: assistant prefill); ``chat_template_kwargs`` are handed to
    the chat template as extra variables (``enable_thinking``, ``documents``, ...)."""

    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
