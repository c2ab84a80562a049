"""Attention for the optimized blocks: KV-cache update, then grouped-query SDPA on the CPU.

:func:`sdpa` computes what ``mx.fast.scaled_dot_product_attention``'s CPU fallback computes,
without its copies and with the softmax of :mod:`app.kernels.fast_math` (no scalar ``exp``).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import scaled_dot_product_attention

from app.kernels.fast_math import softmax_parts

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
    softmax is :func:`app.kernels.fast_math.softmax_parts` (~2x faster than MLX's on the
    CPU there; row reductions on 2-D views, the division by the row sums after ``@ v`` on
    head-dim columns, the mask prepared once per forward: :class:`_PreparedMask`): results
    agree to float rounding (a query row with no visible key, left padding, gets zeros
    there). Masks it does not know go to ``mx.fast``.
    """
    b, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    rep = heads // kv_heads
    if isinstance(mask, str) and mask == "causal":
        mask = _causal(length, k.shape[2])
    if isinstance(mask, str) or (
        mask is not None and (mask.ndim not in (2, 4) or (mask.ndim == 4 and mask.shape[1] != 1))
    ):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    queries = (mx.array(scale, q.dtype) * q).reshape(b, kv_heads, rep * length, dim)
    scores = queries @ k.swapaxes(-1, -2)
    keep = _ALL if mask is None else _PREPARED.get(mask, rep, length, scores.shape)
    if keep.dtype != mx.bool_:
        scores, keep = scores + keep, _ALL
    if scores.size <= FAST_SOFTMAX_MAX:
        weights, total = softmax_parts(scores, keep)
        out = (weights @ v) * mx.where(total > 0.0, 1.0 / total, 0.0)  # no key kept: zeros
        return out.reshape(b, heads, length, -1)
    # several passes over a large array lose to MLX's one-pass row softmax
    if keep is not _ALL:
        scores = mx.where(keep, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
    weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ v).reshape(b, heads, length, -1)


def _causal(length: int, keys: int) -> mx.array:
    """The boolean causal mask, one object per (length, keys) in a row (see _PreparedMask)."""
    cached = getattr(_CAUSAL, "mask", None)
    if cached is None or cached.shape != (length, keys):
        cached = _CAUSAL.mask = mx.arange(keys - length, keys)[:, None] >= mx.arange(keys)[None]
    return cached


class _PreparedMask(threading.local):
    """The last mask as the softmax wants it, per thread: all layers of a forward share it.

    A model builds one mask per forward and passes the same object to every layer; its rows
    are repeated once per query head of a group (rows are (head in group, position)) and a
    boolean one is broadcast to the full score shape (contiguous inputs keep the fused
    softmax kernel on its vectorised path). Keyed by the mask's identity; the entry holds
    the mask, so the identity cannot be reused while it is cached.
    """

    def __init__(self) -> None:
        self.mask: Any = None  # held so that its id is not reused while cached
        self.key: tuple[Any, ...] = ()
        self.value: mx.array = _ALL

    def get(self, mask: mx.array, rep: int, length: int, shape: tuple[int, ...]) -> mx.array:
        key = (id(mask), rep, tuple(shape))
        if self.key != key:
            self.mask, self.key, self.value = mask, key, _prepare(mask, rep, length, shape)
        return self.value


def _prepare(mask: mx.array, rep: int, length: int, shape: tuple[int, ...]) -> mx.array:
    if length > 1 and rep > 1:
        mask = mx.tile(mask, (rep, 1) if mask.ndim == 2 else (1, 1, rep, 1))
    if mask.dtype == mx.bool_ and math.prod(shape) <= FAST_SOFTMAX_MAX:  # held until the next
        mask = mx.contiguous(mx.broadcast_to(mask, shape))  # forward: bounded
    return mask


_PREPARED = _PreparedMask()
_CAUSAL = threading.local()


def attend(
    layer: nn.Module, q: mx.array, k: mx.array, v: mx.array, mask: Any, cache: Any
) -> mx.array:
    """Cache update, then attention, as the stock block does them."""
    k, v = cache.update_and_fetch(k, v)
    scale = layer.self_attn.scale
    if hasattr(cache, "bits"):  # quantized KV cache: mlx-lm's quantized attention
        return scaled_dot_product_attention(q, k, v, cache=cache, scale=scale, mask=mask)
    return sdpa(q, k, v, scale, mask)
