"""Token ids → the ``token`` / ``bytes`` strings OpenAI's logprobs objects carry."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from mlx_lm.tokenizer_utils import _byte_decoder

from app.generation.events import TokenLogprob

_BYTE_DECODER: dict[str, int] = _byte_decoder()


class TokenTexts:
    """Caches each token's raw bytes (byte-level BPE pieces are mapped back to bytes)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.raw_bytes = lru_cache(maxsize=65536)(self._raw_bytes)

    def _raw_bytes(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str) and piece and all(c in _BYTE_DECODER for c in piece):
            special = piece in getattr(self._tokenizer, "all_special_tokens", ())
            if not special:
                return bytes(_BYTE_DECODER[c] for c in piece)
        return self._tokenizer.decode([token_id]).encode("utf-8")

    def entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        raw = self.raw_bytes(token_id)
        return {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": logprob,
            "bytes": list(raw),
        }

    def chat_content(self, items: list[TokenLogprob]) -> list[dict[str, Any]]:
        """OpenAI chat shape: ``choices[].logprobs.content[]``."""
        out = []
        for item in items:
            entry = self.entry(item.token_id, item.logprob)
            entry["top_logprobs"] = [self.entry(t, lp) for t, lp in item.top]
            out.append(entry)
        return out
