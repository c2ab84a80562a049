"""Mistral GGUFs are llama GGUFs: llama.cpp's converter writes ``MistralForCausalLM`` as arch
``llama`` (q/k permuted, no sliding window key; Mistral 7B v0.2+ and Nemo have none, and
llama.cpp's llama graph has no window). What differs from the Llama shapes is metadata:
grouped-query attention with one KV head per four query heads, RoPE base 1e6, a 32k
context, an untied output and, for Mistral Nemo, a head size that is not hidden / heads
(``attention.key_length``). A tiny file with those shapes loads on both paths (``mx.load``
for Q8_0/Q4_0/F32, the dequantizing one with K-quants) and matches llama.cpp's graph.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from app.models.gguf.loader import load_gguf_model
from tests.unit.gguf_reference import qwen_logits, read_reference
from tests.unit.tiny_gemma_gguf import write_tensors
from tests.unit.tiny_gguf import add_shape, permute_qk, unpermute_qk
from tests.unit.tiny_qwen_gguf import add_bpe_vocab, train_tokenizer

Q = GGMLQuantizationType
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, CONTEXT = 64, 2, 4, 1, 32, 256, 32768
PROMPT = [1, 40, 120, 200, 7, 300, 2, 150, 151, 99]


def write_tiny_mistral(path: Path, *, kquants: bool) -> Path:
    rng = np.random.default_rng(1)
    w = GGUFWriter(str(path), "llama")
    add_shape(w, context=CONTEXT, hidden=HIDDEN, layers=LAYERS, ffn=FFN, heads=HEADS,
              kv_heads=KV_HEADS, rope=(HEAD_DIM, 1_000_000.0, 1e-5))
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(LlamaFileType.MOSTLY_Q4_K_M if kquants else LlamaFileType.MOSTLY_Q4_0)
    n = add_bpe_vocab(w, train_tokenizer(), pre="default")
    tensors = [("token_embd.weight", rng.normal(0, 0.5, (n, HIDDEN)), Q.Q8_0, (n, HIDDEN))]
    for i in range(LAYERS):
        q = permute_qk(rng.normal(0, 0.2, (HEADS * HEAD_DIM, HIDDEN)), HEADS)
        k = permute_qk(rng.normal(0, 0.2, (KV_HEADS * HEAD_DIM, HIDDEN)), KV_HEADS)
        tensors += [
            (f"blk.{i}.attn_q.weight", q, Q.Q4_0, q.shape),
            (f"blk.{i}.attn_k.weight", k, Q.Q8_0, k.shape),
            (f"blk.{i}.attn_v.weight", rng.normal(0, 0.2, (KV_HEADS * HEAD_DIM, HIDDEN)),
             Q.Q8_0, (KV_HEADS * HEAD_DIM, HIDDEN)),
            (f"blk.{i}.attn_output.weight", rng.normal(0, 0.2, (HIDDEN, HEADS * HEAD_DIM)),
             Q.Q4_0, (HIDDEN, HEADS * HEAD_DIM)),
            (f"blk.{i}.ffn_gate.weight", rng.normal(0, 0.2, (FFN, HIDDEN)), Q.Q4_0, (FFN, HIDDEN)),
            (f"blk.{i}.ffn_up.weight", rng.normal(0, 0.2, (FFN, HIDDEN)), Q.Q8_0, (FFN, HIDDEN)),
            (f"blk.{i}.ffn_down.weight", None if kquants else rng.normal(0, 0.2, (HIDDEN, FFN)),
             Q.Q4_K if kquants else Q.Q8_0, (HIDDEN, FFN)),
        ]
        for name in ("attn_norm", "ffn_norm"):
            tensors.append((f"blk.{i}.{name}.weight", 1.0 + rng.normal(0, 0.1, HIDDEN), Q.F32,
                            (HIDDEN,)))
    tensors.append(("output_norm.weight", 1.0 + rng.normal(0, 0.1, HIDDEN), Q.F32, (HIDDEN,)))
    tensors.append(("output.weight", rng.normal(0, 0.2, (n, HIDDEN)), Q.Q8_0, (n, HIDDEN)))
    write_tensors(w, rng, tensors)
    return path


@pytest.mark.parametrize("kquants", [False, True], ids=["mx-load", "dequantized"])
def test_mistral_shaped_llama_matches_llama_cpp_graph(tmp_path: Path, kquants: bool) -> None:
    path = write_tiny_mistral(tmp_path / "mistral.gguf", kquants=kquants)
    lm = load_gguf_model(path, weights="float32", cache_dir=tmp_path / "cache")
    cfg = lm.model_config
    assert cfg["model_type"] == "llama" and cfg["head_dim"] == HEAD_DIM
    assert cfg["num_key_value_heads"] == KV_HEADS and cfg["rope_theta"] == 1_000_000.0
    assert cfg["max_position_embeddings"] == CONTEXT and cfg["tie_word_embeddings"] is False
    assert lm.source_quantization == ("q4_k_m" if kquants else "q4_0")

    meta, tensors = read_reference(path)
    for i in range(LAYERS):
        for name, heads in (("attn_q", HEADS), ("attn_k", KV_HEADS)):
            key = f"blk.{i}.{name}.weight"
            tensors[key] = unpermute_qk(tensors[key], heads)
    want = qwen_logits(meta, tensors, PROMPT)
    got = np.array(lm.model(mx.array([PROMPT])).astype(mx.float32))[0]
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)
