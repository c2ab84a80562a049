"""Attention for the optimized blocks: KV-cache update, then grouped-query SDPA on the CPU.

:func:`sdpa` computes what ``mx.fast.scaled_dot_product_attention``'s CPU fallback computes,
without its copies and with the softmax of :mod:`app.kernels.fast_math` (no scalar ``exp``).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention

from app.kernels.fast_math import masked_softmax

_ALL = mx.array(True)
# Score tensors up to this many entries (256 MiB of float32) take the exp-free softmax: 2-3x
# faster than MLX's (scalar exp) from decode steps to 512-token prefill chunks; it holds a
# few score-sized temporaries at once, so larger ones go to MLX's one-pass row softmax.
FAST_SOFTMAX_MAX = 1 << 26


def sdpa(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: Any) -> mx.array:
    """``mx.fast.scaled_dot_product_attention`` as its CPU fallback computes it, without copies.

    The fallback broadcasts K and V over the query heads of a group (a 5-D matmul that
    materializes them ``n_heads / n_kv_heads`` times); here the group's queries become rows
    of one 4-D matmul instead (~1.5x faster), and up to :data:`FAST_SOFTMAX_MAX` scores the
    softmax is :func:`app.kernels.fast_math.masked_softmax` (~2x faster than MLX's on the
    CPU there): results agree to float rounding (a query row with no visible key, left
    padding, gets zeros there). Masks it does not know go to ``mx.fast``.
    """
    b, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    rep = heads // kv_heads
    if isinstance(mask, str) and mask == "causal":
        keys = k.shape[2]
        mask = mx.arange(keys - length, keys)[:, None] >= mx.arange(keys)[None]
    if isinstance(mask, str) or (
        mask is not None and (mask.ndim not in (2, 4) or (mask.ndim == 4 and mask.shape[1] != 1))
    ):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    queries = (mx.array(scale, q.dtype) * q).reshape(b, kv_heads, rep * length, dim)
    scores = queries @ k.swapaxes(-1, -2)
    keep = _ALL
    if mask is not None:
        if length > 1 and rep > 1:  # rows are (head in group, position): repeat the mask rows
            mask = mx.tile(mask, (rep, 1) if mask.ndim == 2 else (1, 1, rep, 1))
        if mask.dtype == mx.bool_:
            keep = mask
        else:
            scores = scores + mask
    if scores.size <= FAST_SOFTMAX_MAX:
        weights = masked_softmax(scores, keep)
    else:  # several passes over a large array lose to MLX's one-pass row softmax
        if keep is not _ALL:
            scores = mx.where(keep, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ v).reshape(b, heads, length, -1)


def attend(
    layer: nn.Module, q: mx.array, k: mx.array, v: mx.array, mask: Any, cache: Any
) -> mx.array:
    """Cache update, then attention, as the stock block does them."""
    k, v = cache.update_and_fetch(k, v)
    scale = layer.self_attn.scale
    if hasattr(cache, "bits"):  # quantized KV cache: mlx-lm's quantized attention
        return scaled_dot_product_attention(q, k, v, cache=cache, scale=scale, mask=mask)
    return sdpa(q, k, v, scale, mask)
