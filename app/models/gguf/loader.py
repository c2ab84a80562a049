"""Load a GGUF file into an mlx-lm model and tokenizer.

Two paths. Llama GGUFs whose tensor types ``mx.load`` reads faithfully load directly (this
module). Everything else (K-quants such as Q4_K/Q5_K, Q5_0, other families such as Gemma 3)
is dequantized with ``gguf-py`` and converted once into a cached mlx-lm directory
(:mod:`app.models.gguf.convert`).

``mx.load`` reads GGUF natively: F32/F16 tensors come back dense, and Q4_0/Q4_1/Q8_0
tensors as MLX affine triples (``X.weight``/``X.scales``/``X.biases``, group size 32), so
no weight repacking is needed here. GGUF stores q/k weights permuted for llama.cpp's
interleaved RoPE, which is why the model runs with ``rope_traditional=True``.

Caveat: for other quantization types ``mx.load`` silently converts to float16, and for
some (Q4_K at least) the values are wrong, so the tensor types are checked from the file
header first and anything not known to load correctly takes the dequantizing path.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType
from mlx_lm.models import llama

from app.models.gguf.tokenizer import build_tokenizer
from app.models.loaded import (
    LoadedLanguageModel,
    apply_weight_mode,
    resolve_weights,
)

GROUP_SIZE = 32  # every GGUF block format mx.load maps to MLX triples uses 32
# Types mx.load returns faithfully (Q6_K: dequantized to float16, checked against gguf-py).
SUPPORTED_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q6_K"})
SUPPORTED_ARCHITECTURES = frozenset({"llama"})

_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_IN_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)")
_SUFFIXES = ("weight", "scales", "biases", "bias")

# --- file header -------------------------------------------------------------------

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


class _Header:
    """Reads the GGUF header just far enough for the architecture and tensor types.

    ``gguf.GGUFReader`` would do, but it takes seconds on a 49k-token vocabulary.
    """

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def _unpack(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        size = self._unpack("Q")
        self.pos += size
        return bytes(self.buf[self.pos - size : self.pos]).decode("utf-8", "replace")

    def _skip(self, kind: int) -> None:
        if kind == _STRING:
            size = self._unpack("Q")  # read before `+=`, which would use the stale position
            self.pos += size
        elif kind == _ARRAY:
            item, count = self._unpack("I"), self._unpack("Q")
            if item in _SCALAR_SIZES:
                self.pos += _SCALAR_SIZES[item] * count
            else:
                for _ in range(count):
                    self._skip(item)
        else:
            self.pos += _SCALAR_SIZES[kind]

    def read(self) -> tuple[str | None, dict[str, str]]:
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("not a GGUF file (bad magic)")
        self.pos = 4
        version = self._unpack("I")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = self._unpack("Q"), self._unpack("Q")
        arch = None
        for _ in range(n_kv):
            key, kind = self._string(), self._unpack("I")
            if key == "general.architecture" and kind == _STRING:
                arch = self._string()
            else:
                self._skip(kind)
        types: dict[str, str] = {}
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("I")
            self.pos += 8 * n_dims
            kind = self._unpack("I")
            self.pos += 8  # data offset
            try:
                types[name] = GGMLQuantizationType(kind).name
            except ValueError:
                types[name] = f"type{kind}"
        return arch, types


def read_header(path: Path) -> tuple[str | None, dict[str, str]]:
    """``(general.architecture, {tensor name: GGML type name})`` from a GGUF file."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Header(buf).read()
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: truncated or corrupt GGUF header ({exc})") from exc
    except ValueError as exc:  # bad magic / version, or an empty file mmap refuses
        raise ValueError(f"{path}: {exc}") from exc


