"""Which mlx-lm tool parser reads a model's tool calls, and a registry override for it.

mlx-lm infers the parser from the chat template (``<tool_call>`` with ``tool_call.name``:
Hermes / Qwen JSON, ``[TOOL_CALLS]``: Mistral, ``<tool_call>\\n<function=``: Qwen3-Coder...)
when it builds a tokenizer. A registry entry's ``tool_parser:`` replaces that choice, for
models whose template mlx-lm does not recognise.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def available_tool_parsers() -> list[str]:
    """The parser modules this mlx-lm ships (``json_tools``, ``mistral``, ``pythonic``...)."""
    import mlx_lm.tool_parsers as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__))


def set_tool_parser(tokenizer: Any, name: str) -> None:
    """Make ``tokenizer`` (an mlx-lm ``TokenizerWrapper``) parse calls with parser ``name``."""
    if name not in available_tool_parsers():
        raise ValueError(
            f"tool parser {name!r} is not known "
            f"(available: {', '.join(available_tool_parsers())})"
        )
    module = importlib.import_module(f"mlx_lm.tool_parsers.{name}")
    hf = tokenizer._tokenizer
    tokenizer._tool_parser = module.parse_tool_call
    tokenizer._tool_call_start = module.tool_call_start
    tokenizer._tool_call_end = module.tool_call_end
    tokenizer._tool_call_start_tokens = tuple(
        hf.encode(module.tool_call_start, add_special_tokens=False)
    )
    tokenizer._tool_call_end_tokens = tuple(
        hf.encode(module.tool_call_end, add_special_tokens=False)
    )


def tool_parser_name(tokenizer: Any) -> str | None:
    """The short name of the parser ``tokenizer`` uses (None: no tool parsing)."""
    parser = getattr(tokenizer, "tool_parser", None)
    module = getattr(parser, "__module__", "") or ""
    return module.rsplit(".", 1)[-1] if parser is not None else None
