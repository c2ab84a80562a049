"""The fast GGUF reader and the exact MLX repacking, against gguf-py and llama.cpp's formulas."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from app.models.gguf.reader import GGUFFile
from app.models.gguf.repack import AFFINE, affine_codes, mlx_bits, pack_bits
from tests.unit.gguf_reference import read_reference
from tests.unit.tiny_gemma_gguf import TinyGemma, random_kquant, write_tiny_gemma

Q = GGMLQuantizationType


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGemma:
    return write_tiny_gemma(tmp_path_factory.mktemp("dq") / "tiny.gguf", seed=5)


def test_reader_matches_gguf_py(tiny: TinyGemma) -> None:
    meta, tensors = read_reference(tiny.path)
    with GGUFFile(tiny.path) as gf:
        for key, value in meta.items():
            got = gf.metadata[key]
            if isinstance(value, float) or (isinstance(value, list) and value
                                            and isinstance(value[0], float)):  # fmt: skip
                np.testing.assert_allclose(got, value, rtol=1e-7)
            else:
                assert got == value, key
        assert set(gf.metadata) == set(meta)
        assert [t.name for t in gf.tensors] == list(tensors)
        for info in gf.tensors:
            got = gf.dequantize(info)
            assert got.dtype == np.float32 and got.shape == tensors[info.name].shape
            np.testing.assert_array_equal(got, tensors[info.name], err_msg=info.name)


def _scale_min_k4(j: int, q: np.ndarray) -> tuple[int, int]:
    """llama.cpp ``get_scale_min_k4``."""
    if j < 4:
        return int(q[j] & 63), int(q[j + 4] & 63)
    return (
        int((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)),
        int((q[j + 4] >> 4) | ((q[j] >> 6) << 4)),
    )


def _q4_k_reference(block: np.ndarray) -> np.ndarray:
    """llama.cpp ``dequantize_row_q4_K`` for one 144-byte block, written out."""
    d = float(block[0:2].view(np.float16)[0])
    dmin = float(block[2:4].view(np.float16)[0])
    scales, qs = block[4:16], block[16:144]
    out = []
    for j in range(4):  # 64 values per step: low nibbles, then high nibbles
        sc1, m1 = _scale_min_k4(2 * j, scales)
        sc2, m2 = _scale_min_k4(2 * j + 1, scales)
        chunk = qs[32 * j : 32 * j + 32]
        out += [d * sc1 * (v & 0xF) - dmin * m1 for v in chunk]
        out += [d * sc2 * (v >> 4) - dmin * m2 for v in chunk]
    return np.array(out)


def test_q4_k_dequantization_follows_llama_cpp(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = random_kquant(rng, 3, 512, Q.Q4_K)
    path = tmp_path / "q4k.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", data, raw_shape=data.shape, raw_dtype=Q.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(path) as gf:
        (info,) = gf.tensors
        assert info.shape == (3, 512) and info.kind == Q.Q4_K
        got = gf.dequantize(info)
    want = np.stack([np.concatenate([_q4_k_reference(b) for b in row.reshape(-1, 144)])
                     for row in data])  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_bits_is_mlx_layout(bits: int) -> None:
    w = mx.array(np.random.default_rng(bits).normal(size=(3, 128)).astype(np.float32))
    packed, scales, biases = mx.quantize(w, group_size=32, bits=bits)
    back = np.array(mx.dequantize(packed, scales, biases, group_size=32, bits=bits))
    s = np.repeat(np.array(scales), 32, axis=1)
    b = np.repeat(np.array(biases), 32, axis=1)
    codes = np.rint((back - b) / s).astype(np.int64)
    np.testing.assert_array_equal(pack_bits(codes, bits), np.array(packed))


def _blocks(kind: Q, rng: np.random.Generator, rows: int = 5, cols: int = 512) -> np.ndarray:
    if kind in (Q.Q4_K, Q.Q5_K):
        return random_kquant(rng, rows, cols, kind)
    return quantize(rng.normal(0, 0.3, (rows, cols)).astype(np.float32), kind)


@pytest.mark.parametrize("kind", sorted(AFFINE, key=lambda k: k.name))
def test_affine_formats_repack_exactly(kind: Q) -> None:
    raw = _blocks(kind, np.random.default_rng(7))
    want = dequantize(raw, kind)
    packed = affine_codes(raw, kind, chunk=2)  # several chunks
    assert packed.bits == mlx_bits(kind) and packed.scales.shape == (5, 512 // 32)
    got = mx.dequantize(
        mx.array(packed.weight), mx.array(packed.scales), mx.array(packed.biases),
        group_size=32, bits=packed.bits,
    )  # fmt: skip
    np.testing.assert_allclose(np.array(got), want, rtol=0, atol=1e-6)


def test_widths_for_other_types() -> None:
    assert mlx_bits(Q.Q6_K) == 8 and mlx_bits(Q.IQ4_XS) == 8
    assert mlx_bits(Q.F16) is None and mlx_bits(Q.F32) is None


def test_truncated_file_is_a_clear_error(tiny: TinyGemma, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.path.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="past the end"):
        GGUFFile(cut)
