"""Cheaper decode steps: fused projections and ``mx.compile``d transformer blocks.

On MLX's CPU backend a SmolLM2-135M decode step is ~4,200 graph nodes: RMSNorm, RoPE and
attention run as unfused primitives (``mx.fast`` falls back to plain ops on the CPU), and each
tiny op costs microseconds to schedule. :func:`optimize_model` patches a loaded mlx-lm model
in place so that, for short inputs (decode steps and speculative verification, at most
:data:`MAX_COMPILED_TOKENS` tokens per sequence), each transformer block runs as

    compiled "pre":  input norm -> one fused q/k/v matmul -> head split -> (q/k norms) -> RoPE
    eager:           KV-cache update and scaled dot-product attention (mlx-lm's own code)
    compiled "post": o_proj -> residual -> norm -> fused gate/up matmul -> act -> down -> residual

The KV-cache update and attention stay outside the compiled functions, so every cache type
(``KVCache``, ``BatchKVCache``, rotating and quantized caches) keeps its exact semantics, and
so does the mask that the model builds. Longer inputs (prefill) take the model's original
code path. The compiled functions hold no weights: weights are explicit arguments, so one
compiled function (one trace per input shape) serves every layer with the same
configuration.

q/k/v and gate/up weights are concatenated into one matrix each (fewer, larger BLAS calls);
the original ``nn.Linear`` modules are re-pointed at row slices of the fused matrix (views,
so no extra memory) and the uncompiled path still works.

Families: ``llama`` (and everything mlx-lm maps onto its blocks) and ``gemma3_text``. Other
families, and layers whose modules are not the expected ones (quantized linears, biases on
gemma, ...), are left untouched; :func:`optimize_model` says what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import gemma3_text, llama
from mlx_lm.models.cache import make_prompt_cache

from app.kernels.attention import attend
from app.kernels.fast_math import geglu_tanh, swiglu
from app.kernels.rope import table_rope
from app.kernels.shape_compile import serialized

MAX_COMPILED_TOKENS = 16  # longer inputs (prefill chunks) take the original code path


# ---- weight fusion -------------------------------------------------------------------


def _plain_linear(module: Any) -> bool:
    return type(module) is nn.Linear


def _fuse(modules: list[nn.Linear]) -> tuple[mx.array, mx.array | None]:
    """One (sum of outputs, in) weight (and bias); the modules get row-slice views of it."""
    weight = mx.concatenate([m.weight for m in modules], axis=0)
    bias = None
    if any("bias" in m for m in modules):
        bias = mx.concatenate(
            [m["bias"] if "bias" in m else mx.zeros((m.weight.shape[0],), m.weight.dtype)
             for m in modules]
        )
    mx.eval(weight if bias is None else [weight, bias])
    start = 0
    for module in modules:
        rows = module.weight.shape[0]
        module.weight = weight[start : start + rows]
        if bias is not None and "bias" in module:
            module.bias = bias[start : start + rows]
        start += rows
    mx.eval([m.parameters() for m in modules])
    return weight, bias


def _linear(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    if bias is None:
        return x @ weight.T
    return mx.addmm(bias, x, weight.T)


class _Parts:
    """One block's functions: pre-attention, post-attention projections, MLP down."""

    def __init__(self, pre: Callable, proj: Callable, down: Callable) -> None:
        self.pre, self.proj, self.down = pre, proj, down


class _Fused:
    """Per-layer fused weights and functions; kept out of the module tree.

    ``compiled``: ``mx.compile``d parts for inputs of up to MAX_COMPILED_TOKENS tokens;
    ``eager``: the same functions uncompiled, for prefill chunks (any length, no JIT build
    per shape)."""

    def __init__(self, layer: nn.Module, compiled: _Parts, eager: _Parts) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv_w, self.qkv_b = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.gu_w, self.gu_b = _fuse([mlp.gate_proj, mlp.up_proj])
        self.compiled, self.eager = compiled, eager

    def parts(self, x: mx.array) -> _Parts:
        return self.compiled if x.shape[1] <= MAX_COMPILED_TOKENS else self.eager


# ---- compiled parts ------------------------------------------------------------------


def _split_heads(x: mx.array, heads: int) -> mx.array:
    """(B, L, heads * D) -> (B, heads, L, D)."""
    b, length, _ = x.shape
    return x.reshape(b, length, heads, -1).transpose(0, 2, 1, 3)


def _rope_for(attn: nn.Module, eager: bool) -> Callable:
    """Prefill chunks (``eager``) share cos/sin tables across layers (:mod:`app.kernels.rope`)."""
    return (table_rope(attn.rope) if eager else None) or attn.rope


