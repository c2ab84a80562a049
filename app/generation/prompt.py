"""Prompts as token ids: a conversation through the model's chat template, or raw prompts."""

from __future__ import annotations

from typing import Any

from app.core import errors
from app.generation.fim import infill_tokens
from app.generation.limits import check_token_ids
from app.generation.request import GenerationSpec, PromptOptions
from app.generation.tools import (
    ToolPlan,
    fallback_system_prompt,
    template_message,
    template_supports_tools,
)
from app.lifecycle.manager import ManagedModel


def apply_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    param: str = "messages",
    **kwargs: Any,
) -> list[int]:
    """Render ``messages`` with the tokenizer's chat template; a refusal is a 400."""
    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - a template refusing the messages is a 400
        raise errors.invalid_request(
            f"The chat template could not render these messages: {exc}", param=param
        ) from exc
    return tokenizer.encode(text, add_special_tokens=False)


# Template variables the renderer sets itself; chat_template_kwargs may not override them.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "messages", "tools", "add_generation_prompt", "continue_final_message", "tokenize",
    "chat_template", "return_dict", "conversation",
})


def check_prompt_options(spec: GenerationSpec) -> None:
    """400 for template options that contradict each other or the conversation."""
    options, param = spec.prompt_options, spec.names.prompt
    if spec.messages is None:
        return
    if options.continue_final_message:
        if options.add_generation_prompt:
            raise errors.invalid_request(
                "continue_final_message and add_generation_prompt cannot both be true.",
                param="continue_final_message",
            )
        if spec.messages[-1].role != "assistant":
            raise errors.invalid_request(
                f"continue_final_message needs an assistant message last in {param}.",
                param="continue_final_message",
            )
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(options.template_kwargs))
    if reserved:
        raise errors.invalid_request(
            f"chat_template_kwargs may not set {', '.join(reserved)} (set by the request).",
            param="chat_template_kwargs",
        )


def conversation_tokens(
    managed: ManagedModel, spec: GenerationSpec, plan: ToolPlan | None
) -> list[int]:
    """The conversation with the tools shown the way this model's template can show them."""
    assert spec.messages is not None
    tokenizer = managed.loaded.tokenizer
    template = managed.loaded.chat_template or getattr(tokenizer, "chat_template", None)
    supports_tools = template_supports_tools(template)
    messages = [template_message(m, inline_calls=not supports_tools) for m in spec.messages]
    options: PromptOptions = spec.prompt_options
    kwargs = template_kwargs(spec)
    if options.continue_final_message:
        kwargs["continue_final_message"] = True
    if plan is not None:
        if supports_tools:
            kwargs["tools"] = [tool.template_entry() for tool in plan.tools]
        else:
            note = fallback_system_prompt(plan.tools)
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
            else:
                messages.insert(0, {"role": "system", "content": note})
    return apply_template(
        tokenizer, messages, add_generation_prompt=options.add_generation_prompt,
        param=spec.names.prompt, **kwargs,
    )


def template_kwargs(spec: GenerationSpec) -> dict[str, Any]:
    """Template variables from the request: ``reasoning_effort`` ("none" turns thinking
    off: ``enable_thinking=False``), then the client's ``chat_template_kwargs``."""
    kwargs: dict[str, Any] = {}
    if spec.reasoning_effort == "none":
        kwargs["enable_thinking"] = False
    elif spec.reasoning_effort is not None:
        kwargs["reasoning_effort"] = spec.reasoning_effort
    kwargs.update(spec.prompt_options.template_kwargs)
    return kwargs


def raw_prompt_tokens(managed: ManagedModel, spec: GenerationSpec) -> list[list[int]]:
    """Raw prompts (text or token ids) as token ids, each checked against the vocabulary."""
    assert spec.prompts is not None
    param = spec.names.prompt
    tokenizer = managed.loaded.tokenizer
    vocab = managed.loaded.tokenizer_vocab_size
    if not spec.prompts:
        raise errors.invalid_request(f"{param} must not be empty.", param=param)
    if spec.fim is not None:
        return fim_prompt_tokens(managed, spec)
    if all(isinstance(p, str) for p in spec.prompts):
        if any(not p for p in spec.prompts):
            raise errors.invalid_request(f"{param} must not be empty.", param=param)
        ids = [tokenizer.encode(p, add_special_tokens=True) for p in spec.prompts]
    else:
        ids = [list(p) for p in spec.prompts]  # type: ignore[arg-type]
    for prompt in ids:
        if not prompt:
            raise errors.invalid_request(f"{param} must not be empty.", param=param)
        check_token_ids(prompt, vocab, param, f"{param} token ids")
    return ids


def fim_prompt_tokens(managed: ManagedModel, spec: GenerationSpec) -> list[list[int]]:
    """Each prompt is a prefix (may be empty: the cursor at the top of a file)."""
    assert spec.prompts is not None and spec.fim is not None
    if not all(isinstance(p, str) for p in spec.prompts):
        raise errors.invalid_request(
            f"{spec.names.prompt} must be text when a {spec.names.suffix} is given.",
            param=spec.names.prompt,
        )
    tokenizer = managed.loaded.tokenizer
    return [
        infill_tokens(tokenizer, managed.spec.id, prefix, spec.fim, spec.names.suffix)
        for prefix in spec.prompts  # type: ignore[misc]
    ]


def prompt_tokens(
    managed: ManagedModel, spec: GenerationSpec, plan: ToolPlan | None
) -> list[list[int]]:
    """One token list per submission (runs in an executor: templates and BPE take ms)."""
    if spec.messages is not None:
        return [conversation_tokens(managed, spec, plan)]
    return raw_prompt_tokens(managed, spec)
