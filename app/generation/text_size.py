"""Request text measured and bounded before any tokenizer sees it; tokenizing in bounded
workers.

Tokenizing costs time and memory in proportion to the text: a 4 MB chat took ~7 s of CPU and
1.7 GB of RSS before the context-length check refused it, and a list of 900k prompts was
tokenized for 17 s before the choice count was checked. So the characters of a request are
counted first and refused beyond ``context_length × max_chars_per_token`` (no tokenizer
packs that many characters into one token), list lengths are checked before tokenizing, the
tokenizing runs on a small dedicated pool (``tokenize_workers`` threads, so concurrent large
requests queue instead of each taking a thread and its memory), and after a large text the
freed heap is handed back to the OS.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from app.core import errors
from app.engine.memory import trim_heap
from app.generation.request import GenerationSpec

T = TypeVar("T")
LARGE_TEXT_CHARS = 256 * 1024  # after tokenizing this much, give freed memory back

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def text_limit(context_length: int, chars_per_token: float) -> int:
    """Most characters a prompt for a model with this context length may have."""
    return int(context_length * chars_per_token)


def check_chars(chars: int, limit: int, context_length: int, param: str) -> None:
    """400 before tokenizing when ``chars`` exceeds what the context could hold."""
    if chars > limit:
        raise errors.APIError(
            400,
            f"{param} has {chars} characters; this model's context of {context_length} tokens "
            f"holds at most {limit} characters. Shorten the input.",
            param=param,
            code="context_length_exceeded",
        )


def spec_chars(spec: GenerationSpec) -> list[int]:
    """Characters per prompt the spec will render (a conversation is one prompt)."""
    if spec.messages is not None:
        total = sum(len(m.content) + sum(len(c.name) + len(c.arguments) for c in m.tool_calls)
                    for m in spec.messages)
        for tool in spec.tools:
            total += len(tool.description or "") + len(json.dumps(tool.parameters))
        return [total]
    return [len(p) for p in spec.prompts or []]


def check_spec_size(spec: GenerationSpec, context_length: int, chars_per_token: float,
                    max_sequences: int) -> None:
    """Sequence count and text size of a generation request, before tokenizing."""
    prompts = 1 if spec.messages is not None else len(spec.prompts or [])
    if prompts * spec.n > max_sequences:
        raise errors.invalid_request(
            f"{prompts} prompt(s) × n={spec.n} is {prompts * spec.n} sequences; at most "
            f"{max_sequences} are allowed per request.",
            param=spec.names.prompt if prompts > 1 else "n",
        )
    token_ids = bool(spec.prompts) and not isinstance(spec.prompts[0], str)  # type: ignore[index]
    limit = context_length if token_ids else text_limit(context_length, chars_per_token)
    for chars in spec_chars(spec):
        check_chars(chars, limit, context_length, spec.names.prompt)


def check_texts(texts: Iterable[str], context_length: int, chars_per_token: float,
                param: str) -> None:
    """Each text of a list (embedding inputs, a tokenize prompt) within the bound."""
    limit = text_limit(context_length, chars_per_token)
    for text in texts:
        check_chars(len(text), limit, context_length, param)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
        return _pool


async def tokenize_bounded(workers: int, chars: int, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the tokenizing pool; trim the heap after a large text."""

    def job() -> T:
        try:
            return fn(*args)
        finally:
            if chars >= LARGE_TEXT_CHARS:
                trim_heap()

    return await asyncio.get_running_loop().run_in_executor(_executor(workers), job)
