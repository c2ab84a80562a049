"""Qwen2 / Qwen3 GGUFs: config, logits against llama.cpp's graph, quantized rebuild, template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from app.models.gguf.loader import load_gguf_model
from app.models.loaded import LoadedLanguageModel
from tests.unit.gguf_reference import qwen_logits, read_reference
from tests.unit.tiny_qwen_gguf import HEAD_DIM, LAYERS, TinyQwen, write_tiny_qwen

PROMPT = [1, 40, 120, 200, 7, 300, 2, 150, 151, 99, 260, 17]


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyQwen:
    arch = request.param
    return write_tiny_qwen(tmp_path_factory.mktemp(arch) / f"tiny-{arch}.gguf", arch=arch)


@pytest.fixture(scope="module")
def f32(tiny: TinyQwen) -> LoadedLanguageModel:
    return load_gguf_model(tiny.path, weights="float32", cache_dir=tiny.path.parent / "cache")


def logits(model: nn.Module, ids: list[int] = PROMPT) -> np.ndarray:
    return np.array(model(mx.array([ids])).astype(mx.float32))[0]


def assert_matches_graph(model: nn.Module, path: Path, graph: Callable[..., np.ndarray]) -> None:
    """``model``'s logits on :data:`PROMPT` are ``graph``'s (a numpy llama.cpp graph from
    :mod:`tests.unit.gguf_reference`) on the file's own tensors, read by gguf-py."""
    meta, tensors = read_reference(path)
    want = graph(meta, tensors, PROMPT)
    assert np.abs(want).max() > 1.0  # not a degenerate model
    np.testing.assert_allclose(logits(model), want, atol=2e-4, rtol=1e-4)


def test_the_file_mixes_quant_types(tiny: TinyQwen) -> None:
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= set(tiny.types.values())


def test_config_comes_from_gguf(tiny: TinyQwen, f32: LoadedLanguageModel) -> None:
    cfg = f32.model_config
    assert cfg["model_type"] == tiny.arch and cfg["num_hidden_layers"] == LAYERS
    assert cfg["rope_theta"] == 1_000_000.0 and cfg["rms_norm_eps"] == 1e-6
    assert cfg.get("rope_traditional", False) is False  # NEOX, q/k not permuted
    assert cfg["tie_word_embeddings"] is (tiny.arch == "qwen3")
    if tiny.arch == "qwen3":
        assert cfg["head_dim"] == HEAD_DIM["qwen3"]
    assert f32.weight_dtype == "float32" and f32.source_quantization == "q5_0"
    im_end = f32.tokenizer.get_vocab()["<|im_end|>"]
    assert im_end in f32.eos_token_ids


def test_float32_logits_match_llama_cpp_graph(tiny: TinyQwen, f32: LoadedLanguageModel) -> None:
    """Biases (qwen2), q/k norms and head size (qwen3), NEOX RoPE and the untied (qwen2) or
    tied (qwen3) head all have to be right for this to hold."""
    assert_matches_graph(f32.model, tiny.path, qwen_logits)


def test_quantized_mode_keeps_the_files_blocks(tiny: TinyQwen, f32: LoadedLanguageModel) -> None:
    quant = load_gguf_model(tiny.path, weights="quantized", cache_dir=tiny.path.parent / "cache")
    layer = quant.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, nn.QuantizedLinear)
    assert layer.self_attn.q_proj.bits == 5 and layer.self_attn.v_proj.bits == 8
    assert quant.model.model.layers[1].mlp.down_proj.bits == 4  # Q4_K: exact
    if tiny.arch == "qwen2":
        assert layer.self_attn.q_proj.bias.shape == (4 * HEAD_DIM["qwen2"],)
    # Only the 8-bit Q6_K fallback of layer 0's ffn_down differs.
    np.testing.assert_allclose(logits(quant.model), logits(f32.model), atol=1e-1, rtol=1e-2)


def test_template_renders_tools_and_thinking(f32: LoadedLanguageModel) -> None:
    tok = f32.tokenizer
    messages = [{"role": "user", "content": "hi"}]
    thinking = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert thinking.endswith("<|im_start|>assistant\n<think>\n")
    off = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert off.endswith("<think>\n\n</think>\n\n")
    think_id = tok.get_vocab()["<think>"]
    assert tok.encode("<think>", add_special_tokens=False) == [think_id]
    assert tok.tool_call_start == "<tool_call>"  # mlx-lm's json_tools parser was picked


def test_history_calls_render_once_through_a_tool_template(f32: LoadedLanguageModel) -> None:
    from app.generation.request import Message, ToolCall
    from app.generation.tools import template_message

    history = [Message("user", "Weather in Paris?"),
               Message("assistant", "", tool_calls=[ToolCall("c1", "get_weather",
                                                             '{"city": "Paris"}')]),
               Message("tool", "Sunny", tool_call_id="c1")]
    text = f32.tokenizer.apply_chat_template(
        [template_message(m, inline_calls=False) for m in history], tokenize=False)
    assert text.count("<tool_call>") == 1 and '"arguments": {"city": "Paris"}' in text
    inline = template_message(history[1])  # for templates that ignore tool_calls
    assert inline["content"].startswith("<tool_call>")


def test_registry_tool_parser_override(tiny: TinyQwen) -> None:
    from app.models.tool_parser import set_tool_parser, tool_parser_name

    loaded = load_gguf_model(tiny.path, weights="float32", cache_dir=tiny.path.parent / "cache")
    assert tool_parser_name(loaded.tokenizer) == "json_tools"  # from the chat template
    set_tool_parser(loaded.tokenizer, "mistral")
    assert tool_parser_name(loaded.tokenizer) == "mistral"
    assert loaded.tokenizer.tool_call_start == "[TOOL_CALLS]"
    with pytest.raises(ValueError, match=r"'nope' is not known \(available: .*json_tools"):
        set_tool_parser(loaded.tokenizer, "nope")
