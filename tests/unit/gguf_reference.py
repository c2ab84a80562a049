"""Independent references for GGUF tests, written from llama.cpp's definitions.

- :func:`read_reference` reads a GGUF with gguf-py's own ``GGUFReader`` (not our reader);
- :func:`gemma3_logits` is llama.cpp's Gemma 3 graph (``build_gemma3``) in numpy, on the
  weights exactly as stored (norms multiply by the stored ``1 + w``, NEOX RoPE);
- :func:`qwen_logits` is llama.cpp's Qwen2 / Qwen3 graph (``build_qwen2``/``build_qwen3``)
  in numpy: q/k/v biases or per-head q/k norms, NEOX RoPE, SiLU-gated MLP;
- :func:`phi3_logits` is llama.cpp's Phi-3 graph (``llm_build_phi3``) in numpy: fused qkv
  cut by offsets, partial NEOX RoPE with frequency factors, SwiGLU split of the fused up;
- :func:`spm_tokenize` is llama.cpp's SPM tokenizer loop (best-scoring bigram, leftmost
  first; byte tokens for what is left outside the vocabulary).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def read_reference(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, {tensor name: float32 array}) via gguf-py's GGUFReader."""
    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {
        t.name: np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(
            tuple(int(d) for d in reversed(t.shape))
        )
        for t in reader.tensors
    }
    return meta, tensors


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope_neox(
    x: np.ndarray, base: float, n_rot: int | None = None, factors: np.ndarray | None = None,
    mscale: float = 1.0,
) -> np.ndarray:  # fmt: skip
    """x: (heads, seq, dim); rotate-half RoPE (llama.cpp's NEOX mode, ``ggml_rope_ext``) on
    the first ``n_rot`` dims: angle ``pos * base^(-2i/n_rot) / factors[i]``, cos and sin
    times ``mscale`` (the attention factor); the other dims pass through."""
    seq, dim = x.shape[1], n_rot or x.shape[2]
    inv = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    if factors is not None:
        inv = inv / factors
    ang = np.arange(seq)[:, None] * inv[None, :]
    cos, sin = np.cos(ang) * mscale, np.sin(ang) * mscale
    a, b, rest = x[..., : dim // 2], x[..., dim // 2 : dim], x[..., dim:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin, rest], axis=-1)


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal softmax attention of (heads, seq, d) queries on (kv heads, seq, d) keys and
    values (grouped: each KV head serves consecutive query heads); (seq, heads * d) out."""
    heads, seq, _ = q.shape
    k, v = np.repeat(k, heads // k.shape[0], axis=0), np.repeat(v, heads // v.shape[0], axis=0)
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    scores = np.where(causal, q @ k.transpose(0, 2, 1), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(1, 0, 2).reshape(seq, -1)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gemma3_logits(
    meta: dict[str, Any], t: dict[str, np.ndarray], ids: list[int], *,
    local_base: float = 10_000.0, pattern: int = 6,
) -> np.ndarray:  # fmt: skip
    """(seq, vocab) logits of llama.cpp's Gemma 3 graph, float64."""
    g = {k.removeprefix("gemma3."): v for k, v in meta.items() if k.startswith("gemma3.")}
    hidden, heads = g["embedding_length"], g["attention.head_count"]
    kv = g["attention.head_count_kv"]
    head_dim, eps = g["attention.key_length"], g["attention.layer_norm_rms_epsilon"]
    window, seq = g["attention.sliding_window"], len(ids)
    w = {k: v.astype(np.float64) for k, v in t.items()}
    x = w["token_embd.weight"][ids] * math.sqrt(hidden)
    pos = np.arange(seq)
    for i in range(g["block_count"]):
        p = f"blk.{i}."
        swa = (i + 1) % pattern != 0
        base = local_base if swa else g["rope.freq_base"]
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(seq, heads, head_dim).transpose(1, 0, 2)
        k = (h @ w[p + "attn_k.weight"].T).reshape(seq, kv, head_dim).transpose(1, 0, 2)
        v = (h @ w[p + "attn_v.weight"].T).reshape(seq, kv, head_dim).transpose(1, 0, 2)
        q = _rope_neox(_rms(q, w[p + "attn_q_norm.weight"], eps), base) / math.sqrt(head_dim)
        k = _rope_neox(_rms(k, w[p + "attn_k_norm.weight"], eps), base)
        k, v = np.repeat(k, heads // kv, axis=0), np.repeat(v, heads // kv, axis=0)
        allowed = pos[:, None] >= pos[None, :]
        if swa:
            allowed &= pos[:, None] - pos[None, :] < window
        scores = np.where(allowed, q @ k.transpose(0, 2, 1), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(seq, heads * head_dim)
        out = _rms(attn @ w[p + "attn_output.weight"].T, w[p + "post_attention_norm.weight"], eps)
        x = x + out
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        ffn = (_gelu_tanh(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[
            p + "ffn_down.weight"
        ].T
        x = x + _rms(ffn, w[p + "post_ffw_norm.weight"], eps)
    x = _rms(x, w["output_norm.weight"], eps)
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def qwen_logits(meta: dict[str, Any], t: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """(seq, vocab) logits of llama.cpp's ``qwen2`` or ``qwen3`` graph, float64.

    It is also llama.cpp's ``llama`` graph (interleaved RoPE on q/k rows the converter
    permuted) when given q/k un-permuted, since both RoPEs rotate the same pairs then."""
    arch = meta["general.architecture"]
    g = {k.removeprefix(f"{arch}."): v for k, v in meta.items() if k.startswith(f"{arch}.")}
    hidden, heads = g["embedding_length"], g["attention.head_count"]
    kv = g["attention.head_count_kv"]
    head_dim = g.get("attention.key_length", hidden // heads)
    eps, base, seq = g["attention.layer_norm_rms_epsilon"], g["rope.freq_base"], len(ids)
    w = {k: v.astype(np.float64) for k, v in t.items()}
    x = w["token_embd.weight"][ids]

    def project(h: np.ndarray, p: str, name: str, n: int) -> np.ndarray:
        out = h @ w[f"{p}{name}.weight"].T + w.get(f"{p}{name}.bias", 0.0)
        out = out.reshape(seq, n, head_dim).transpose(1, 0, 2)
        norm = w.get(f"{p}{name}_norm.weight")
        return out if norm is None else _rms(out, norm, eps)

    for i in range(g["block_count"]):
        p = f"blk.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = _rope_neox(project(h, p, "attn_q", heads), base) / math.sqrt(head_dim)
        k = _rope_neox(project(h, p, "attn_k", kv), base)
        attn = _attend(q, k, project(h, p, "attn_v", kv))
        x = x + attn @ w[p + "attn_output.weight"].T
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        gate = _silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)
        x = x + gate @ w[p + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def phi3_logits(meta: dict[str, Any], t: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """(seq, vocab) logits of llama.cpp's ``phi3`` graph (``llm_build_phi3``), float64.

    The fused ``attn_qkv`` output is cut at ``n_embd`` and ``n_embd + n_embd_gqa`` (q, k,
    v); NEOX RoPE on ``rope.dimension_count`` dims with the long rope factors (llama.cpp's
    choice when its context exceeds the original one) and ``rope.scaling.attn_factor``;
    the fused ``ffn_up`` output is SwiGLU-split: SiLU of the first half times the second.
    """
    g = {k.removeprefix("phi3."): v for k, v in meta.items() if k.startswith("phi3.")}
    hidden, heads = g["embedding_length"], g["attention.head_count"]
    kv, head_dim = g["attention.head_count_kv"], hidden // heads
    eps, base, seq = g["attention.layer_norm_rms_epsilon"], g["rope.freq_base"], len(ids)
    n_rot, mscale = g["rope.dimension_count"], g.get("rope.scaling.attn_factor", 1.0)
    w = {k: v.astype(np.float64) for k, v in t.items()}
    factors = w.get("rope_factors_long.weight")
    x = w["token_embd.weight"][ids]
    for i in range(g["block_count"]):
        p = f"blk.{i}."
        qkv = _rms(x, w[p + "attn_norm.weight"], eps) @ w[p + "attn_qkv.weight"].T
        q, k, v = np.split(qkv, [hidden, hidden + kv * head_dim], axis=-1)
        q, k, v = (m.reshape(seq, -1, head_dim).transpose(1, 0, 2) for m in (q, k, v))
        q = _rope_neox(q, base, n_rot, factors, mscale) / math.sqrt(head_dim)
        k = _rope_neox(k, base, n_rot, factors, mscale)
        x = x + _attend(q, k, v) @ w[p + "attn_output.weight"].T
        up = _rms(x, w[p + "ffn_norm.weight"], eps) @ w[p + "ffn_up.weight"].T
        gate, up = np.split(up, 2, axis=-1)
        x = x + (_silu(gate) * up) @ w[p + "ffn_down.weight"].T
    x = _rms(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def spm_tokenize(text: str, tokens: list[str], scores: list[float], *, prefix: bool) -> list[int]:
    """llama.cpp's ``llm_tokenizer_spm`` on text without special tokens."""
    vocab = {tok: i for i, tok in reversed(list(enumerate(tokens)))}
    text = ("\u2581" if prefix else "") + text.replace(" ", "\u2581")
    symbols = list(text)
    while True:
        best = None
        for i in range(len(symbols) - 1):
            idx = vocab.get(symbols[i] + symbols[i + 1])
            if idx is not None and (best is None or scores[idx] > best[0]):
                best = (scores[idx], i)
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    ids: list[int] = []
    for sym in symbols:
        if sym in vocab:
            ids.append(vocab[sym])
        else:
            ids += [vocab[f"<0x{b:02X}>"] for b in sym.encode("utf-8")]
    return ids
