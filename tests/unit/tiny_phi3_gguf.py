"""Write a tiny random Phi-3 GGUF (2 layers, hidden 64), as llama.cpp's converter lays it out.

Fused ``attn_qkv`` (q, then k, then v rows; grouped-query: 4 query heads, 2 KV heads) and a
fused ``ffn_up`` of double width (gate rows, then up rows), mixing Q5_0, Q8_0, Q4_K, Q6_K
and F32 tensors. Two flavours:

- ``plain``: Phi-3-mini-4k's shape of metadata: full rotary dims, a sliding window (which
  llama.cpp ignores for Phi), an untied ``output.weight``;
- ``longrope``: Phi-4-mini's: partial rotary (12 of 16 dims), ``rope_factors_long``/
  ``rope_factors_short`` and the attention factor for an 8x context extension, tied
  embeddings.

The tokenizer is :mod:`tests.unit.tiny_qwen_gguf`'s byte-level BPE (Phi-4's is GPT-2 style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from tests.unit.tiny_gemma_gguf import write_tensors
from tests.unit.tiny_gguf import add_shape
from tests.unit.tiny_qwen_gguf import add_bpe_vocab, train_tokenizer

Q = GGMLQuantizationType
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 256
HEAD_DIM = HIDDEN // HEADS
ROPE_BASE, EPS = 10_000.0, 1e-5
FLAVOURS = {  # rotary dims, context, original context
    "plain": (HEAD_DIM, 4096, 4096),
    "longrope": (12, 2048, 256),
}


@dataclass
class TinyPhi3:
    path: Path
    flavour: str
    rope_dims: int
    types: dict[str, str]  # GGUF tensor name -> GGML type name


def attn_factor(context: int, original: int) -> float:
    """What llama.cpp's converter writes for ``longrope`` (``rope.scaling.attn_factor``)."""
    scale = context / original
    return math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0


def _layer(rng: np.random.Generator, i: int) -> list[tuple[str, np.ndarray | None, Q, tuple]]:
    qkv_rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    mats = {
        "attn_qkv": ((qkv_rows, HIDDEN), Q.Q5_0),
        "attn_output": ((HIDDEN, HEADS * HEAD_DIM), Q.Q8_0),
        "ffn_up": ((2 * FFN, HIDDEN), (Q.Q5_0, Q.Q8_0)[i % 2]),
        "ffn_down": ((HIDDEN, FFN), (Q.Q4_K, Q.Q6_K)[i % 2]),
    }
    out: list[tuple[str, np.ndarray | None, Q, tuple]] = []
    for name, (shape, kind) in mats.items():
        value = None if kind in (Q.Q4_K, Q.Q6_K) else rng.normal(0, 0.2, shape)
        out.append((f"blk.{i}.{name}.weight", value, kind, shape))
    for name in ("attn_norm", "ffn_norm"):
        out.append((f"blk.{i}.{name}.weight", 1.0 + rng.normal(0, 0.1, HIDDEN), Q.F32, (HIDDEN,)))
    return out


def write_tiny_phi3(path: Path, *, flavour: str = "plain", seed: int = 0) -> TinyPhi3:
    rope_dims, context, original = FLAVOURS[flavour]
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "phi3")
    add_shape(w, context=context, hidden=HIDDEN, layers=LAYERS, ffn=FFN, heads=HEADS,
              kv_heads=KV_HEADS, rope=(rope_dims, ROPE_BASE, EPS))
    w.add_rope_scaling_orig_ctx_len(original)
    w.add_sliding_window(2047 if flavour == "plain" else 0)
    w.add_file_type(LlamaFileType.MOSTLY_Q5_0)
    n = add_bpe_vocab(w, train_tokenizer(), pre="default")
    tensors = [("token_embd.weight", rng.normal(0, 0.5, (n, HIDDEN)), Q.Q8_0, (n, HIDDEN))]
    if flavour == "longrope":
        w.add_rope_scaling_attn_factors(attn_factor(context, original))
        for name in ("rope_factors_long", "rope_factors_short"):
            factors = rng.uniform(1.0, 8.0, rope_dims // 2)
            tensors.append((f"{name}.weight", factors, Q.F32, factors.shape))
    for i in range(LAYERS):
        tensors += _layer(rng, i)
    tensors.append(("output_norm.weight", 1.0 + rng.normal(0, 0.1, HIDDEN), Q.F32, (HIDDEN,)))
    if flavour == "plain":
        tensors.append(("output.weight", rng.normal(0, 0.2, (n, HIDDEN)), Q.Q8_0, (n, HIDDEN)))
    return TinyPhi3(path=path, flavour=flavour, rope_dims=rope_dims,
                    types=write_tensors(w, rng, tensors))