def _llama_pre(layer: llama.TransformerBlock, eager: bool) -> Callable:
    attn = layer.self_attn
    norm_eps = layer.input_layernorm.eps
    nq, nkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    rope = _rope_for(attn, eager)

    def pre(x: mx.array, offset: mx.array, norm_w: mx.array, qkv_w: mx.array,
            qkv_b: mx.array | None) -> tuple[mx.array, mx.array, mx.array]:
        qkv = _linear(mx.fast.rms_norm(x, norm_w, norm_eps), qkv_w, qkv_b)
        q, k, v = mx.split(qkv, [nq * hd, (nq + nkv) * hd], axis=-1)
        q, k, v = _split_heads(q, nq), _split_heads(k, nkv), _split_heads(v, nkv)
        return rope(q, offset=offset), rope(k, offset=offset), v

    return pre


def _gate_up(x: mx.array, gu_w: mx.array, gu_b: mx.array | None, hidden: int,
             separate: bool) -> tuple[mx.array, mx.array]:
    """Gate and up projections from the fused weight. ``separate``: two matmuls, whose outputs
    are contiguous, where slices of one fused output are strided views that the activation
    kernel then reads on MLX's strided path (a 150-token batch of 8: 47 -> 40 ms per layer)."""
    if not separate:
        return tuple(mx.split(_linear(x, gu_w, gu_b), [hidden], axis=-1))
    biases = (None, None) if gu_b is None else (gu_b[:hidden], gu_b[hidden:])
    return _linear(x, gu_w[:hidden], biases[0]), _linear(x, gu_w[hidden:], biases[1])


def _swiglu_post(layer: llama.TransformerBlock, separate: bool) -> tuple[Callable, Callable]:
    """(proj, down): the MLP's activation runs between them (:mod:`app.kernels.fast_math`)."""
    norm_eps = layer.post_attention_layernorm.eps
    hidden = layer.mlp.gate_proj.weight.shape[0]

    def proj(x: mx.array, attn_out: mx.array, o_w: mx.array, o_b: mx.array | None,
             norm_w: mx.array, gu_w: mx.array,
             gu_b: mx.array | None) -> tuple[mx.array, mx.array, mx.array]:
        b, _, length, _ = attn_out.shape
        h = x + _linear(attn_out.transpose(0, 2, 1, 3).reshape(b, length, -1), o_w, o_b)
        gate, up = _gate_up(mx.fast.rms_norm(h, norm_w, norm_eps), gu_w, gu_b, hidden, separate)
        return h, gate, up

    def down(h: mx.array, act: mx.array, down_w: mx.array, down_b: mx.array | None) -> mx.array:
        return h + _linear(act, down_w, down_b)

    return proj, down


