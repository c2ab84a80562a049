"""``exp``, SiLU, tanh-GELU gates and softmax without MLX's scalar ``exp``, for the CPU backend.

Used by the language models' blocks (:mod:`app.engine.compile`, :mod:`app.engine.attention`)
and by the BERT encoder's CPU kernels (:mod:`app.models.bert`).

MLX's CPU backend evaluates ``exp`` (so ``sigmoid``, ``silu``, ``tanh``, ``softmax``) as scalar
libm calls, ~20 ns per element here: at batch 16 a SmolLM2 decode step spent ~16 ms in SiLU
and ~16 ms in attention softmax, a 128-token prefill ~190 ms in SiLU alone. ``exp`` is built
instead as ``2**n * p(f)`` with ``y = x / ln 2 = n + f``: ``n`` rounded with the 1.5 * 2**23
trick (MLX's JIT builds CPU kernels without SSE4.1, so ``floor`` would be a libm call too),
``p`` a degree-7 polynomial for ``2**f`` (relative error ~1e-7, float32 rounding), and
``2**n`` from its exponent bits. The bit cast (``view``) cannot be traced shapeless, so the
work is two shapeless compiled kernels around it (one JIT build each, for every shape).
Every backend runs the same arithmetic, so results agree across them.
"""

from __future__ import annotations

import math

import mlx.core as mx

_LOG2E = 1.0 / math.log(2.0)
_ROUND_MAGIC = 12582912.0  # 1.5 * 2**23: (y + M) - M rounds float32 |y| < 2**22
# 2**f on [-0.5, 0.5]: Taylor coefficients (ln 2)**k / k!, k = 7..0 (rel. err < 1e-8).
_EXP2_COEFFS = tuple(math.log(2) ** k / math.factorial(k) for k in range(7, -1, -1))
_GELU_C = math.sqrt(2.0 / math.pi)


def _exp2_parts(y: mx.array) -> tuple[mx.array, mx.array]:
    """``2**y`` for ``y`` in [-126, 126] as (polynomial part, int32 bits of the power)."""
    n = (y + _ROUND_MAGIC) - _ROUND_MAGIC
    f = y - n
    p = _EXP2_COEFFS[0] * f + _EXP2_COEFFS[1]
    for c in _EXP2_COEFFS[2:]:
        p = p * f + c
    return p, (n.astype(mx.int32) + 127) << 23


def _clamp(y: mx.array) -> mx.array:
    # two wheres: MLX's clip/minimum carry a NaN branch that slows fused CPU kernels down
    return mx.where(y > 126.0, 126.0, mx.where(y < -126.0, -126.0, y))


def _silu_exp(gate: mx.array) -> tuple[mx.array, mx.array]:
    return _exp2_parts(_clamp(gate * -_LOG2E))  # exp(-gate)


def _gelu_exp(gate: mx.array) -> tuple[mx.array, mx.array]:
    z = _GELU_C * (gate + 0.044715 * gate * gate * gate)
    return _exp2_parts(_clamp(z * (-2.0 * _LOG2E)))  # exp(-2z): tanh form as a sigmoid


def _gate_finish(gate: mx.array, up: mx.array, p: mx.array, power: mx.array) -> mx.array:
    return gate / (1.0 + p * power) * up  # gate * sigmoid(.) * up


def _softmax_exp(scores: mx.array, keep: mx.array) -> tuple[mx.array, mx.array]:
    s = mx.where(keep, scores, -1e30)  # also drops NaNs of masked-out (padding) columns
    y = (s - s.max(axis=-1, keepdims=True)) * _LOG2E  # <= 0
    p, bits = _exp2_parts(mx.where(y < -126.0, -126.0, y))
    return mx.where(keep, p, 0.0), bits


def _softmax_finish(p: mx.array, power: mx.array) -> mx.array:
    w = p * power
    total = w.sum(axis=-1, keepdims=True)
    return w / mx.where(total > 0.0, total, 1.0)  # a row with nothing kept: all zeros


def _exp(x: mx.array) -> tuple[mx.array, mx.array]:
    return _exp2_parts(_clamp(x * _LOG2E))


_exp_k = mx.compile(_exp, shapeless=True)
_silu_exp_k = mx.compile(_silu_exp, shapeless=True)
_gelu_exp_k = mx.compile(_gelu_exp, shapeless=True)
_gate_finish_k = mx.compile(_gate_finish, shapeless=True)
_softmax_exp_k = mx.compile(_softmax_exp, shapeless=True)
_softmax_finish_k = mx.compile(_softmax_finish, shapeless=True)


def exp_fast(x: mx.array) -> mx.array:
    """``exp`` for float32 (relative error ~1e-7 where the result is a normal float)."""
    p, bits = _exp_k(x)
    return p * bits.view(mx.float32)


def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """``silu(gate) * up``."""
    p, bits = _silu_exp_k(gate)
    return _gate_finish_k(gate, up, p, bits.view(mx.float32))


def geglu_tanh(gate: mx.array, up: mx.array) -> mx.array:
    """``gelu_approx(gate) * up`` (the tanh form)."""
    p, bits = _gelu_exp_k(gate)
    return _gate_finish_k(gate, up, p, bits.view(mx.float32))


def masked_softmax(scores: mx.array, keep: mx.array) -> mx.array:
    """Softmax over the last axis of the entries where ``keep`` (bool, broadcast) is True;
    the others get exactly 0 (a row with none kept: all 0)."""
    p, bits = _softmax_exp_k(scores, keep)
    return _softmax_finish_k(p, bits.view(mx.float32))
