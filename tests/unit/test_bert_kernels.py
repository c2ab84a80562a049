"""The arithmetic-only CPU kernels of app.models.bert agree with MLX's exact ones."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from app.models.bert import exp_fast, gelu_folded, gelu_rational, gelu_rational_fused


def test_gelu_variants_match_exact_gelu() -> None:
    # Beyond the clip point (|x| > 5.66) the error grows as ~6e-8 * |x|; hidden states of
    # real encoders stay far below |x| = 60.
    x = mx.concatenate([mx.linspace(-60.0, 60.0, 24001), mx.array([-5.66, 0.0, 5.66])])
    exact = np.array(nn.gelu(x))
    for fn in (gelu_rational, gelu_folded, gelu_rational_fused):
        got = np.array(fn(x))
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, exact, atol=5e-6, rtol=1e-6)


def test_gelu_fused_any_shape() -> None:
    for shape in ((3,), (2, 5, 7), (1, 1, 1536)):
        x = mx.random.normal(shape) * 4
        np.testing.assert_allclose(
            np.array(gelu_rational_fused(x)), np.array(nn.gelu(x)), atol=5e-6, rtol=1e-6
        )


def test_exp_fast_matches_exp() -> None:
    x = mx.linspace(-80.0, 0.0, 10001)
    np.testing.assert_allclose(np.array(exp_fast(x)), np.array(mx.exp(x)), rtol=1e-6, atol=1e-30)
