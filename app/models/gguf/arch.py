"""GGUF architectures that load through dequantization: tensor names, fixes and config.

Each :class:`Family` maps llama.cpp tensor names to an mlx-lm model's parameter names,
undoes what llama.cpp's converter did to the values, and builds the mlx-lm ``config.json``
from the GGUF hyperparameters.

- ``llama``: q/k are permuted for interleaved RoPE, so the model runs with
  ``rope_traditional=True`` (the same config as :mod:`app.models.gguf.loader`'s ``mx.load`` path).
- ``gemma3`` (mlx-lm ``gemma3_text``): llama.cpp stores every RMSNorm weight as ``1 + w``
  (Gemma's norms multiply by ``1 + w``; mlx-lm adds the 1 itself), so 1 is subtracted; q/k
  are not permuted. The local RoPE base, the sliding-window pattern and the query scale
  are not in older GGUFs; they come from the keys when present, else from the Gemma 3
  defaults (10000, every 6th layer global, ``head_dim``; ``hidden / heads`` for 27B,
  as llama.cpp does).
- ``qwen2``: llama's tensor names plus q/k/v biases; llama.cpp runs it with NEOX
  (rotate-half) RoPE and does not permute q/k, so mlx-lm's ``qwen2`` loads it as stored.
- ``qwen3``: as ``qwen2`` without biases, plus per-head RMSNorms on q and k
  (``attn_q_norm``/``attn_k_norm``) and an explicit head size (``attention.key_length``).
- ``phi3`` (Phi-3, Phi-3.5, Phi-4-mini): fused ``attn_qkv`` (q, k, v rows in that order) and
  fused ``ffn_up`` (gate rows, then up rows), as mlx-lm's ``qkv_proj``/``gate_up_proj``
  hold them; NEOX RoPE, unpermuted, on ``rope.dimension_count`` dims of each head (partial
  rotary for Phi-4-mini). Long-context files carry ``rope_factors_long``/``_short``
  tensors: mlx-lm applies the long ones with its own attention factor, which llama.cpp
  also uses whenever its context exceeds the original training length, so the file's
  ``rope.scaling.attn_factor`` must agree with it. ``attention.sliding_window`` is ignored,
  as llama.cpp does for Phi (its Phi SWA is disabled) and mlx-lm's ``phi3`` has none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.models.gguf.loader import _IN_BLOCK as LLAMA_IN_BLOCK
from app.models.gguf.loader import _TOP_LEVEL as LLAMA_TOP_LEVEL
from app.models.gguf.loader import _f32, _model_config, block_sizes

_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)")
_SUFFIXES = ("weight", "bias")

GEMMA3_IN_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
QWEN3_IN_BLOCK = {
    **LLAMA_IN_BLOCK,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
PHI3_IN_BLOCK = {
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
PHI3_ROPE_FACTORS = ("rope_factors_long", "rope_factors_short")
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_SLIDING_WINDOW_PATTERN = 6
GEMMA3_27B_LAYERS = 62


Weights = Mapping[str, Any]  # mlx-lm name -> array (numpy or mx: only .shape is used)


@dataclass(frozen=True)
class Family:
    arch: str
    model_type: str
    in_block: dict[str, str]
    top_level: dict[str, str]
    config: Callable[[dict[str, Any], Weights, Path], dict[str, Any]]
    fix: Callable[[str, np.ndarray], np.ndarray]  # (gguf name, value) -> value for mlx-lm
    extras: tuple[str, ...] = ()  # tensors (base names) the config reads, not the model

    def rename(self, name: str) -> str | None:
        """The mlx-lm parameter name of a GGUF tensor (an extra keeps its GGUF name), or
        None if this family has none."""
        base, _, suffix = name.rpartition(".")
        if base in self.extras and suffix == "weight":
            return name
        if suffix not in _SUFFIXES:
            return None
        block = _BLOCK_RE.fullmatch(base)
        if block and block.group(2) in self.in_block:
            return f"model.layers.{block.group(1)}.{self.in_block[block.group(2)]}.{suffix}"
        if base in self.top_level:
            return f"{self.top_level[base]}.{suffix}"
        return None


def _meta(meta: dict[str, Any], arch: str, path: Path) -> Callable[..., Any]:
    missing = object()

    def get(key: str, default: Any = missing) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is missing:
            raise ValueError(f"{path}: missing GGUF metadata {arch}.{key}")
        return value

    return get


def _window_pattern(value: Any, layers: int, path: Path) -> int:
    """``attention.sliding_window_pattern``: an int, or llama.cpp's per-layer bool list."""
    if isinstance(value, int):
        return value
    flags = [bool(v) for v in value]  # True = sliding-window layer
    for period in range(1, layers + 1):
        want = [(i + 1) % period != 0 for i in range(layers)] if period > 1 else [False] * layers
        if flags == want:
            return period
    raise ValueError(f"{path}: sliding-window layer pattern {flags} is not periodic")


