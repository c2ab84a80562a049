"""``response_format`` → a grammar the engine enforces while decoding."""

from __future__ import annotations

from typing import Any

from app.core import errors
from app.engine.lm.grammar import GrammarError, json_schema_grammar
from app.lifecycle.manager import ManagedModel
from app.schemas.openai import ResponseFormat


def schema_for(response_format: ResponseFormat) -> dict[str, Any] | None:
    """The JSON schema the output must follow, or None for plain text."""
    if response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    spec = response_format.json_schema
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise errors.invalid_request(
            "response_format.json_schema needs a 'name' and a 'schema'.",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict | bool):
        raise errors.invalid_request(
            "response_format.json_schema.schema must be a JSON schema object.",
            param="response_format.json_schema.schema",
        )
    return schema  # type: ignore[return-value]


def compile_schema(managed: ManagedModel, schema: dict[str, Any], param: str) -> str:
    """Compile and validate against the model's tokenizer (runs in an executor: ~ms, and
    ~1 s once per model to build llguidance's tokenizer)."""
    try:
        grammar = json_schema_grammar(schema)
        managed.engine.grammars.validate(grammar)
    except GrammarError as exc:
        raise errors.invalid_request(f"Invalid schema: {exc}", param=param) from exc
    return grammar
