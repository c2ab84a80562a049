"""An output schema → a grammar the engine enforces while decoding."""

from __future__ import annotations

from typing import Any

from app.core import errors
from app.engine.lm.grammar import GrammarError, json_schema_grammar
from app.lifecycle.manager import ManagedModel


def compile_schema(managed: ManagedModel, schema: dict[str, Any] | bool, param: str) -> str:
    """Compile and validate against the model's tokenizer (runs in an executor: ~ms, and
    ~1 s once per model to build llguidance's tokenizer)."""
    try:
        grammar = json_schema_grammar(schema)
        managed.engine.grammars.validate(grammar)
    except GrammarError as exc:
        raise errors.invalid_request(f"Invalid schema: {exc}", param=param) from exc
    return grammar
