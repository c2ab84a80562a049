"""save_mlx_dir / load_mlx_dir round trips through stock ``mlx_lm.load``."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load as mlx_lm_load
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler

from app.models.gguf.loader import load_gguf_model
from app.models.loaded import LoadedLanguageModel
from app.models.mlx_dir import load_mlx_dir, save_mlx_dir
from tests.unit.tiny_gguf import TinyGGUF, write_tiny_gguf

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=3)


@pytest.fixture(scope="module")
def saved(
    tiny: TinyGGUF, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[LoadedLanguageModel, Path]]:
    out = {}
    for weights in ("float32", "quantized"):
        lm = load_gguf_model(tiny.path, weights=weights)
        target = tmp_path_factory.mktemp(f"mlx_{weights}")
        save_mlx_dir(lm, target)
        out[weights] = (lm, target)
    return out


def greedy(model: nn.Module, tokenizer: object, n: int = 12) -> list[int]:
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    sampler = make_sampler(0.0)
    gen = stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=sampler)
    return [r.token for r in gen]


def logits(model: nn.Module) -> np.ndarray:
    return np.array(model(mx.array([[1, 50, 60, 70, 2, 80]])).astype(mx.float32))


@pytest.mark.parametrize("weights", ["float32", "quantized"])
def test_mlx_lm_load_gives_identical_greedy_tokens(saved: dict, weights: str) -> None:
    lm, path = saved[weights]
    model, tokenizer = mlx_lm_load(str(path))
    want = greedy(lm.model, lm.tokenizer)
    assert len(want) == 12 and len(set(want)) > 6  # a varied sequence, not one repeated id
    assert greedy(model, tokenizer) == want
    np.testing.assert_array_equal(logits(model), logits(lm.model))
    assert set(tokenizer.eos_token_ids) == lm.eos_token_ids == {0, 2}
    assert type(tokenizer.detokenizer).__name__ == "BPEStreamingDetokenizer"


def test_saved_files(saved: dict) -> None:
    lm, path = saved["quantized"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_traditional"] is True
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    assert config["quantization_config"] == config["quantization"]
    model, _ = mlx_lm_load(str(path))
    assert model.model.embed_tokens.bits == 8
    assert model.model.layers[0].self_attn.q_proj.bits == 4
    assert (path / "tokenizer.json").is_file()
    assert "<|im_start|>" in (path / "chat_template.jinja").read_text()


def test_saved_tokenizer_matches(saved: dict) -> None:
    lm, path = saved["float32"]
    _, tokenizer = mlx_lm_load(str(path))
    text = "<|im_start|>user\nHello world, 0123 héllo<|im_end|>\n"
    assert tokenizer.encode(text, add_special_tokens=False) == lm.tokenizer.encode(
        text, add_special_tokens=False
    )
    assert tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=False
    ) == lm.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)


def test_load_mlx_dir_dequantizes_or_keeps(saved: dict) -> None:
    lm_q, path = saved["quantized"]
    dense = load_mlx_dir(path, weights="float32")
    assert dense.weight_dtype == "float32" and dense.source_quantization == "q4/q8"
    assert "quantization" not in dense.model_config
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in dense.model.named_modules())
    np.testing.assert_allclose(logits(dense.model), logits(lm_q.model), atol=2e-3, rtol=1e-3)

    kept = load_mlx_dir(path, weights="quantized")
    assert kept.weight_dtype == "q4/q8"
    assert isinstance(kept.model.model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    assert greedy(kept.model, kept.tokenizer) == greedy(lm_q.model, lm_q.tokenizer)
    assert kept.eos_token_ids == {0, 2} and kept.chat_template == lm_q.chat_template
    assert kept.context_length == lm_q.context_length


def test_load_mlx_dir_float32_round_trip(saved: dict) -> None:
    lm, path = saved["float32"]
    again = load_mlx_dir(path, weights="auto")
    assert again.source_quantization == "f32"
    np.testing.assert_array_equal(logits(again.model), logits(lm.model))


def test_save_as_float16(tiny: TinyGGUF, tmp_path: Path) -> None:
    lm = load_gguf_model(tiny.path, weights="float32")
    save_mlx_dir(lm, tmp_path, dtype="float16")
    model, _ = mlx_lm_load(str(tmp_path))
    assert model.model.embed_tokens.weight.dtype == mx.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        save_mlx_dir(lm, tmp_path, dtype="int8")


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        load_mlx_dir(tmp_path / "nope")