def gemma3_config(meta: dict[str, Any], weights: Weights, path: Path) -> dict[str, Any]:
    get = _meta(meta, "gemma3", path)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    layers = int(get("block_count"))
    head_dim = int(get("attention.key_length", 256))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise ValueError(f"{path}: key and value head sizes differ")
    scale = get("attention.scale", None)
    if scale:
        query_scalar: float = 1.0 / float(scale) ** 2
        if abs(query_scalar - round(query_scalar)) < 1e-3:
            query_scalar = round(query_scalar)  # transformers' Gemma3TextConfig wants an int
    else:
        query_scalar = hidden // heads if layers == GEMMA3_27B_LAYERS else head_dim
    scaling = str(get("rope.scaling.type", "none"))
    rope_scaling = None
    if scaling == "linear":
        rope_scaling = {"rope_type": "linear", "factor": _f32(get("rope.scaling.factor"))}
    elif scaling != "none":
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported for gemma3")
    pattern = get("attention.sliding_window_pattern", GEMMA3_SLIDING_WINDOW_PATTERN)
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        **block_sizes(get, hidden, heads, eps=1e-6, theta=1_000_000.0),
        "head_dim": head_dim,
        "rope_local_base_freq": _f32(get("rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE)),
        "rope_scaling": rope_scaling,
        "query_pre_attn_scalar": query_scalar,
        "sliding_window": int(get("attention.sliding_window", 512)),
        "sliding_window_pattern": _window_pattern(pattern, layers, path),
        "max_position_embeddings": int(get("context_length", 32768)),
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "tie_word_embeddings": "lm_head.weight" not in weights,
    }


def qwen_config(meta: dict[str, Any], weights: Weights, path: Path) -> dict[str, Any]:
    """mlx-lm ``qwen2`` / ``qwen3`` config from the GGUF hyperparameters."""
    arch = str(meta["general.architecture"])
    get = _meta(meta, arch, path)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{path}: partial rotary embeddings are not supported")
    scaling = str(get("rope.scaling.type", "none"))
    if scaling != "none":
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported for {arch}")
    config = {
        "model_type": arch,
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "Qwen3ForCausalLM"],
        **block_sizes(get, hidden, heads, eps=1e-6, theta=1_000_000.0),
        "rope_scaling": None,
        "max_position_embeddings": int(get("context_length", 32768)),
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "tie_word_embeddings": "lm_head.weight" not in weights,
    }
    if arch == "qwen3":
        config["head_dim"] = head_dim
    elif head_dim != hidden // heads:
        raise ValueError(f"{path}: qwen2 needs head size hidden / heads, not {head_dim}")
    return config


def phi3_config(meta: dict[str, Any], weights: Weights, path: Path) -> dict[str, Any]:
    """mlx-lm ``phi3`` config; ``weights`` also holds the ``rope_factors_*`` extras."""
    get = _meta(meta, "phi3", path)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = hidden // heads
    if int(get("attention.key_length", head_dim)) != head_dim:
        raise ValueError(f"{path}: phi3 needs head size hidden / heads, not a separate one")
    rope_dims = int(get("rope.dimension_count", head_dim))
    partial = rope_dims / head_dim
    if int(head_dim * partial) != rope_dims or rope_dims % 2:
        raise ValueError(f"{path}: {rope_dims} rotary dims of {head_dim} cannot be expressed")
    context = int(get("context_length", 4096))
    original = int(get("rope.scaling.original_context_length", context))
    return {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        **block_sizes(get, hidden, heads, eps=1e-5, theta=10_000.0),
        "rope_scaling": _phi3_rope_scaling(get, weights, rope_dims, context, original, path),
        "partial_rotary_factor": partial,
        "max_position_embeddings": context,
        "original_max_position_embeddings": original,
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "tie_word_embeddings": "lm_head.weight" not in weights,
    }


