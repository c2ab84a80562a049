"""A small MLX Whisper: convolutional front end, pre-norm encoder, decoder with a KV cache.

The module names follow OpenAI's Whisper (``encoder.blocks.0.attn.query``...), which
:mod:`app.models.whisper.convert` maps CTranslate2's variables onto. Positions come from
the file (the encoder's sinusoids are stored there too), so nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from app.kernels.attention import sdpa

# One decoder layer's cache: self-attention keys/values so far, cross-attention keys/values.
LayerCache = tuple[tuple[mx.array, mx.array] | None, tuple[mx.array, mx.array] | None]


@dataclass
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperDims:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross: bool = False) -> None:
        super().__init__()
        self.n_head = n_head
        self.cross = cross  # keys/values from the audio (``xa``) or from a cache of them
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def _heads(self, x: mx.array) -> mx.array:
        b, t, d = x.shape
        return x.reshape(b, t, self.n_head, d // self.n_head).transpose(0, 2, 1, 3)

    def __call__(
        self,
        x: mx.array,
        xa: mx.array | None = None,
        mask: mx.array | str | None = None,
        kv_cache: tuple[mx.array, mx.array] | None = None,
        qk_out: list[mx.array] | None = None,
    ) -> tuple[mx.array, tuple[mx.array, mx.array]]:
        """``qk_out``: a list that gets the scaled query-key logits (batch, heads, queries,
        keys), computed without the fused kernel (word timestamps read them)."""
        q = self._heads(self.query(x))
        if not self.cross:  # self-attention: extend the cache with this step's keys/values
            k, v = self._heads(self.key(x)), self._heads(self.value(x))
            if kv_cache is not None:
                k = mx.concatenate([kv_cache[0], k], axis=2)
                v = mx.concatenate([kv_cache[1], v], axis=2)
        elif kv_cache is None and xa is not None:  # cross-attention: audio keys/values, once
            k, v = self._heads(self.key(xa)), self._heads(self.value(xa))
        elif kv_cache is not None:
            k, v = kv_cache
        else:
            raise ValueError("cross-attention needs the audio features or their cache")
        scale = (q.shape[-1]) ** -0.5
        if qk_out is not None:
            if mask is not None:
                raise ValueError("attention logits are read from unmasked (cross) attention")
            qk = (q @ k.transpose(0, 1, 3, 2)).astype(mx.float32) * scale
            qk_out.append(qk)
            out = (mx.softmax(qk, axis=-1).astype(v.dtype) @ v)
        elif q.shape[2] == k.shape[2] and mask is None:  # the encoder: one shape, compiled once
            out = sdpa(q, k, v, scale, mask)
        else:  # decoder steps: a new key length each step, nothing to compile per shape
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        b, h, t, dh = out.shape
        return self.out(out.transpose(0, 2, 1, 3).reshape(b, t, h * dh)), (k, v)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = (MultiHeadAttention(n_state, n_head, cross=True) if cross_attention
                           else None)
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp1 = nn.Linear(n_state, 4 * n_state)
        self.mlp2 = nn.Linear(4 * n_state, n_state)
        self.mlp_ln = nn.LayerNorm(n_state)

    def __call__(
        self,
        x: mx.array,
        xa: mx.array | None = None,
        mask: mx.array | str | None = None,
        cache: LayerCache = (None, None),
        cross_qk: list[mx.array] | None = None,
    ) -> tuple[mx.array, LayerCache]:
        """``cross_qk``: a list that gets the cross-attention logits (see the attention)."""
        self_kv, cross_kv = cache
        y, self_kv = self.attn(self.attn_ln(x), mask=mask, kv_cache=self_kv)
        x = x + y
        if self.cross_attn is not None:
            y, cross_kv = self.cross_attn(self.cross_attn_ln(x), xa, kv_cache=cross_kv,
                                          qk_out=cross_qk)
            x = x + y
        x = x + self.mlp2(nn.gelu(self.mlp1(self.mlp_ln(x))))
        return x, (self_kv, cross_kv)


class AudioEncoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = mx.zeros((dims.n_audio_ctx, d))
        self.blocks = [ResidualAttentionBlock(d, dims.n_audio_head) for _ in
                       range(dims.n_audio_layer)]
        self.ln_post = nn.LayerNorm(d)

    def __call__(self, mel: mx.array) -> mx.array:
        """``mel``: (batch, frames, n_mels) -> (batch, frames / 2, n_audio_state)."""
        x = nn.gelu(self.conv1(mel))
        x = nn.gelu(self.conv2(x))
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x, _ = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        d = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.positional_embedding = mx.zeros((dims.n_text_ctx, d))
        self.blocks = [ResidualAttentionBlock(d, dims.n_text_head, cross_attention=True)
                       for _ in range(dims.n_text_layer)]
        self.ln = nn.LayerNorm(d)

    def __call__(
        self, tokens: mx.array, xa: mx.array | None, cache: list[LayerCache] | None = None,
        *, positions: mx.array | None = None, mask: mx.array | str | None = None,
        cross_qk: list[mx.array] | None = None,
    ) -> tuple[mx.array, list[LayerCache]]:
        """Logits for ``tokens`` (batch, steps) after ``cache``'s positions; the new cache.

        A batch of rows with caches of different lengths (one step each) passes
        ``positions`` (batch,), each row's own position, and an additive ``mask``
        (batch, 1, 1, keys) hiding each row's padding; ``xa`` may then be None (the
        cache holds the audio keys/values). ``cross_qk`` gets each layer's cross-attention
        logits (batch, heads, tokens, frames), for word timestamps.
        """
        steps = tokens.shape[1]
        if positions is not None:
            x = self.token_embedding(tokens) + self.positional_embedding[positions][:, None]
        else:
            offset = 0
            if cache and cache[0][0] is not None:
                offset = cache[0][0][0].shape[2]
            x = self.token_embedding(tokens) + self.positional_embedding[offset : offset + steps]
            mask = "causal" if steps > 1 else None
        cache = cache or [(None, None)] * len(self.blocks)
        new_cache: list[LayerCache] = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x, layer_cache = block(x, xa, mask=mask, cache=layer_cache, cross_qk=cross_qk)
            new_cache.append(layer_cache)
        x = self.ln(x)
        return self.token_embedding.as_linear(x), new_cache


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865
