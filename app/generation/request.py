"""The dialect-neutral generation request every front end builds from its own schema.

A dialect (OpenAI chat, legacy completions, later Responses and Anthropic Messages) maps
its request body onto :class:`GenerationSpec`: a conversation or raw prompts, sampling,
limits, tools, a tool choice and an output schema. :mod:`app.generation.core` turns the
spec into engine submissions; nothing below this layer knows which dialect asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.generation.fim import FillInMiddle

ToolMode = Literal["auto", "required", "none"]


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call; ``parameters`` is its arguments' JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None

    def template_entry(self) -> dict[str, Any]:
        """The OpenAI-style tool object chat templates expect (``tools=[...]``)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call in a conversation's history or in a model's answer.

    ``arguments`` is JSON text as the model wrote it (or the client sent it)."""

    id: str
    name: str
    arguments: str


@dataclass
class Message:
    """One conversation turn; roles are ``system``, ``user``, ``assistant`` and ``tool``."""

    role: str
    content: str = ""
    name: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Decoding controls as the request gave them; ``None`` means the default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    speculative: bool = True


@dataclass(frozen=True)
class PromptOptions:
    """How a conversation is rendered by the chat template."""

    add_generation_prompt: bool = True  # open the assistant's turn
    continue_final_message: bool = False  # the last (assistant) message goes on, unclosed
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra template variables


@dataclass(frozen=True)
class FieldNames:
    """The dialect's names for the fields errors point at (``param`` in the envelope)."""

    prompt: str = "messages"
    max_tokens: str = "max_tokens"
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    output_format: str = "response_format"
    stop: str = "stop"
    suffix: str = "suffix"


@dataclass
class GenerationSpec:
    """What to generate, independent of the API dialect that asked for it.

    Exactly one of ``messages`` (rendered with the model's chat template) and ``prompts``
    (raw text or token ids, one submission each) is set."""

    model: str
    capability: str  # the registry capability the dialect needs: "chat", "completions"
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    max_tokens: int | None = None  # None: as many as the model's cap and context allow
    messages: list[Message] | None = None
    prompts: list[str] | list[list[int]] | None = None
    tools: list[FunctionTool] = field(default_factory=list)
    tool_choice: ToolMode | None = None  # None: not given (auto when there are tools)
    tool_name: str | None = None  # a named tool choice: this function must be called
    output_schema: dict[str, Any] | bool | None = None  # JSON schema the answer must follow
    logprobs: int | None = None  # None: off; k >= 0: the chosen token and the top k
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    fim: FillInMiddle | None = None  # fill in the middle: the prompts are the prefixes
    prompt_logprobs: int | None = None  # None: off; k >= 0: each prompt token and the top k
    reasoning_effort: str | None = None  # "none": no thinking where the template allows
    names: FieldNames = field(default_factory=FieldNames)
    cache_salt: str | None = None  # the client's prefix-cache namespace (vLLM's cache_salt)
