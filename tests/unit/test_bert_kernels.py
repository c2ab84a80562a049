"""The arithmetic-only CPU kernels of app.models.sentence.bert agree with MLX's exact ones."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from app.kernels.fast_math import exp_fast
from app.kernels.shape_compile import PerShapeCompiled
from app.models.sentence.bert import (
    gelu_folded,
    gelu_rational,
    gelu_rational_fused,
    masked_softmax_cpu,
)


def test_gelu_variants_match_exact_gelu() -> None:
    # Float32 rounding of the final sum grows with |x| (~1.5e-7 * |x|); hidden states of
    # real encoders stay far below |x| = 60.
    x = mx.concatenate([mx.linspace(-60.0, 60.0, 24001), mx.array([-5.66, 0.0, 5.66])])
    exact = np.array(nn.gelu(x))
    bound = 2e-6 + 2e-7 * np.abs(np.array(x))
    for fn in (gelu_rational, gelu_folded, gelu_rational_fused):
        got = np.array(fn(x))
        assert np.all(np.isfinite(got))
        assert np.all(np.abs(got - exact) <= bound), fn
        small = np.abs(np.array(x)) < 10
        assert np.abs(got - exact)[small].max() < 1.5e-6


def test_gelu_fused_any_shape() -> None:
    for shape in ((3,), (2, 5, 7), (1, 1, 1536), (2, 5, 7)):
        x = mx.random.normal(shape) * 4
        np.testing.assert_allclose(
            np.array(gelu_rational_fused(x)), np.array(nn.gelu(x)), atol=5e-6, rtol=1e-6
        )


def test_per_shape_compile_bounds_its_traces() -> None:
    traces = []

    def double_plus_one(x: mx.array) -> mx.array:
        traces.append(x.shape)
        return x * 2 + 1

    fn = PerShapeCompiled(double_plus_one, capacity=2)
    for n in (3, 4, 3, 4):
        np.testing.assert_array_equal(np.array(fn(mx.ones((n,)))), np.full((n,), 3.0))
    assert traces == [(3,), (4,)]  # one trace per shape, reused
    np.testing.assert_array_equal(np.array(fn(mx.ones((5,)))), np.full((5,), 3.0))
    assert fn.traced_signatures == 1  # past capacity: traces dropped, the new one kept
    fn(mx.ones((3,)))
    assert traces[-1] == (3,)  # (3,) was dropped with the rest and traced again


def test_exp_fast_matches_exp() -> None:
    x = mx.linspace(-80.0, 0.0, 10001)
    np.testing.assert_allclose(np.array(exp_fast(x)), np.array(mx.exp(x)), rtol=1e-6, atol=1e-30)


def test_masked_softmax_matches_softmax_and_ignores_masked_keys() -> None:
    lengths = [7, 3, 1, 5]
    keep = mx.array(
        [[1.0 if j < n else 0.0 for j in range(7)] for n in lengths]
    )[:, None, None, :]
    for shape, spread in (((4, 2, 7, 7), 1.0), ((4, 3, 5, 7), 40.0)):
        scores = mx.random.normal(shape) * spread
        got = np.array(masked_softmax_cpu(scores, keep))
        want = np.array(mx.softmax(scores + (keep - 1.0) * 1e9, axis=-1))
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)
        for row, n in enumerate(lengths):
            assert np.all(got[row, ..., n:] == 0.0)
            np.testing.assert_allclose(got[row].sum(axis=-1), 1.0, rtol=1e-6)