def _needs_conversion(path: Path, arch: str | None, types: dict[str, str]) -> bool:
    """False for the ``mx.load`` path, True for the dequantizing one; raises if neither fits."""
    from app.models.gguf.arch import FAMILIES
    from app.models.gguf.reader import DEQUANT_TYPES

    if arch not in SUPPORTED_ARCHITECTURES and arch not in FAMILIES:
        supported = sorted(SUPPORTED_ARCHITECTURES | set(FAMILIES))
        raise ValueError(
            f"{path}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(supported)})"
        )
    readable = {t.name for t in DEQUANT_TYPES}
    bad: dict[str, list[str]] = {}
    for name, kind in types.items():
        if kind not in readable:
            bad.setdefault(kind, []).append(name)
    if bad:
        detail = "; ".join(f"{k} ({len(v)} tensors, e.g. {v[0]})" for k, v in sorted(bad.items()))
        raise ValueError(
            f"{path}: unsupported GGUF tensor types: {detail}; supported types are "
            f"{', '.join(sorted(readable))}"
        )
    return arch not in SUPPORTED_ARCHITECTURES or not set(types.values()) <= SUPPORTED_TYPES


# --- metadata and config -----------------------------------------------------------


def plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``mx.load`` metadata with mx.arrays turned into Python scalars and lists."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, mx.array):
            value = value.item() if value.ndim == 0 else value.tolist()
        out[key] = value
    return out


def _f32(value: Any) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.99e-06)."""
    return float(str(np.float32(value)))


def _source_quantization(meta: dict[str, Any], types: dict[str, str]) -> str:
    file_type = meta.get("general.file_type")
    try:
        name = LlamaFileType(int(file_type)).name  # type: ignore[arg-type]
        return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
    except (TypeError, ValueError):
        kinds = Counter(k for n, k in types.items() if n.endswith(".weight") and k != "F32")
        return (kinds.most_common(1)[0][0] if kinds else "F32").lower()


def block_sizes(
    get: Callable[..., Any], hidden: int, heads: int, eps: float, theta: float
) -> dict[str, Any]:
    """The config keys every family shares: sizes, layer count, norm epsilon, RoPE base
    (``get`` reads the family's GGUF metadata; ``eps``/``theta``: its defaults)."""
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "rms_norm_eps": _f32(get("attention.layer_norm_rms_epsilon", eps)),
        "rope_theta": _f32(get("rope.freq_base", theta)),
    }


def _model_config(meta: dict[str, Any], weights: dict[str, mx.array], path: Path) -> dict[str, Any]:
    """The mlx-lm ``llama`` config.json equivalent of the GGUF hyperparameters."""
    arch = meta["general.architecture"]

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{path}: missing GGUF metadata {arch}.{key}")
        if isinstance(value, list):
            raise ValueError(f"{path}: per-layer {arch}.{key} is not supported")
        return value

    if int(get("expert_count", 0)) > 0:
        raise ValueError(f"{path}: mixture-of-experts llama GGUFs are not supported")
    if "rope_freqs.weight" in weights:
        raise ValueError(
            f"{path}: rope frequency factors (rope_freqs, Llama 3.1 style) are not supported"
        )
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{path}: partial rotary embeddings are not supported")
    scaling = str(meta.get(f"{arch}.rope.scaling.type", "none"))
    rope_scaling = None
    if scaling == "linear":
        rope_scaling = {"type": "linear", "factor": _f32(get("rope.scaling.factor"))}
    elif scaling != "none":
        raise ValueError(f"{path}: rope scaling {scaling!r} is not supported")
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **block_sizes(get, hidden, heads, eps=1e-5, theta=10000.0),
        "head_dim": head_dim,
        "rope_traditional": True,  # GGUF permutes q/k for interleaved RoPE
        "rope_scaling": rope_scaling,
        "max_position_embeddings": int(get("context_length", 2048)),
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in weights,
        "mlp_bias": "model.layers.0.mlp.gate_proj.bias" in weights,
    }


# --- weights -----------------------------------------------------------------------


