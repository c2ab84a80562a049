"""Streaming detokenizers that keep a leading space.

mlx-lm's BPE and SentencePiece streaming detokenizers drop the space at the start of the
first generated token. OpenAI and vLLM return it (a legacy completion of "The capital of
France is" continues with " Paris"), and the text must equal the concatenated logprob
tokens, so the trimming is switched off per instance.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer


def _keep(text: str) -> str:
    return text


def make_detokenizer(tokenizer: Any) -> Any:
    """A fresh streaming detokenizer for one sequence."""
    detokenizer = tokenizer.detokenizer  # mlx-lm hands out a reset copy each time
    if isinstance(detokenizer, BPEStreamingDetokenizer):
        detokenizer._maybe_trim_space = _keep
    elif isinstance(detokenizer, SPMStreamingDetokenizer):
        detokenizer.trim_space = False
    return detokenizer
