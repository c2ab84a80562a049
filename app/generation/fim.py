"""Fill-in-the-middle prompts for code models (the text between a prefix and a suffix).

Code models are trained on ``<prefix token>PREFIX<suffix token>SUFFIX<middle token>`` and
write the middle. The marker tokens differ per family and are found in the vocabulary; a
model without them cannot infill (400). The prompt is assembled from token ids, so marker
text inside the user's code is never read as a marker. Context from other files (llama.cpp's
``input_extra``) goes first, each file after a file-separator token where the model has one
(Qwen2.5-Coder's repository format), else as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core import errors

# (prefix, suffix, middle, file separator or None), by family
FIM_FAMILIES: tuple[tuple[str, str, str, str | None], ...] = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>"),  # StarCoder 1/2
    ("<\uff5cfim\u2581begin\uff5c>", "<\uff5cfim\u2581hole\uff5c>",
     "<\uff5cfim\u2581end\uff5c>", None),  # DeepSeek-Coder
    ("\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>", None),  # Code Llama
)


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int
    file_sep: int | None = None


@dataclass(frozen=True)
class FillInMiddle:
    """What surrounds the middle: the prompt(s) of the spec are the prefix(es)."""

    suffix: str
    extra: tuple[tuple[str, str], ...] = ()  # (filename, text) of other files, for context
    middle: str = ""  # text the middle starts with (llama.cpp's ``prompt``)


def _token_id(tokenizer: Any, piece: str) -> int | None:
    """The id of ``piece`` when it is one token of the vocabulary."""
    try:
        token = tokenizer.convert_tokens_to_ids(piece)
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(token, int) or token < 0:
        return None
    return token if tokenizer.convert_ids_to_tokens(token) == piece else None


def fim_tokens(tokenizer: Any) -> FimTokens | None:
    """The model's FIM markers, or None when its vocabulary has no complete set."""
    for prefix, suffix, middle, file_sep in FIM_FAMILIES:
        ids = [_token_id(tokenizer, piece) for piece in (prefix, suffix, middle)]
        if all(token is not None for token in ids):
            sep = _token_id(tokenizer, file_sep) if file_sep else None
            return FimTokens(*ids, file_sep=sep)  # type: ignore[arg-type]
    return None


def infill_tokens(
    tokenizer: Any, model: str, prefix: str, fim: FillInMiddle, param: str
) -> list[int]:
    """``[context]<pre>prefix<suf>suffix<mid>middle`` as token ids; 400 without FIM tokens."""
    markers = fim_tokens(tokenizer)
    if markers is None:
        raise errors.invalid_request(
            f"The model {model!r} has no fill-in-the-middle tokens, so it cannot complete "
            f"between a prefix and a {param}; use a code model that has them "
            "(e.g. Qwen2.5-Coder).",
            param=param,
        )

    def encode(text: str) -> list[int]:
        """User text as plain text: marker-like text in the code is not a marker."""
        if not text:
            return []
        try:
            return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        except TypeError:  # a tokenizer without the option
            return tokenizer.encode(text, add_special_tokens=False)

    ids: list[int] = []
    for filename, text in fim.extra:
        if markers.file_sep is not None:
            ids += [markers.file_sep] + encode(f"{filename}\n{text}")
        else:
            ids += encode(text)
    ids += [markers.prefix] + encode(prefix) + [markers.suffix] + encode(fim.suffix)
    return ids + [markers.middle] + encode(fim.middle)
