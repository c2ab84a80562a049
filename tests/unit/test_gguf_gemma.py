"""Gemma 3 K-quant GGUF: dequantizing loader, SPM tokenizer, conversion cache, requantization."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from app.models.gguf import convert as gguf_convert
from app.models.gguf.convert import file_sha256
from app.models.gguf.loader import load_gguf_model
from app.models.loaded import LoadedLanguageModel
from tests.unit.gguf_reference import gemma3_logits, read_reference, spm_tokenize
from tests.unit.tiny_gemma_gguf import HEAD_DIM, LAYERS, WINDOW, TinyGemma, write_tiny_gemma

PROMPT = [2, 300, 280, 301, 350, 290, 6, 310, 270, 380, 4, 320, 330, 10, 299]  # 15 > WINDOW


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGemma:
    return write_tiny_gemma(tmp_path_factory.mktemp("gemma") / "tiny-gemma.gguf")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def f32(tiny: TinyGemma, cache: Path) -> LoadedLanguageModel:
    return load_gguf_model(tiny.path, weights="float32", cache_dir=cache)


@pytest.fixture(scope="module")
def quant(tiny: TinyGemma, cache: Path, f32: LoadedLanguageModel) -> LoadedLanguageModel:
    return load_gguf_model(tiny.path, weights="quantized", cache_dir=cache)


@pytest.fixture(scope="module")
def reference(tiny: TinyGemma) -> tuple[dict, dict]:
    return read_reference(tiny.path)


def logits(model: nn.Module, ids: list[int] = PROMPT) -> np.ndarray:
    return np.array(model(mx.array([ids])).astype(mx.float32))[0]


def test_the_file_holds_k_quants(tiny: TinyGemma) -> None:
    assert {"Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q8_0", "Q4_0", "Q4_1", "F16", "F32"} <= set(
        tiny.types.values()
    )


def test_config_comes_from_gguf_and_family_defaults(f32: LoadedLanguageModel) -> None:
    cfg = f32.model_config
    assert cfg["model_type"] == "gemma3_text" and cfg["num_hidden_layers"] == LAYERS
    assert (cfg["head_dim"], cfg["num_key_value_heads"], cfg["sliding_window"]) == (64, 2, WINDOW)
    assert cfg["query_pre_attn_scalar"] == HEAD_DIM and cfg["sliding_window_pattern"] == 6
    assert cfg["rope_local_base_freq"] == 10000.0 and cfg["rope_theta"] == 1_000_000.0
    assert cfg["rms_norm_eps"] == 1e-6 and cfg["tie_word_embeddings"] is True
    assert (f32.source_quantization, f32.weight_dtype) == ("q4_k_m", "float32")
    assert f32.context_length == 128 and f32.chat_template is None
    assert f32.eos_token_ids == {1, 5}  # </s> and the <end_of_turn> control token


def test_float32_logits_match_llama_cpp_graph(
    f32: LoadedLanguageModel, reference: tuple[dict, dict]
) -> None:
    """Norm shift, unpermuted q/k, local RoPE base, sliding window (4 < 15 tokens), global
    layer 6, query scale and tied head all have to be right for this to hold."""
    meta, tensors = reference
    want = gemma3_logits(meta, tensors, PROMPT)
    got = logits(f32.model)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_quantized_mode_rebuilds_the_files_quantization(
    quant: LoadedLanguageModel, f32: LoadedLanguageModel
) -> None:
    layer = quant.model.model.layers[0]
    assert isinstance(layer.self_attn.o_proj, nn.QuantizedLinear)
    assert layer.self_attn.o_proj.bits == 4 and layer.self_attn.o_proj.group_size == 32  # Q4_K
    assert layer.mlp.down_proj.bits == 8  # Q6_K: 16-value sub-blocks -> 8-bit fallback
    assert quant.model.model.layers[1].mlp.down_proj.bits == 5  # Q5_K
    assert layer.self_attn.q_proj.bits == 5 and layer.mlp.up_proj.bits == 4  # Q5_0, Q4_0
    assert type(layer.self_attn.v_proj) is nn.Linear  # F16 stays dense
    assert isinstance(quant.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert quant.weight_dtype == "q4/q5/q8"
    # Exact where the format is affine per 32 values: same weights as the float32 load.
    dense = f32.model.model.layers
    for i in range(LAYERS):
        for name in ("self_attn.o_proj", "self_attn.q_proj", "mlp.up_proj", "self_attn.k_proj"):
            q_mod = quant.model.model.layers[i]
            for part in name.split("."):
                q_mod = getattr(q_mod, part)
            d_mod = dense[i]
            for part in name.split("."):
                d_mod = getattr(d_mod, part)
            back = mx.dequantize(q_mod.weight, q_mod.scales, q_mod.biases, 32, q_mod.bits)
            np.testing.assert_allclose(np.array(back), np.array(d_mod.weight), atol=1e-6)
    # Only the 8-bit Q6_K fallback differs (logits span about +-25).
    np.testing.assert_allclose(logits(quant.model), logits(f32.model), atol=5e-2, rtol=1e-2)


def test_conversion_is_cached_by_file_hash(
    tiny: TinyGemma, cache: Path, f32: LoadedLanguageModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = cache / "converted" / file_sha256(tiny.path)
    assert (folder / "config.json").is_file() and (folder / ".complete").is_file()
    assert (folder / "tokenizer.json").is_file() and (folder / "gguf_source.json").is_file()

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "convert_gguf", boom)
    monkeypatch.setattr(gguf_convert, "file_sha256", boom)  # the digest memo answers
    again = load_gguf_model(tiny.path, weights="float32", cache_dir=cache)
    np.testing.assert_array_equal(logits(again.model), logits(f32.model))


def test_without_cache_dir_it_converts_in_a_temporary_directory(
    tiny: TinyGemma, f32: LoadedLanguageModel
) -> None:
    lm = load_gguf_model(tiny.path, weights="float32")
    np.testing.assert_array_equal(logits(lm.model), logits(f32.model))


# --- tokenizer ---------------------------------------------------------------------

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today?",
    "héllo wörld 0123 numbers",
    "unseen chars: 日本 🐉 ✓ and Zebra",
    "What is the capital of France?",
    "double  spaces   and\ttabs",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_llama_cpp_and_sentencepiece(
    f32: LoadedLanguageModel, tiny: TinyGemma, reference: tuple[dict, dict], text: str
) -> None:
    meta = reference[0]
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    ids = f32.tokenizer.encode(text, add_special_tokens=False)
    assert ids == spm_tokenize(text, tokens, scores, prefix=False)
    if "  " not in text:  # sentencepiece's BPE also splits words at spaces
        assert ids == tiny.sp.encode(text)
    assert f32.tokenizer.decode(ids) == text
    detok = f32.tokenizer.detokenizer
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    assert detok.text == text


def test_bos_specials_and_user_defined_tokens(f32: LoadedLanguageModel) -> None:
    tok = f32.tokenizer
    ids = tok.encode("<start_of_turn>user\nHi<end_of_turn>\n\n")
    assert ids[:3] == [2, 4, tok.get_vocab()["user"]]  # BOS added, control token is one id
    assert ids[3] == 6 and ids[-2:] == [5, 7]  # "\n" and "\n\n" are single user-defined ids
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHi\n\n"
    assert type(tok.detokenizer).__name__ == "SPMStreamingDetokenizer"


# --- family defaults -----------------------------------------------------------------


def _meta(**extra: object) -> dict:
    base = {"embedding_length": 5376, "attention.head_count": 32, "block_count": 62,
            "feed_forward_length": 21504, "attention.key_length": 128}  # fmt: skip
    return {f"gemma3.{k}": v for k, v in {**base, **extra}.items()}


def test_gemma3_config_rules() -> None:
    from app.models.gguf.arch import gemma3_config

    weights = {"model.embed_tokens.weight": np.zeros((8, 1))}
    big = gemma3_config(_meta(), weights, Path("x.gguf"))
    assert big["query_pre_attn_scalar"] == 168  # 27B: hidden / heads, as llama.cpp
    assert gemma3_config(_meta(block_count=34), weights, Path("x"))["query_pre_attn_scalar"] == 128
    scaled = gemma3_config(
        _meta(**{"attention.scale": 0.0625, "rope.scaling.type": "linear",
                 "rope.scaling.factor": 8.0, "rope.freq_base_swa": 5000.0,
                 "attention.sliding_window_pattern": [True, True, False] * 20 + [True, True]}),
        weights, Path("x"),
    )  # fmt: skip
    assert scaled["query_pre_attn_scalar"] == 256 and scaled["rope_local_base_freq"] == 5000.0
    assert scaled["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    assert scaled["sliding_window_pattern"] == 3
    with pytest.raises(ValueError, match="not periodic"):
        gemma3_config(_meta(**{"attention.sliding_window_pattern": [True, False] + [True] * 60}),
                      weights, Path("x"))  # fmt: skip
    with pytest.raises(ValueError, match="x.gguf: missing GGUF metadata gemma3.block_count"):
        gemma3_config({"gemma3.embedding_length": 8, "gemma3.attention.head_count": 1},
                      weights, Path("x.gguf"))  # fmt: skip