def _gemma3_pre(layer: gemma3_text.TransformerBlock, eager: bool) -> Callable:
    attn = layer.self_attn
    eps = layer.input_layernorm.eps
    nq, nkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q_eps, k_eps, rope = attn.q_norm.eps, attn.k_norm.eps, _rope_for(attn, eager)

    def pre(x: mx.array, offset: mx.array, norm_w: mx.array, qkv_w: mx.array,
            qkv_b: mx.array | None, qn_w: mx.array,
            kn_w: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        qkv = _linear(mx.fast.rms_norm(x, 1.0 + norm_w, eps), qkv_w, qkv_b)
        q, k, v = mx.split(qkv, [nq * hd, (nq + nkv) * hd], axis=-1)
        q, k, v = _split_heads(q, nq), _split_heads(k, nkv), _split_heads(v, nkv)
        q = mx.fast.rms_norm(q, 1.0 + qn_w, q_eps)
        k = mx.fast.rms_norm(k, 1.0 + kn_w, k_eps)
        return rope(q, offset=offset), rope(k, offset=offset), v

    return pre


def _gemma3_post(layer: gemma3_text.TransformerBlock,
                 separate: bool) -> tuple[Callable, Callable]:
    eps = layer.post_attention_layernorm.eps
    hidden = layer.mlp.gate_proj.weight.shape[0]

    def proj(x: mx.array, attn_out: mx.array, o_w: mx.array, o_b: mx.array | None,
             n1_w: mx.array, n2_w: mx.array, gu_w: mx.array,
             gu_b: mx.array | None) -> tuple[mx.array, mx.array, mx.array]:
        b, _, length, _ = attn_out.shape
        r = _linear(attn_out.transpose(0, 2, 1, 3).reshape(b, length, -1), o_w, o_b)
        h = gemma3_text.clip_residual(x, mx.fast.rms_norm(r, 1.0 + n1_w, eps))
        gate, up = _gate_up(mx.fast.rms_norm(h, 1.0 + n2_w, eps), gu_w, gu_b, hidden, separate)
        return h, gate, up

    def down(h: mx.array, act: mx.array, n3_w: mx.array, down_w: mx.array,
             down_b: mx.array | None) -> mx.array:
        r = _linear(act, down_w, down_b)
        return gemma3_text.clip_residual(h, mx.fast.rms_norm(r, 1.0 + n3_w, eps))

    return proj, down


# ---- patched blocks ------------------------------------------------------------------


def _bias(module: nn.Module) -> mx.array | None:
    return module["bias"] if "bias" in module else None


def _offset(cache: Any) -> mx.array:
    offset = cache.offset
    return offset if isinstance(offset, mx.array) else mx.array(offset, dtype=mx.int32)


class _LlamaBlock(llama.TransformerBlock):
    _i8: _Fused

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        if cache is None:
            return super().__call__(x, mask, cache)
        f, attn, mlp = self._i8, self.self_attn, self.mlp
        fn = f.parts(x)
        q, k, v = fn.pre(x, _offset(cache), self.input_layernorm.weight, f.qkv_w, f.qkv_b)
        out = attend(self, q, k, v, mask, cache)
        h, gate, up = fn.proj(x, out, attn.o_proj.weight, _bias(attn.o_proj),
                              self.post_attention_layernorm.weight, f.gu_w, f.gu_b)
        return fn.down(h, swiglu(gate, up), mlp.down_proj.weight, _bias(mlp.down_proj))


class _Gemma3Block(gemma3_text.TransformerBlock):
    _i8: _Fused

    def __call__(self, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
        if cache is None:
            return super().__call__(x, mask, cache)
        f, attn, mlp = self._i8, self.self_attn, self.mlp
        fn = f.parts(x)
        q, k, v = fn.pre(x, _offset(cache), self.input_layernorm.weight, f.qkv_w, f.qkv_b,
                         attn.q_norm.weight, attn.k_norm.weight)
        out = attend(self, q, k, v, mask, cache)
        h, gate, up = fn.proj(x, out, attn.o_proj.weight, _bias(attn.o_proj),
                              self.post_attention_layernorm.weight,
                              self.pre_feedforward_layernorm.weight, f.gu_w, f.gu_b)
        return fn.down(h, geglu_tanh(gate, up), self.post_feedforward_layernorm.weight,
                       mlp.down_proj.weight, _bias(mlp.down_proj))


# family: (original block class, patched class, pre builder, post builder, norm classes)
_FAMILIES: dict[str, tuple[type, type, Callable, Callable, tuple[type, ...]]] = {
    "llama": (llama.TransformerBlock, _LlamaBlock, _llama_pre, _swiglu_post, (nn.RMSNorm,)),
    "gemma3_text": (gemma3_text.TransformerBlock, _Gemma3Block, _gemma3_pre, _gemma3_post,
                    (gemma3_text.RMSNorm,)),
}


def _supported(layer: nn.Module, norms: tuple[type, ...]) -> str | None:
    """Why this layer cannot be patched, or None."""
    attn, mlp = layer.self_attn, layer.mlp
    linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
               mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    if not all(_plain_linear(m) for m in linears):
        return "quantized or non-standard linear layers"
    dtypes = {m.weight.dtype for m in linears}
    if len(dtypes) != 1:
        return "mixed weight dtypes"
    for name, child in layer.children().items():
        if name.endswith("layernorm") and type(child) not in norms:
            return f"non-standard norm {type(child).__name__}"
    return None


def _rope_key(rope: nn.Module) -> tuple:
    """Layers whose RoPE modules agree can share one compiled function."""
    scalars = tuple(sorted((k, repr(v)) for k, v in vars(rope).items() if not callable(v)))
    arrays = tuple((k, tuple(v.tolist())) for k, v in sorted(rope.items())
                   if isinstance(v, mx.array))
    return type(rope), scalars, arrays


def warm_up(model: nn.Module) -> None:
    """Trace the compiled parts for the shapes serving meets first, and build their kernels.

    On the CPU, ``mx.compile`` turns fused element-wise code into C++ built by the system
    compiler, cached on disk (``$TMPDIR/mlx/<version>/cpu``): seconds per new kernel on a
    fresh machine, so it is better paid while loading than in a user's first decode step.
    Covers one sequence (plain cache, 1 and 3 tokens: decode and speculative verification)
    and batches of 1 and 2 (batch caches).
    """
    singles = []
    for _ in range(2):
        cache = make_prompt_cache(model)
        model(mx.zeros((1, 3), dtype=mx.int32), cache=cache)
        model(mx.zeros((1, 1), dtype=mx.int32), cache=cache)
        singles.append(cache)
    for batch in (1, 2):
        merged = [type(layer).merge([s[i] for s in singles[:batch]])
                  for i, layer in enumerate(singles[0])]
        mx.eval(model(mx.zeros((batch, 1), dtype=mx.int32), cache=merged))


# Compiled functions are kept per block *shape* for the life of the process: MLX does not give
# back all of a compiled function's state when it is dropped (~1 MB per load of a small model
# was measured), so reloading a model must reuse them rather than compile new ones.
_BLOCK_FUNCTIONS: dict[tuple, _Parts] = {}


def _scalars(obj: Any) -> tuple:
    return tuple(sorted(
        (k, v) for k, v in vars(obj).items() if isinstance(v, int | float | bool | str)
    ))


def _block_signature(family: str, layer: nn.Module) -> tuple:
    """Everything the pre/post functions bake in: sizes, epsilons, attention constants."""
    shapes = tuple((name, tuple(v.shape), str(v.dtype))
                   for name, v in tree_flatten(layer.parameters()))
    norms = tuple((name, _scalars(m)) for name, m in layer.named_modules() if hasattr(m, "eps"))
    return (family, shapes, norms, _scalars(layer.self_attn), _rope_key(layer.self_attn.rope),
            _scalars(layer.self_attn.rope))


def _block_functions(
    family: str, layer: nn.Module, make_pre: Callable, make_post: Callable, compiled: bool
) -> _Parts:
    if not compiled:  # prefill chunks: shared RoPE tables, gate and up as separate matmuls
        return _Parts(make_pre(layer, True), *make_post(layer, True))
    key = _block_signature(family, layer)
    if key not in _BLOCK_FUNCTIONS:
        proj, down = make_post(layer, False)
        _BLOCK_FUNCTIONS[key] = _Parts(
            serialized(mx.compile(make_pre(layer, False))),
            serialized(mx.compile(proj)),
            serialized(mx.compile(down)),
        )
    return _BLOCK_FUNCTIONS[key]


def optimize_model(
    model: nn.Module, *, compile_blocks: bool = True, warm: bool = True
) -> str:
    """Patch ``model`` in place for cheaper short-input steps; return what was done.

    Never raises for an unsupported model: it is left as it was and the reason is returned.
    ``compile_blocks=False`` fuses the weights and routes through the same functions
    without ``mx.compile`` (for measurements); ``warm=False`` skips :func:`warm_up`.
    """
    layers = getattr(model, "layers", None)
    if not layers:
        return "unchanged: model has no transformer layers"
    if all(isinstance(getattr(layer, "_i8", None), _Fused) for layer in layers):
        return "unchanged: already optimized"
    family = next((name for name, spec in _FAMILIES.items()
                   if all(type(layer) is spec[0] for layer in layers)), None)
    if family is None:
        kind = getattr(model, "model_type", type(model).__module__)
        return f"unchanged: {kind} blocks are not supported"
    block, patched, make_pre, make_post, norms = _FAMILIES[family]
    reasons = {r for r in (_supported(layer, norms) for layer in layers) if r}
    if reasons:
        return f"unchanged: {', '.join(sorted(reasons))}"
    shared: dict[tuple, tuple[_Parts, _Parts]] = {}
    try:
        for layer in layers:
            key = _rope_key(layer.self_attn.rope)
            if key not in shared:
                eager = _block_functions(family, layer, make_pre, make_post, False)
                shared[key] = (_block_functions(family, layer, make_pre, make_post,
                                                compile_blocks), eager)
            layer._i8 = _Fused(layer, *shared[key])
            layer.__class__ = patched
        if warm and compile_blocks:
            warm_up(model)
    except Exception as exc:  # noqa: BLE001 - never fail a model load over a speed-up
        for layer in layers:  # fused weights stay (views, same values); the code path goes back
            layer.__class__ = block
            layer.__dict__.pop("_i8", None)
        return f"unchanged: optimizing failed ({type(exc).__name__}: {exc})"
    how = "compiled" if compile_blocks else "eager"
    return (f"{family}: {len(layers)} blocks with fused q/k/v and gate/up matmuls, "
            f"{how} pre/post-attention parts for inputs up to {MAX_COMPILED_TOKENS} tokens "
            f"({len(shared)} variants), exp-free activations and attention softmax")