def _rename(raw: dict[str, mx.array], path: Path) -> dict[str, mx.array]:
    """GGUF tensor names (``blk.3.attn_q.scales``) to mlx-lm llama names."""
    out: dict[str, mx.array] = {}
    unknown: list[str] = []
    for name, value in raw.items():
        base, _, suffix = name.rpartition(".")
        block = _BLOCK_RE.fullmatch(base)
        if suffix not in _SUFFIXES:
            unknown.append(name)
        elif block and block.group(2) in _IN_BLOCK:
            out[f"model.layers.{block.group(1)}.{_IN_BLOCK[block.group(2)]}.{suffix}"] = value
        elif base in _TOP_LEVEL:
            out[f"{_TOP_LEVEL[base]}.{suffix}"] = value
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{path}: unsupported llama tensors: {', '.join(sorted(unknown)[:5])}")
    if "model.embed_tokens.weight" not in out:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    return out


def _quantized_bits(weights: dict[str, mx.array]) -> dict[str, int]:
    """Module path -> bits for each MLX quantized triple (packed width / scales width)."""
    bits = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            module = name.removesuffix(".scales")
            bits[module] = weights[f"{module}.weight"].shape[-1] // scales.shape[-1]
    return bits


def _build_model(config: dict[str, Any], weights: dict[str, mx.array], path: Path) -> nn.Module:
    """Construct the mlx-lm model, quantizing exactly the layers the file holds quantized."""
    model = llama.Model(llama.ModelArgs.from_dict(config))
    bits = _quantized_bits(weights)
    if bits:
        default = Counter(bits.values()).most_common(1)[0][0]
        params = {
            p: {"group_size": GROUP_SIZE, "bits": b, "mode": "affine"} for p, b in bits.items()
        }
        dense = [
            p for p, m in model.named_modules() if hasattr(m, "to_quantized") and p not in bits
        ]
        nn.quantize(
            model,
            group_size=GROUP_SIZE,
            bits=default,
            class_predicate=lambda p, _m: params.get(p, False),
        )
        config["quantization"] = {
            "group_size": GROUP_SIZE,
            "bits": default,
            "mode": "affine",
            **{p: q for p, q in params.items() if q["bits"] != default},
            **dict.fromkeys(dense, False),
        }
        config["quantization_config"] = config["quantization"]
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise ValueError(f"{path}: tensors do not match the llama model: {exc}") from exc
    model.eval()
    return model


def load_gguf_model(
    path: Path, *, weights: str = "auto", cache_dir: Path | None = None
) -> LoadedLanguageModel:
    """Load a GGUF file; ``weights`` is one of :data:`app.models.loaded.WEIGHT_CHOICES`.

    ``cache_dir``: where converted GGUFs are kept (``<cache_dir>/converted/<sha256>/``);
    without one a GGUF that needs converting is converted again on every load.
    """
    path = Path(path)
    mode = resolve_weights(weights)
    arch, types = read_header(path)
    if _needs_conversion(path, arch, types):
        from app.models.gguf.convert import load_converted_gguf

        return load_converted_gguf(path, weights=weights, cache_dir=cache_dir)
    try:
        raw, raw_meta = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: MLX cannot read this GGUF file: {exc}") from exc
    meta = plain_metadata(raw_meta)
    tensors = _rename(raw, path)
    del raw
    config = _model_config(meta, tensors, path)
    model = _build_model(config, tensors, path)
    del tensors
    weight_dtype = apply_weight_mode(model, config, mode)
    mx.eval(model.parameters())

    context_length = int(config["max_position_embeddings"])
    tokenizer, eos_ids = build_tokenizer(meta, source=str(path), context_length=context_length)
    config["eos_token_id"] = sorted(eos_ids)
    config["bos_token_id"] = meta.get("tokenizer.ggml.bos_token_id")
    chat_template = meta.get("tokenizer.chat_template")
    return LoadedLanguageModel(
        model=model,
        tokenizer=tokenizer,
        model_config=config,
        chat_template=chat_template,
        context_length=context_length,
        source_quantization=_source_quantization(meta, types),
        weight_dtype=weight_dtype,
        eos_token_ids=eos_ids,
    )