def _phi3_rope_scaling(get: Callable[..., Any], weights: Weights, rope_dims: int, context: int,
                       original: int, path: Path) -> dict[str, Any] | None:
    """``longrope`` scaling from the ``rope_factors_*`` tensors, None without them."""
    if str(get("rope.scaling.type", "none")) not in ("none", "longrope", "su"):
        raise ValueError(f"{path}: rope scaling {get('rope.scaling.type')!r} is not supported "
                         "for phi3")
    found = [f"{name}.weight" in weights for name in PHI3_ROPE_FACTORS]
    if not any(found):
        return None
    if not all(found):
        raise ValueError(f"{path}: phi3 needs both rope_factors_long and rope_factors_short")
    long, short = (np.asarray(weights[f"{n}.weight"], np.float32).reshape(-1).tolist()
                   for n in PHI3_ROPE_FACTORS)
    if len(long) != rope_dims // 2 or len(short) != rope_dims // 2:
        raise ValueError(f"{path}: phi3 rope factors need {rope_dims // 2} values each")
    scale = context / original
    implied = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
    stored = float(get("rope.scaling.attn_factor", implied))
    if abs(stored - implied) > 1e-4:
        raise ValueError(f"{path}: phi3 rope attention factor {stored} is not the longrope "
                         f"one ({implied:.6f}) that mlx-lm applies")
    return {"type": "longrope", "long_factor": long, "short_factor": short}


def _gemma3_fix(name: str, value: np.ndarray) -> np.ndarray:
    return value - 1.0 if name.endswith("norm.weight") else value


def _llama_config(meta: dict[str, Any], weights: Weights, path: Path) -> dict[str, Any]:
    return _model_config(meta, weights, path)  # type: ignore[arg-type]


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "llama", LLAMA_IN_BLOCK, LLAMA_TOP_LEVEL, _llama_config,
                    lambda _name, value: value),
    "gemma3": Family(
        "gemma3",
        "gemma3_text",
        GEMMA3_IN_BLOCK,
        {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"},
        gemma3_config,
        _gemma3_fix,
    ),
    "qwen2": Family("qwen2", "qwen2", LLAMA_IN_BLOCK, LLAMA_TOP_LEVEL, qwen_config,
                    lambda _name, value: value),
    "qwen3": Family("qwen3", "qwen3", QWEN3_IN_BLOCK, LLAMA_TOP_LEVEL, qwen_config,
                    lambda _name, value: value),
    "phi3": Family("phi3", "phi3", PHI3_IN_BLOCK, LLAMA_TOP_LEVEL, phi3_config,
                   lambda _name, value: value, PHI3_ROPE_FACTORS),
}  # fmt: skip


def family_for(arch: str | None, path: Path) -> Family:
    if arch not in FAMILIES:
        raise ValueError(
            f"{path}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[arch]


def model_class(model_type: str) -> tuple[type, type]:
    """``(Model, ModelArgs)`` of the mlx-lm module for ``model_type``."""
    if model_type == "llama":
        from mlx_lm.models import llama as module
    elif model_type == "gemma3_text":
        from mlx_lm.models import gemma3_text as module
    elif model_type == "qwen2":
        from mlx_lm.models import qwen2 as module
    elif model_type == "qwen3":
        from mlx_lm.models import qwen3 as module
    elif model_type == "phi3":
        from mlx_lm.models import phi3 as module
    else:  # pragma: no cover - FAMILIES only names the ones above
        raise ValueError(f"no mlx-lm model for {model_type!r}")
    return module.Model, module.ModelArgs
