"""Phi-3 GGUFs: config, logits against llama.cpp's graph, quantized rebuild, bad files."""

from __future__ import annotations

from pathlib import Path

import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGUFWriter

from app.models.gguf.loader import load_gguf_model
from app.models.loaded import LoadedLanguageModel
from tests.unit.gguf_reference import phi3_logits, read_reference
from tests.unit.test_gguf_qwen import PROMPT, assert_matches_graph, logits
from tests.unit.tiny_phi3_gguf import HEAD_DIM, LAYERS, TinyPhi3, write_tiny_phi3


@pytest.fixture(scope="module", params=["plain", "longrope"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyPhi3:
    flavour = request.param
    return write_tiny_phi3(tmp_path_factory.mktemp(flavour) / f"phi3-{flavour}.gguf",
                           flavour=flavour)


@pytest.fixture(scope="module")
def f32(tiny: TinyPhi3) -> LoadedLanguageModel:
    return load_gguf_model(tiny.path, weights="float32", cache_dir=tiny.path.parent / "cache")


def test_the_file_mixes_quant_types(tiny: TinyPhi3) -> None:
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= set(tiny.types.values())
    assert "blk.0.attn_qkv.weight" in tiny.types and "blk.0.ffn_gate.weight" not in tiny.types


def test_config_comes_from_gguf(tiny: TinyPhi3, f32: LoadedLanguageModel) -> None:
    cfg = f32.model_config
    assert cfg["model_type"] == "phi3" and cfg["num_hidden_layers"] == LAYERS
    assert cfg["num_key_value_heads"] == 2 and cfg["rms_norm_eps"] == 1e-5
    assert cfg["partial_rotary_factor"] * HEAD_DIM == tiny.rope_dims
    assert cfg["tie_word_embeddings"] is (tiny.flavour == "longrope")
    attn = f32.model.model.layers[0].self_attn
    if tiny.flavour == "longrope":
        assert cfg["rope_scaling"]["type"] == "longrope"
        assert len(cfg["rope_scaling"]["long_factor"]) == tiny.rope_dims // 2
        assert (cfg["max_position_embeddings"], cfg["original_max_position_embeddings"]) == (
            2048, 256)
        assert type(attn.rope).__name__ == "SuScaledRoPE"
    else:
        assert cfg["rope_scaling"] is None and attn.rope.dims == HEAD_DIM
    assert f32.weight_dtype == "float32" and f32.source_quantization == "q5_0"


def test_float32_logits_match_llama_cpp_graph(tiny: TinyPhi3, f32: LoadedLanguageModel) -> None:
    """The q/k/v cut of the fused qkv (grouped-query sizes), the gate/up halves of the
    fused ffn_up, partial rotary dims, the long rope factors and the attention factor all
    have to be right for this to hold."""
    assert_matches_graph(f32.model, tiny.path, phi3_logits)


def test_the_reference_sees_a_wrong_split(tiny: TinyPhi3, f32: LoadedLanguageModel) -> None:
    """Swapping the gate and up halves of one layer moves the logits far beyond the
    tolerance above, so the comparison can tell."""
    meta, tensors = read_reference(tiny.path)
    up = tensors["blk.0.ffn_up.weight"]
    tensors["blk.0.ffn_up.weight"] = np.concatenate(np.split(up, 2)[::-1])
    assert np.abs(phi3_logits(meta, tensors, PROMPT) - logits(f32.model)).max() > 1e-2


def test_quantized_mode_keeps_the_files_blocks(tiny: TinyPhi3, f32: LoadedLanguageModel) -> None:
    quant = load_gguf_model(tiny.path, weights="quantized", cache_dir=tiny.path.parent / "cache")
    layers = quant.model.model.layers
    assert isinstance(layers[0].self_attn.qkv_proj, nn.QuantizedLinear)
    assert layers[0].self_attn.qkv_proj.bits == 5 and layers[1].mlp.gate_up_proj.bits == 8
    assert layers[0].mlp.down_proj.bits == 4  # Q4_K: exact
    # Only the 8-bit Q6_K fallback of layer 1's ffn_down differs.
    np.testing.assert_allclose(logits(quant.model), logits(f32.model), atol=1e-1, rtol=1e-2)


def _rewrite(src: Path, dst: Path, *, drop: str = "", meta: dict | None = None) -> Path:
    """A copy of ``src`` without tensor ``drop`` and with float metadata ``meta`` replaced."""
    meta_in, tensors = read_reference(src)
    w = GGUFWriter(str(dst), "phi3")
    for key, value in {**meta_in, **(meta or {})}.items():
        if key == "general.architecture":
            continue
        if isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif key == "tokenizer.ggml.token_type":
            w.add_array(key, [int(v) for v in value])
        else:
            w.add_array(key, value)
    for name, value in tensors.items():
        if name != drop:
            w.add_tensor(name, value.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_inconsistent_rope_scaling_is_refused(tmp_path: Path) -> None:
    tiny = write_tiny_phi3(tmp_path / "long.gguf", flavour="longrope")
    half = _rewrite(tiny.path, tmp_path / "half.gguf", drop="rope_factors_short.weight")
    with pytest.raises(ValueError, match="both rope_factors_long and rope_factors_short"):
        load_gguf_model(half, weights="float32")
    factor = _rewrite(tiny.path, tmp_path / "factor.gguf",
                      meta={"phi3.rope.scaling.attn_factor": 1.0})
    with pytest.raises(ValueError, match="attention factor 1.0 is not the longrope one"):
        load_gguf_model(factor, weights="float32")
