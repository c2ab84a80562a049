"""app.kernels.compile: fused + compiled blocks give the same logits and greedy text."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import gemma3_text
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

from app.engine.lm.sampling import make_request_sampler
from app.engine.lm.types import SamplingParams
from app.kernels import attention as attention_kernels
from app.kernels import compile as engine_compile
from app.kernels.attention import sdpa
from app.kernels.compile import MAX_COMPILED_TOKENS, optimize_model
from app.models.mlx_dir import load_mlx_dir

TEXTS = ["The quick brown fox", "What is the capital of France?", "Hello world! This", "0 1 2 3"]


@pytest.fixture(scope="module")
def pair(tiny_llama_dir: Path):
    """(original model, optimized model, tokenizer): two loads of the same weights."""
    plain = load_mlx_dir(tiny_llama_dir)
    fast = load_mlx_dir(tiny_llama_dir)
    report = optimize_model(fast.model)
    assert report.startswith("llama: 2 blocks"), report
    return plain.model, fast.model, plain.tokenizer


def generate(model, prompts: list[list[int]], max_tokens: int = 16, samplers=None) -> list:
    gen = BatchGenerator(model, stream=mx.default_stream(mx.default_device()))
    uids = gen.insert(prompts, max_tokens=[max_tokens] * len(prompts), samplers=samplers)
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    done: set[int] = set()
    while len(done) < len(uids):
        for response in gen.next()[1]:
            out[response.uid].append(response.token)
            if response.finish_reason:
                done.add(response.uid)
    return [out[uid] for uid in uids]


def test_layers_patched_once(pair):
    _, fast, _ = pair
    assert all(type(layer).__name__ == "_LlamaBlock" for layer in fast.layers)
    assert optimize_model(fast) == "unchanged: already optimized"
    # weights stay where mlx-lm expects them, as views of the fused matrix
    attn = fast.layers[0].self_attn
    fused = fast.layers[0]._i8.qkv_w
    rows = attn.q_proj.weight.shape[0]
    assert mx.array_equal(fused[:rows], attn.q_proj.weight).item()


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("length", [1, 3, MAX_COMPILED_TOKENS + 4])
def test_logits_match(pair, batched: bool, length: int):
    plain, fast, _ = pair
    tokens = mx.array([[5, 17, 42, 8, 99, 23, 61, 7] * 5, [9, 3, 77, 12, 5, 6, 7, 8] * 5])
    batch = 2 if batched else 1
    outs = []
    for model in (plain, fast):
        if batched:
            cache = [BatchKVCache([0, 0]) for _ in model.layers]
        else:
            cache = make_prompt_cache(model)
        model(tokens[:batch, :10], cache=cache)
        outs.append(model(tokens[:batch, 10 : 10 + length], cache=cache))
    assert mx.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-4).item()
    assert mx.array_equal(outs[0].argmax(-1), outs[1].argmax(-1)).item()


def test_greedy_identical_alone_and_batched(pair):
    plain, fast, tok = pair
    prompts = [tok.encode(t) for t in TEXTS]
    for prompt in prompts:
        assert generate(fast, [prompt]) == generate(plain, [prompt])
    assert generate(fast, prompts) == generate(plain, prompts)


def test_seeded_sampling_reproducible(pair):
    plain, fast, tok = pair
    prompts = [tok.encode(t) for t in TEXTS[:2]]
    params = SamplingParams(max_tokens=12, temperature=0.9, seed=7)

    def sampled(model):
        return generate(model, prompts, 12, [make_request_sampler(params) for _ in prompts])

    first = sampled(fast)
    assert first == sampled(fast)
    assert first == sampled(plain)


def test_unsupported_models_are_left_alone(tiny_llama_dir: Path):
    quantized = load_mlx_dir(tiny_llama_dir).model
    nn.quantize(quantized, group_size=32, bits=8)
    assert optimize_model(quantized).startswith("unchanged: quantized")
    assert type(quantized.layers[0]).__name__ == "TransformerBlock"

    class NoLayers(nn.Module):
        layers: list = []

    assert optimize_model(NoLayers()).startswith("unchanged")


def _tiny_gemma3() -> gemma3_text.Model:
    args = gemma3_text.ModelArgs(
        model_type="gemma3_text", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
        num_attention_heads=4, head_dim=16, num_key_value_heads=2, vocab_size=128,
        sliding_window=6, sliding_window_pattern=2, query_pre_attn_scalar=16,
    )
    mx.random.seed(3)
    model = gemma3_text.Model(args)
    model.update(
        nn.utils.tree_map(lambda p: mx.random.normal(p.shape) * 0.3, model.parameters())
    )
    mx.eval(model.parameters())
    return model


def test_gemma3_text_matches():
    plain, fast = _tiny_gemma3(), _tiny_gemma3()
    report = optimize_model(fast)
    assert report.startswith("gemma3_text: 2 blocks") and "(2 variants)" in report, report
    tokens = mx.random.randint(0, 128, (1, 20))
    outs = []
    for model in (plain, fast):
        cache = make_prompt_cache(model)  # rotating cache on the sliding layer
        steps = [model(tokens[:, :4], cache=cache)]
        steps += [model(tokens[:, i : i + 1], cache=cache) for i in range(4, 12)]  # wraps
        steps.append(model(tokens[:, 12:15], cache=cache))
        outs.append(mx.concatenate(steps, axis=1))
    assert mx.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-4).item()


def test_eager_mode_matches(tiny_llama_dir: Path, pair):
    plain, _, tok = pair
    eager = load_mlx_dir(tiny_llama_dir).model
    assert "eager" in optimize_model(eager, compile_blocks=False)
    prompt = tok.encode(TEXTS[0])
    assert generate(eager, [prompt]) == generate(plain, [prompt])
    assert engine_compile.MAX_COMPILED_TOKENS == MAX_COMPILED_TOKENS


MASKS = [("none", 1)] + [(m, n) for m in ("causal", "2d", "padded", "additive") for n in (1, 5)]


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize(("mask_kind", "length"), MASKS)
def test_sdpa_matches_mx_fast(length: int, kv_heads: int, mask_kind: str):
    b, heads, keys, dim = 3, 4, 11, 8
    q = mx.random.normal((b, heads, length, dim))
    k, v = mx.random.normal((2, b, kv_heads, keys, dim))
    mask = {
        "none": None,
        "causal": "causal",
        "2d": create_causal_mask(length, keys - length),
        "padded": create_causal_mask(length, keys - length, left_padding=mx.array([0, 2, 5])),
        "additive": mx.random.normal((b, 1, length, keys)),
    }[mask_kind]
    got = sdpa(q, k, v, 0.3, mask)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert got.shape == want.shape
    assert mx.allclose(got, want, atol=1e-5).item()


@pytest.mark.parametrize(("b", "kv_heads", "length", "keys"),
                         [(1, 3, 36, 300), (4, 3, 36, 300), (2, 1, 9, 64), (4, 3, 1, 300)])
def test_sdpa_padded_gqa_matches_mx_fast_and_hidden_rows_are_zero(b, kv_heads, length, keys):
    """Left padding longer than a row's view (no visible key): zeros there, mx.fast elsewhere."""
    q = mx.random.normal((b, 9, length, 16))
    k, v = mx.random.normal((2, b, kv_heads, keys, 16))
    padding = mx.array([0, keys - length + 3, keys - 1, 7][:b])
    mask = create_causal_mask(length, keys - length, left_padding=padding)
    got = sdpa(q, k, v, 0.25, mask)
    visible = mask.any(axis=-1, keepdims=True)  # (b, 1, length, 1)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    assert mx.allclose(mx.where(visible, got, want), want, atol=1e-5).item()
    assert (b == 1) == visible.all().item()  # b > 1: some rows see no key
    assert mx.all(mx.where(visible, 0.0, got) == 0.0).item()


