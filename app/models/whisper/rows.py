"""Decoder rows stepped as one batch: a shared KV cache, left-padded to one width.

Each row is a decoding pass (its own prompt, window and position). Per layer the
self-attention keys/values of all rows are one (rows, heads, width, head_dim) array:
a row shorter than the widest is padded on the left and an additive mask hides the
padding, so every row sees exactly its own keys. The audio keys/values of the rows'
windows are stacked the same way (rows, heads, 1500, head_dim). A row joins after its
prompt was run alone (prompts differ in length) and leaves when its pass ends; then the
padding that every remaining row has is cut off, so the width stays at most the longest
row's length (``n_text_ctx``).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from app.models.whisper.model import LayerCache, Whisper

KV = tuple[mx.array, mx.array]


def _pad_left(kv: KV, width: int) -> KV:
    if width == 0:
        return kv
    k, v = kv
    pad = [(0, 0), (0, 0), (width, 0), (0, 0)]
    return mx.pad(k, pad), mx.pad(v, pad)


def _stack(rows: list[KV], new: list[KV]) -> list[KV]:
    return [(mx.concatenate([a[0], b[0]]), mx.concatenate([a[1], b[1]]))
            for a, b in zip(rows, new, strict=True)]


class DecoderRows:
    """The rows decoding now (see the module docstring); rows are keyed by any object."""

    def __init__(self, model: Whisper) -> None:
        self.decoder = model.decoder
        self.keys: list[object] = []
        self.lengths: list[int] = []  # each row's real length (its next position)
        self.width = 0
        self.self_kv: list[KV] = []
        self.cross_kv: list[KV] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: object, cache: list[LayerCache], length: int) -> None:
        """Row ``key`` joins with the cache of its prompt's pass (``length`` positions)."""
        own_self = [c[0] for c in cache if c[0] is not None]
        own_cross = [c[1] for c in cache if c[1] is not None]
        if len(own_self) != len(cache) or len(own_cross) != len(cache):
            raise ValueError("a row joins with a full cache (self- and cross-attention)")
        if not self.keys:
            self.self_kv, self.cross_kv = own_self, own_cross
            self.width = length
        else:
            if length > self.width:
                self.self_kv = [_pad_left(kv, length - self.width) for kv in self.self_kv]
                self.width = length
            own = [_pad_left(kv, self.width - length) for kv in own_self]
            self.self_kv = _stack(self.self_kv, own)
            self.cross_kv = _stack(self.cross_kv, own_cross)
        self.keys.append(key)
        self.lengths.append(length)

    def remove(self, gone: set[object]) -> None:
        """Drop the rows in ``gone``; cut the padding every remaining row has."""
        keep = [i for i, key in enumerate(self.keys) if key not in gone]
        if len(keep) == len(self.keys):
            return
        self.keys = [self.keys[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            self.self_kv, self.cross_kv, self.width = [], [], 0
            return
        cut = self.width - max(self.lengths)
        index = mx.array(keep)
        self.self_kv = [(k[index, :, cut:], v[index, :, cut:]) for k, v in self.self_kv]
        self.cross_kv = [(k[index], v[index]) for k, v in self.cross_kv]
        self.width -= cut

    def step(self, tokens: list[int]) -> np.ndarray:
        """Feed one token per row (in row order); float32 logits (rows, vocab)."""
        lengths = np.array(self.lengths)
        pads = self.width - lengths
        mask = None
        if pads.any():
            dtype = self.self_kv[0][0].dtype
            hidden = np.arange(self.width + 1)[None, :] < pads[:, None]
            mask = mx.array(np.where(hidden, -np.inf, 0.0)[:, None, None, :]).astype(dtype)
        cache: list[LayerCache] = list(zip(self.self_kv, self.cross_kv, strict=True))
        logits, cache = self.decoder(mx.array(tokens)[:, None], None, cache,
                                     positions=mx.array(lengths), mask=mask)
        self.self_kv = [c[0] for c in cache if c[0] is not None]
        self.width += 1
        self.lengths = [n + 1 for n in self.lengths]
        return np.array(logits[:, -1].astype(mx.float32))
