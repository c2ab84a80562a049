"""app.kernels.rope: table RoPE gives mx.fast.rope's values and builds its tables once."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models.cache import BatchKVCache

from app.kernels.compile import optimize_model
from app.kernels.rope import TableRoPE, table_rope
from app.models.mlx_dir import load_mlx_dir


def _heads(batch: int, length: int, heads: int = 3, dim: int = 16) -> mx.array:
    """(B, heads, L, D) as the blocks pass it: a transposed view of (B, L, heads, D)."""
    return mx.random.normal((batch, length, heads, dim)).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("traditional", [True, False])
@pytest.mark.parametrize("offset", [0, 7, "array", "rows"])
def test_matches_mx_fast_rope(traditional: bool, offset) -> None:
    rope = nn.RoPE(16, traditional=traditional, base=100000.0, scale=0.5)
    x = _heads(3, 21)
    if offset == "array":
        offset = mx.array(5, dtype=mx.int32)
    elif offset == "rows":  # left-padded batch: a row per offset, negative ones included
        offset = mx.array([-3, 0, 11], dtype=mx.int32)
    want = rope(x, offset=offset)
    got = table_rope(rope)(x, offset)
    assert got.shape == want.shape
    assert mx.allclose(got, want, atol=2e-5, rtol=1e-5).item()


def test_tables_are_built_once_per_positions() -> None:
    table = table_rope(nn.RoPE(16, traditional=True))
    x = _heads(2, 9)
    offsets = mx.array([0, 4], dtype=mx.int32)
    first = table._table((0, 4), 9, mx.float32)
    table(x, offsets)
    table(_heads(2, 9, heads=1), offsets)  # the keys of the same layer
    assert len(table._tables) == 1 and table._table((0, 4), 9, mx.float32)[0] is first[0]
    table(x, mx.array([9, 13], dtype=mx.int32))  # the next chunk
    assert len(table._tables) == 2


def test_only_plain_full_width_rope() -> None:
    assert isinstance(table_rope(nn.RoPE(16)), TableRoPE)

    class Scaled(nn.RoPE):
        pass

    assert table_rope(Scaled(16)) is None
    assert table_rope(object()) is None


def test_left_padded_prefill_matches_the_stock_model(tiny_llama_dir) -> None:
    plain, fast = load_mlx_dir(tiny_llama_dir).model, load_mlx_dir(tiny_llama_dir).model
    optimize_model(fast)
    tokens = mx.random.randint(0, 100, (2, 24))
    outs = []
    for model in (plain, fast):
        cache = [BatchKVCache([0, 5]) for _ in model.layers]
        outs.append(model(tokens, cache=cache))
    assert mx.allclose(outs[0][0], outs[1][0], atol=1e-4, rtol=1e-4).item()
    assert mx.allclose(outs[0][1, 5:], outs[1][1, 5:], atol=1e-4, rtol=1e-4).item()