def test_sdpa_large_scores_path_matches_mx_fast(monkeypatch):
    """Past FAST_SOFTMAX_MAX: MLX's softmax, the prepared mask left unbroadcast."""
    monkeypatch.setattr(attention_kernels, "FAST_SOFTMAX_MAX", 0)
    q = mx.random.normal((2, 6, 4, 8))
    k, v = mx.random.normal((2, 2, 2, 10, 8))
    mask = create_causal_mask(4, 6, left_padding=mx.array([0, 3]))
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)
    assert mx.allclose(sdpa(q, k, v, 0.3, mask), want, atol=1e-5).item()


def test_sdpa_prepared_mask_follows_the_mask_object():
    """The per-forward mask cache: a new mask object (even of the same shape) is used."""
    q = mx.random.normal((2, 4, 5, 8))
    k, v = mx.random.normal((2, 2, 2, 11, 8))
    for padding in ([0, 2], [3, 0], [3, 0]):
        mask = create_causal_mask(5, 6, left_padding=mx.array(padding))
        for kv in (2, 1, 2):  # the same mask object with another GQA layout
            want = mx.fast.scaled_dot_product_attention(q, k[:, :kv], v[:, :kv], scale=0.3,
                                                        mask=mask)
            assert mx.allclose(sdpa(q, k[:, :kv], v[:, :kv], 0.3, mask), want, atol=1e-5).item()


def test_llama_with_biases_matches():
    from mlx_lm.models import llama

    def build() -> llama.Model:
        args = llama.ModelArgs(
            model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=48,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=64,
            attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        )
        mx.random.seed(5)
        model = llama.Model(args)
        model.update(nn.utils.tree_map(lambda p: mx.random.normal(p.shape), model.parameters()))
        mx.eval(model.parameters())
        return model

    plain, fast = build(), build()
    assert optimize_model(fast).startswith("llama: 2 blocks")
    assert fast.layers[0]._i8.qkv_b is not None and fast.layers[0]._i8.gu_b is not None
    tokens = mx.random.randint(0, 64, (1, 12))
    outs = []
    for model in (plain, fast):
        cache = make_prompt_cache(model)
        outs.append(mx.concatenate(
            [model(tokens[:, :5], cache=cache)]
            + [model(tokens[:, i : i + 1], cache=cache) for i in range(5, 12)], axis=1))
    assert mx.allclose(outs[0], outs[1], atol=1e-4, rtol=1e-4).item()


def test_a_failing_warm_up_leaves_the_stock_model(tiny_llama_dir: Path, pair, monkeypatch):
    plain, _, tok = pair
    model = load_mlx_dir(tiny_llama_dir).model

    def broken(_model):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(engine_compile, "warm_up", broken)
    report = optimize_model(model)
    assert report == "unchanged: optimizing failed (RuntimeError: no compiler)"
    assert all(type(layer).__name__ == "TransformerBlock" for layer in model.layers)
    assert not hasattr(model.layers[0], "_i8")
    prompt = tok.encode(TEXTS[1])
    assert generate(model, [prompt]) == generate(plain, [prompt])
