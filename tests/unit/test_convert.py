"""``python -m app convert``: output that stock ``mlx_lm.load`` opens and decodes identically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm import load as mlx_lm_load
from mlx_lm import stream_generate
from mlx_lm.sample_utils import make_sampler

from app.config import Settings
from app.lifecycle.convert import ConvertError, convert
from app.models.gguf import convert as gguf_convert
from app.models.gguf.loader import load_gguf_model
from tests.unit.tiny_gemma_gguf import TinyGemma, write_tiny_gemma
from tests.unit.tiny_gguf import CHAT_TEMPLATE, write_tiny_gguf

PROMPT = "The quick brown fox jumps over the"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGemma:
    return write_tiny_gemma(tmp_path_factory.mktemp("conv") / "tiny-gemma.gguf", seed=7)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("cache"))


def greedy(model: nn.Module, tokenizer: object, n: int = 12) -> list[int]:
    prompt = tokenizer.encode(PROMPT)
    gen = stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=make_sampler(0.0))
    return [r.token for r in gen]


def logits(model: nn.Module) -> np.ndarray:
    return np.array(model(mx.array([[2, 300, 280, 301, 350, 290, 6, 310]])).astype(mx.float32))


@pytest.mark.parametrize("quantize", [None, "gguf"])
def test_output_loads_in_mlx_lm_with_the_same_greedy_tokens(
    tiny: TinyGemma, settings: Settings, tmp_path: Path, quantize: str | None
) -> None:
    out = convert(str(tiny.path), tmp_path / "out", settings=settings, quantize=quantize)
    ours = load_gguf_model(tiny.path, weights="quantized" if quantize else "float32",
                           cache_dir=settings.cache_dir)  # fmt: skip
    model, tokenizer = mlx_lm_load(str(out))
    want = greedy(ours.model, ours.tokenizer)
    assert len(set(want)) > 3  # a varied sequence, not one repeated id
    assert greedy(model, tokenizer) == want
    np.testing.assert_array_equal(logits(model), logits(ours.model))
    assert type(tokenizer.detokenizer).__name__ == "SPMStreamingDetokenizer"
    assert set(tokenizer.eos_token_ids) == ours.eos_token_ids == {1, 5}
    text = "héllo wörld <start_of_turn>user\n\nZebra 日本"
    assert tokenizer.encode(text) == ours.tokenizer.encode(text)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert ("quantization" in config) is (quantize == "gguf")
    assert (out / "tokenizer_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "gguf_source.json").exists()


def test_second_convert_reuses_the_cached_conversion(
    tiny: TinyGemma, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert(str(tiny.path), tmp_path / "a", settings=settings)

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "convert_gguf", boom)
    out = convert(str(tiny.path), tmp_path / "b", settings=settings, dtype="float16",
                  quantize=8)  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 64
    model, _ = mlx_lm_load(str(out))
    assert model.model.layers[0].mlp.up_proj.bits == 8
    assert model.model.layers[0].input_layernorm.weight.dtype == mx.float16


def test_refuses_bad_inputs(tiny: TinyGemma, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConvertError, match="not an empty directory"):
        convert(str(tiny.path), tmp_path / "full", settings=settings)
    with pytest.raises(ConvertError, match="neither a registry model id nor an existing path"):
        convert("no-such-model", tmp_path / "o1", settings=settings)
    with pytest.raises(ConvertError, match="embedding model"):
        convert("all-minilm-l6-v2", tmp_path / "o2", settings=settings)
    with pytest.raises(ConvertError, match="quantize must be"):
        convert(str(tiny.path), tmp_path / "o3", settings=settings, quantize=7)
    with pytest.raises(ConvertError, match="needs a .gguf source"):
        convert(str(tmp_path / "full"), tmp_path / "o4", settings=settings, quantize="gguf")


def test_cli_registry_id_with_old_flag_spelling(tmp_path: Path) -> None:
    """`--model ID --out DIR` (as the README shows) on a llama GGUF with a chat template."""
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", seed=4)
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - id: tiny\n    source: {tiny.path.name}\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "app", "convert", "--model", "tiny", "--out", str(out),
           "--models-file", str(registry), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(str(out))
    model, tokenizer = mlx_lm_load(str(out))
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == (
        CHAT_TEMPLATE
    )
    ours = load_gguf_model(tiny.path, weights="float32")
    np.testing.assert_array_equal(logits(model), logits(ours.model))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "not an empty directory" in again.stderr
