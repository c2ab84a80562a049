"""An output schema → a grammar the engine enforces while decoding."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from app.core import errors
from app.engine.lm.grammar import CompiledGrammar, GrammarError
from app.lifecycle.manager import ManagedModel

_compiling = threading.BoundedSemaphore(2)  # compilations at once: the rest wait their turn


def compile_schema(managed: ManagedModel, schema: dict[str, Any] | bool,
                   param: str) -> CompiledGrammar:
    """Compile against the model's tokenizer, once per distinct schema (runs in an executor:
    ~ms usually, seconds for huge schemas, ~1 s once per model for llguidance's tokenizer)."""
    try:
        with _compiling:
            return managed.engine.grammars.compile_schema(schema)
    except GrammarError as exc:
        raise errors.invalid_request(f"Invalid schema: {exc}", param=param) from exc


async def compile_schema_within(managed: ManagedModel, schema: dict[str, Any] | bool,
                                param: str, timeout_s: float) -> CompiledGrammar:
    """:func:`compile_schema` off the event loop; 400 when it takes over ``timeout_s``
    (the compilation finishes in the background and lands in the cache)."""
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, compile_schema, managed, schema, param)
    try:
        return await asyncio.wait_for(asyncio.shield(work), timeout_s)
    except TimeoutError:
        raise errors.invalid_request(
            f"The schema is too complex: compiling it took longer than {timeout_s:g}s.",
            param=param,
        ) from None
