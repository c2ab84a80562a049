"""A fast tokenizer for GGUF's ``llama`` (SentencePiece-style) tokenizer model.

llama.cpp's SPM tokenizer splits the text into characters and repeatedly merges the
adjacent pair whose concatenation is the highest-scoring vocabulary entry, falling back to
``<0xXX>`` byte tokens for characters outside the vocabulary. That is a BPE whose merge
ranks are the merged tokens' scores, so the ``tokenizers`` BPE model is given every
``(left, right)`` split of every normal token, ordered by score (as transformers' GGUF
converter does), with ``byte_fallback``. Spaces become ``▁`` (plus a leading one when
``tokenizer.ggml.add_space_prefix``, llama.cpp's default). Control tokens are special added
tokens; user-defined ones (Gemma's runs of newlines and spaces, HTML tags) are matched in
the raw text first, as llama.cpp does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

# GGUF token types (llama.cpp ``llama_token_type``).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = range(
    1, 7
)
SPACE = "\u2581"


def spm_merges(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SPM's score-driven merging, best first."""
    normal = {t: i for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == TOKEN_NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for text, idx in normal.items():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            left_id, right_id = normal.get(left), normal.get(right)
            if left_id is not None and right_id is not None:
                ranked.append((-float(scores[idx]), left_id, right_id, left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def add_space_prefix(metadata: Mapping[str, Any]) -> bool:
    return bool(metadata.get("tokenizer.ggml.add_space_prefix", True))


def _special(tokens: Sequence[str], metadata: Mapping[str, Any], key: str) -> int | None:
    idx = metadata.get(f"tokenizer.ggml.{key}_token_id")
    return int(idx) if idx is not None and 0 <= int(idx) < len(tokens) else None


def _post_processor(
    tokens: Sequence[str], metadata: Mapping[str, Any]
) -> processors.PostProcessor | None:
    prefix, suffix, specials = [], [], []
    for key, side in (("bos", prefix), ("eos", suffix)):
        idx = _special(tokens, metadata, key)
        if metadata.get(f"tokenizer.ggml.add_{key}_token") and idx is not None:
            side.append(tokens[idx])
            specials.append((tokens[idx], idx))
    if not specials:
        return None
    return processors.TemplateProcessing(
        single=" ".join([*prefix, "$A", *suffix]),
        pair=" ".join([*prefix, "$A", *suffix, *prefix, "$B:1", *suffix]),
        special_tokens=list(dict.fromkeys(specials)),
    )


def build_spm_tokenizer(metadata: Mapping[str, Any], *, source: str = "GGUF file") -> Tokenizer:
    """The ``tokenizers`` equivalent of a GGUF ``llama`` tokenizer."""
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    scores: list[float] = list(metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens))
    types: list[int] = list(
        metadata.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    )
    if not (len(tokens) == len(scores) == len(types)):
        raise ValueError(f"{source}: tokenizer tokens, scores and types differ in length")
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        vocab.setdefault(text, i)  # first wins, as in llama.cpp's text -> id map
    unk_id = _special(tokens, metadata, "unknown")
    has_bytes = TOKEN_BYTE in types
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=spm_merges(tokens, scores, types),
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=has_bytes,
        )
    )
    prefix = add_space_prefix(metadata)
    steps: list[normalizers.Normalizer] = [normalizers.Prepend(SPACE)] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", SPACE)])
    decode: list[decoders.Decoder] = [decoders.Replace(SPACE, " "), decoders.ByteFallback()]
    decode.append(decoders.Fuse())
    if prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    post = _post_processor(tokens, metadata)
    if post is not None:
        tok.post_processor = post
    add_added_tokens(tok, tokens, types)
    return tok


def add_added_tokens(tok: Tokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Control/unknown tokens as special added tokens, user-defined ones as plain added tokens.

    ``Tokenizer.add_special_tokens`` marks everything it is given special (and so dropped by
    ``decode(skip_special_tokens=True)``), hence the two calls.
    """
    pairs = list(zip(tokens, types, strict=True))
    tok.add_special_tokens(
        [
            AddedToken(text, special=True, normalized=False)
            for text, kind in pairs
            if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN)
        ]
    )
    tok.add_tokens(
        [
            AddedToken(text, special=False, normalized=False)
            for text, kind in pairs
            if kind == TOKEN_USER_DEFINED
        ]
    )
