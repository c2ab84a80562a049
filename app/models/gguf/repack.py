"""Requantize dequantized GGUF layers for MLX, exactly where the block format allows it.

Re-deriving 4/5-bit groups from dequantized floats (``mx.quantize``'s min/max) lands on a
different lattice than the file's and roughly doubles the quantization error: on Gemma 3
270M Q4_K_M it turns the greedy " lazy dog" into " fence". But several GGML formats are
affine per 32 values, ``w = scale * q + bias`` with integer ``q``, which is exactly MLX's
affine quantization at group size 32: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and, per 32-value
sub-block, Q4_K and Q5_K. For those the integers, scales and biases are recovered from the
blocks and packed into MLX's layout (an LSB-first bit stream in uint32 words), so the
MLX layer computes the file's own weights. Everything else that was quantized (Q6_K,
Q3_K, Q2_K: 16-value sub-blocks; the IQ codebook types) is requantized to 8 bits, which
stays within a small fraction of the source's own step.

The recovery needs no per-format bit twiddling: ``gguf-py`` dequantizes copies of the blocks
with every quant code zeroed (giving the bias) and set to 1 (giving scale + bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

GROUP_SIZE = 32
FALLBACK_BITS = 8


@dataclass(frozen=True)
class _Affine:
    bits: int
    codes: slice  # the bytes of a block that hold quant codes (high bits included)
    low: slice  # the bytes holding the low 4 (or 8) bits of each code
    one: int  # the byte value that makes every low code 1
    signed: bool = False  # codes are int8 (Q8_0)


Q = GGMLQuantizationType
AFFINE: dict[GGMLQuantizationType, _Affine] = {
    Q.Q4_0: _Affine(4, slice(2, 18), slice(2, 18), 0x11),
    Q.Q4_1: _Affine(4, slice(4, 20), slice(4, 20), 0x11),
    Q.Q5_0: _Affine(5, slice(2, 22), slice(6, 22), 0x11),
    Q.Q5_1: _Affine(5, slice(4, 24), slice(8, 24), 0x11),
    Q.Q8_0: _Affine(8, slice(2, 34), slice(2, 34), 0x01, signed=True),
    Q.Q4_K: _Affine(4, slice(16, 144), slice(16, 144), 0x11),
    Q.Q5_K: _Affine(5, slice(16, 176), slice(48, 176), 0x11),
}
FLOAT_TYPES = frozenset({Q.F32, Q.F16, Q.BF16})


@dataclass
class Packed:
    """MLX affine quantized parameters of one 2-D weight."""

    weight: np.ndarray  # uint32 (rows, cols * bits / 32)
    scales: np.ndarray  # float32 (rows, cols / 32)
    biases: np.ndarray  # float32 (rows, cols / 32)
    bits: int


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes ``(rows, n)`` into MLX's packing: an LSB-first bit stream of uint32s.

    Every 32 codes fill exactly ``bits`` words, so the packing is 32 vectorized shifts.
    """
    rows, n = q.shape
    codes = q.reshape(rows, n // 32, 32).astype(np.uint32)
    words = np.zeros((rows, n // 32, bits), dtype=np.uint32)
    for k in range(32):
        offset = k * bits
        index, shift = divmod(offset, 32)
        words[..., index] |= codes[..., k] << np.uint32(shift)  # high bits fall off
        if shift + bits > 32:
            words[..., index + 1] |= codes[..., k] >> np.uint32(32 - shift)
    return words.reshape(rows, -1)


def _q8_0(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q8_0 decoded directly (``d`` then 32 int8 codes): the common, large case."""
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:34].view(np.int8).astype(np.int16) + 128
    return q, scale, -128.0 * scale


def _probe(blocks: np.ndarray, kind: GGMLQuantizationType) -> tuple[np.ndarray, ...]:
    spec = AFFINE[kind]
    rows = blocks.shape[0]
    zero = blocks.copy()
    zero[..., spec.codes] = 0
    one = zero.copy()
    one[..., spec.low] = spec.one
    w = dequantize(blocks.reshape(rows, -1), kind).reshape(rows, -1, GROUP_SIZE)
    w0 = dequantize(zero.reshape(rows, -1), kind).reshape(rows, -1, GROUP_SIZE)
    w1 = dequantize(one.reshape(rows, -1), kind).reshape(rows, -1, GROUP_SIZE)
    bias, scale = w0[..., 0], (w1 - w0)[..., 0]
    if not np.array_equal(w0, np.broadcast_to(bias[..., None], w0.shape)):
        raise ValueError(f"{kind.name} is not affine per {GROUP_SIZE} values")
    safe = np.where(scale == 0, 1.0, scale)[..., None]
    q = np.where(scale[..., None] == 0, 0, np.rint((w - bias[..., None]) / safe))
    if spec.signed:
        q += 1 << (spec.bits - 1)
        bias = bias - (1 << (spec.bits - 1)) * scale
    return q, scale, bias


def affine_codes(raw: np.ndarray, kind: GGMLQuantizationType, chunk: int = 8192) -> Packed:
    """Exact MLX parameters for rows of an affine GGML format (see :data:`AFFINE`)."""
    spec = AFFINE[kind]
    block_bytes = GGML_QUANT_SIZES[kind][1]
    rows = raw.shape[0]
    weight, scales, biases = [], [], []
    for start in range(0, rows, chunk):  # bounded temporaries for a 262k-row embedding
        blocks = np.ascontiguousarray(raw[start : start + chunk])
        blocks = blocks.reshape(blocks.shape[0], -1, block_bytes)
        q, scale, bias = _q8_0(blocks) if kind == Q.Q8_0 else _probe(blocks, kind)
        q = q.reshape(blocks.shape[0], -1)
        if q.min() < 0 or q.max() >= 1 << spec.bits:
            raise ValueError(f"{kind.name} codes out of range for {spec.bits} bits")
        weight.append(pack_bits(q, spec.bits))
        scales.append(scale.astype(np.float32))
        biases.append(bias.astype(np.float32))
    return Packed(np.concatenate(weight), np.concatenate(scales), np.concatenate(biases),
                  spec.bits)


def mlx_bits(kind: GGMLQuantizationType) -> int | None:
    """The MLX width a layer of GGUF type ``kind`` gets, None to keep it dense."""
    if kind in FLOAT_TYPES:
        return None
    spec = AFFINE.get(kind)
    return spec.bits if spec is not None else FALLBACK_BITS
