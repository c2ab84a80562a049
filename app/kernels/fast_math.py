"""``exp``, SiLU, tanh-GELU gates and softmax without MLX's scalar ``exp``, for the CPU backend.

Used by the language models' blocks (:mod:`app.kernels.compile`, :mod:`app.kernels.attention`)
and by the BERT encoder's CPU kernels (:mod:`app.models.sentence.bert`).

MLX's CPU backend evaluates ``exp`` (so ``sigmoid``, ``silu``, ``tanh``, ``softmax``) as scalar
libm calls, ~20 ns per element here: at batch 16 a SmolLM2 decode step spent ~16 ms in SiLU
and ~16 ms in attention softmax, a 128-token prefill ~190 ms in SiLU alone. ``exp`` is built
instead as ``2**n * p(f)`` with ``y = x / ln 2 = n + f``: ``n`` rounded with the 1.5 * 2**23
trick (MLX's JIT builds CPU kernels without SSE4.1, so ``floor`` would be a libm call too),
``p`` a degree-7 polynomial for ``2**f`` (relative error ~1e-7, float32 rounding), and
``2**n`` from its exponent bits. Each function is compiled per input shape
(:mod:`app.kernels.shape_compile`; the bit cast ``view`` cannot be traced shapeless anyway).
Every backend runs the same arithmetic, so results agree across them.
"""

from __future__ import annotations

import math

import mlx.core as mx

from app.kernels.shape_compile import PerShapeCompiled

_LOG2E = 1.0 / math.log(2.0)
_ROUND_MAGIC = 12582912.0  # 1.5 * 2**23: (y + M) - M rounds float32 |y| < 2**22
# 2**f on [-0.5, 0.5]: Taylor coefficients (ln 2)**k / k!, k = 0..7 (rel. err < 1e-8).
_EXP2_COEFFS = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))
_GELU_C = math.sqrt(2.0 / math.pi)


def _relu(z: mx.array) -> mx.array:
    return 0.5 * (z + mx.abs(z))  # exactly z or 0 for finite z; no branch


def _exp2_parts(y: mx.array) -> tuple[mx.array, mx.array]:
    """``2**y`` as (polynomial part, int32 bits of the power); ``y`` clamped to [-126, 126].

    Branch-free clamp (exact inside the range) and Estrin's scheme for the polynomial:
    MLX's ``where``/``minimum`` compile to branches that stop GCC vectorising a fused CPU
    kernel, and a Horner chain is deeper than MLX's fusion depth limit (11).
    """
    y = y - _relu(y - 126.0) + _relu(-126.0 - y)
    n = (y + _ROUND_MAGIC) - _ROUND_MAGIC
    f = y - n
    c = _EXP2_COEFFS
    f2 = f * f
    f4 = f2 * f2
    p = (c[0] + c[1] * f) + (c[2] + c[3] * f) * f2
    p = p + ((c[4] + c[5] * f) + (c[6] + c[7] * f) * f2) * f4
    return p, (n.astype(mx.int32) + 127) << 23


def _exp(x: mx.array) -> mx.array:
    p, bits = _exp2_parts(x * _LOG2E)
    return p * bits.view(mx.float32)


def _swiglu(gate: mx.array, up: mx.array) -> mx.array:
    p, bits = _exp2_parts(gate * -_LOG2E)  # exp(-gate)
    return gate / (1.0 + p * bits.view(mx.float32)) * up  # gate * sigmoid(gate) * up


def _geglu_tanh(gate: mx.array, up: mx.array) -> mx.array:
    z = _GELU_C * (gate + 0.044715 * gate * gate * gate)
    p, bits = _exp2_parts(z * (-2.0 * _LOG2E))  # exp(-2z): the tanh form as a sigmoid
    return gate / (1.0 + p * bits.view(mx.float32)) * up


def _rows(x: mx.array) -> mx.array:
    """``x`` as a 2-D (rows, last axis) view: MLX's CPU row reductions are ~2-7x faster on it."""
    return x.reshape(-1, x.shape[-1])


def _softmax_parts(scores: mx.array, keep: mx.array) -> tuple[mx.array, mx.array]:
    """:func:`_masked_softmax` without its last pass: (unnormalised weights, row sums).

    The caller divides by the sums after the ``weights @ v`` matmul, on (rows, head dim)
    instead of (rows, keys) entries.
    """
    s = mx.where(keep, scores, -1e30)  # also drops NaNs of masked-out (padding) columns
    row = (*s.shape[:-1], 1)
    p, bits = _exp2_parts((s - _rows(s).max(axis=1).reshape(row)) * _LOG2E)  # exponent <= 0
    w = mx.where(keep, p * bits.view(mx.float32), 0.0)
    return w, _rows(w).sum(axis=1).reshape(row)


def _masked_softmax(scores: mx.array, keep: mx.array) -> mx.array:
    w, total = _softmax_parts(scores, keep)
    return w / mx.where(total > 0.0, total, 1.0)  # a row with nothing kept: all zeros


# Each traced per input shape (app.kernels.shape_compile): the fused kernels are vectorised.
exp_fast = PerShapeCompiled(_exp)
exp_fast.__doc__ = "``exp`` for float32 (relative error ~1e-7 where the result is a normal float)."
swiglu = PerShapeCompiled(_swiglu)
swiglu.__doc__ = "``silu(gate) * up``."
geglu_tanh = PerShapeCompiled(_geglu_tanh)
geglu_tanh.__doc__ = "``gelu_approx(gate) * up`` (the tanh form)."
masked_softmax = PerShapeCompiled(_masked_softmax)
masked_softmax.__doc__ = (
    "Softmax over the last axis of the entries where ``keep`` (bool, broadcast) is True;"
    " the others get exactly 0 (a row with none kept: all 0)."
)
softmax_parts = PerShapeCompiled(_softmax_parts)
softmax_parts.__doc__ = (
    "``masked_softmax(scores, keep)`` as (``w``, row sums of ``w``): ``w / sums`` is the softmax"
    " (rows with none kept: sums 0)."
)
