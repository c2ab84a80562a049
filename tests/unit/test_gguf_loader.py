"""GGUF loading against a tiny random llama GGUF written on the fly (see tiny_gguf.py)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from mlx_lm.models import llama

from app.models.gguf.loader import load_gguf_model, read_header
from app.models.gguf.tokenizer import build_hf_tokenizer
from app.models.loaded import LoadedLanguageModel
from tests.unit.tiny_gguf import (
    CONTEXT,
    FFN,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    TinyGGUF,
    write_tiny_gguf,
)

PROMPT = [1, 40, 120, 200, 7, 300, 2, 150, 151, 99]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def f32(tiny: TinyGGUF) -> LoadedLanguageModel:
    return load_gguf_model(tiny.path, weights="float32")


@pytest.fixture(scope="module")
def quant(tiny: TinyGGUF) -> LoadedLanguageModel:
    return load_gguf_model(tiny.path, weights="quantized")


def logits(model: nn.Module, ids: list[int] = PROMPT) -> np.ndarray:
    out = model(mx.array([ids]))
    return np.array(out.astype(mx.float32))[0]


def reference_model(tiny: TinyGGUF, *, tied: bool = True) -> nn.Module:
    """mlx-lm llama in Hugging Face layout (rotate-half RoPE) from gguf-py dequantized weights."""
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        intermediate_size=FFN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rms_norm_eps=1e-5,
        vocab_size=tiny.hf_weights["model.embed_tokens.weight"].shape[0],
        rope_theta=10000.0,
        rope_traditional=False,
        tie_word_embeddings=tied,
        max_position_embeddings=CONTEXT,
    )
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in tiny.hf_weights.items()], strict=True)
    return model


# --- tokenizer ---------------------------------------------------------------------


def test_specials_encode_as_single_ids(f32: LoadedLanguageModel) -> None:
    tok = f32.tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    vocab = tok.get_vocab()
    assert ids[0] == vocab["<|im_start|>"] == 1
    assert ids[-1] == vocab["<|im_end|>"] == 2
    assert tok.convert_ids_to_tokens(ids[:1]) == ["<|im_start|>"]


@pytest.mark.parametrize(
    "text",
    [
        "Hello world! How are you today?",
        "The capital of France is Paris.\n\n  Indented 0123456789",
        "héllo wörld ✓ 日本 emoji 🐉",
        "<|im_start|>system\nBe brief.<|im_end|>\n",
    ],
)
def test_encode_matches_source_tokenizer_and_round_trips(
    f32: LoadedLanguageModel, tiny: TinyGGUF, text: str
) -> None:
    ids = f32.tokenizer.encode(text, add_special_tokens=False)
    assert ids == tiny.tokenizer.encode(text).ids
    assert f32.tokenizer.decode(ids) == text
    detok = f32.tokenizer.detokenizer
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    assert detok.text == text


def test_chat_template_renders(f32: LoadedLanguageModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = f32.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = f32.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert ids[0] == 1 and ids.count(1) == 2 and ids.count(2) == 1
    assert f32.chat_template == f32.tokenizer.chat_template


def test_eos_ids_include_end_of_turn_control_tokens(f32: LoadedLanguageModel) -> None:
    assert f32.eos_token_ids == {0, 2}  # eos <|im_end|> + control <|endoftext|>
    assert set(f32.tokenizer.eos_token_ids) == {0, 2}
    assert f32.model_config["eos_token_id"] == [0, 2]


def test_add_bos_and_unknown_tokenizer_model() -> None:
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["<s>", "a", "b", "ab"],
        "tokenizer.ggml.token_type": [3, 1, 1, 1],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    hf = build_hf_tokenizer(meta)
    assert hf.encode("abab") == [0, 3, 3]
    assert hf.encode("abab", add_special_tokens=False) == [3, 3]
    with pytest.raises(ValueError, match=r"x\.gguf.*'rwkv' is not supported.*'gpt2'.*'llama'"):
        build_hf_tokenizer({**meta, "tokenizer.ggml.model": "rwkv"}, source="x.gguf")


# --- model -------------------------------------------------------------------------


def test_config_and_labels(f32: LoadedLanguageModel, quant: LoadedLanguageModel) -> None:
    cfg = f32.model_config
    assert cfg["model_type"] == "llama" and cfg["rope_traditional"] is True
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_key_value_heads"]) == (64, 2, 2)
    assert cfg["tie_word_embeddings"] is True and "quantization" not in cfg
    assert f32.context_length == CONTEXT
    assert (f32.source_quantization, f32.weight_dtype) == ("q4_1", "float32")
    assert quant.weight_dtype == "q4/q8"
    q = quant.model_config["quantization"]
    assert (q["bits"], q["group_size"]) == (4, 32)
    assert q["model.embed_tokens"]["bits"] == 8
    assert q["model.layers.1.self_attn.v_proj"] is False  # stored as F16


def test_quantized_layers_match_the_file(quant: LoadedLanguageModel, tiny: TinyGGUF) -> None:
    inner = quant.model.model
    assert isinstance(inner.embed_tokens, nn.QuantizedEmbedding) and inner.embed_tokens.bits == 8
    attn = inner.layers[0].self_attn
    assert isinstance(attn.q_proj, nn.QuantizedLinear) and attn.q_proj.bits == 4
    assert isinstance(inner.layers[0].mlp.down_proj, nn.QuantizedLinear)
    assert inner.layers[0].mlp.down_proj.bits == 8
    assert type(inner.layers[1].self_attn.v_proj) is nn.Linear
    assert read_header(tiny.path)[1] == tiny.types


def test_float32_logits_match_independent_reference(
    f32: LoadedLanguageModel, tiny: TinyGGUF
) -> None:
    got, want = logits(f32.model), logits(reference_model(tiny))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_quantized_logits_close_to_float32(
    f32: LoadedLanguageModel, quant: LoadedLanguageModel
) -> None:
    np.testing.assert_allclose(logits(quant.model), logits(f32.model), atol=2e-3, rtol=1e-3)


def test_float16_and_untied_output(tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "untied.gguf", tied=False, seed=1)
    lm = load_gguf_model(tiny.path, weights="float16")
    assert lm.model_config["tie_word_embeddings"] is False and lm.weight_dtype == "float16"
    assert lm.model.lm_head.weight.dtype == mx.float16
    want = logits(reference_model(tiny, tied=False))
    np.testing.assert_allclose(logits(lm.model), want, atol=0.05, rtol=0.02)


# --- errors ------------------------------------------------------------------------


def test_unsupported_architecture_is_a_clear_error(tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "other.gguf", arch="phi2")
    with pytest.raises(ValueError, match=r"other\.gguf.*architecture 'phi2' is not supported "
                                         r"\(supported: gemma3, llama, phi3, qwen2, qwen3\)"):
        load_gguf_model(tiny.path)


def test_types_mx_load_cannot_read_take_the_dequantizing_path(tmp_path: Path) -> None:
    """Q5_0 (like K-quants) is read wrongly by mx.load; it is dequantized with gguf-py."""
    tiny = write_tiny_gguf(
        tmp_path / "q5.gguf", seed=2, override={"ffn_up": Q.Q5_0, "attn_v": Q.Q5_1}
    )
    cache = tmp_path / "cache"
    lm = load_gguf_model(tiny.path, weights="float32", cache_dir=cache)
    assert lm.model_config["rope_traditional"] is True  # same llama config as the mx.load path
    assert list((cache / "converted").glob("*/model.safetensors"))
    np.testing.assert_allclose(logits(lm.model), logits(reference_model(tiny)), atol=2e-4,
                               rtol=1e-4)  # fmt: skip
    quant = load_gguf_model(tiny.path, weights="quantized", cache_dir=cache)
    up = quant.model.model.layers[0].mlp.up_proj
    assert isinstance(up, nn.QuantizedLinear) and up.bits == 5  # exact Q5_0 repack
    np.testing.assert_allclose(logits(quant.model), logits(lm.model), atol=1e-4, rtol=1e-4)


def test_unreadable_tensor_types_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ints.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 32), np.int8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"ints\.gguf.*unsupported GGUF tensor types: I8 "
                                         r"\(1 tensors, e\.g\. blk\.0\.attn_q"):  # fmt: skip
        load_gguf_model(path)


def test_bad_weights_choice_and_not_gguf(tiny: TinyGGUF, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weights must be one of"):
        load_gguf_model(tiny.path, weights="int4")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="bad magic"):
        load_gguf_model(bogus)
