"""A language model ready to serve, plus the weight-dtype policy shared by its loaders.

Loaders (:mod:`app.models.gguf.loader`, :mod:`app.models.mlx_dir`) build an mlx-lm model and a
:class:`~mlx_lm.tokenizer_utils.TokenizerWrapper` and hand them over as a
:class:`LoadedLanguageModel`. The ``weights`` knob they take picks what runs:

- ``"quantized"``: keep quantized layers quantized (what a GPU backend wants);
- ``"float32"`` / ``"float16"`` / ``"bfloat16"``: dequantize everything to that dtype;
- ``"auto"``: ``"float32"`` on the CPU backend, else ``"quantized"``. With a BLAS
  preloaded (see :mod:`app.core.blas`) dense float32 is expected to decode about twice
  as fast as MLX's CPU quantized kernels; measured without one, the two are about even.

MLX's CPU float16/bfloat16 kernels are very slow (~30x), so on CPU ``"quantized"``
computes in float32 and the ``"float16"``/``"bfloat16"`` modes are only for GPUs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map
from mlx_lm.tokenizer_utils import TokenizerWrapper

WEIGHT_CHOICES = ("auto", "float32", "float16", "bfloat16", "quantized")
FLOAT_DTYPES: dict[str, mx.Dtype] = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
}


@dataclass
class LoadedLanguageModel:
    """An mlx-lm model and tokenizer with what the server needs to know about them."""

    model: nn.Module
    tokenizer: TokenizerWrapper
    model_config: dict[str, Any]  # mlx-lm config.json contents, incl. "quantization" if any
    chat_template: str | None
    context_length: int
    source_quantization: str  # what the file holds, e.g. "q4_1", "f16", "q4/q8"
    weight_dtype: str  # what runs, e.g. "float32" or "q4/q8"
    eos_token_ids: set[int] = field(default_factory=set)

    @cached_property
    def tokenizer_vocab_size(self) -> int:
        """``len(tokenizer.vocab)``, counted once: the Hugging Face tokenizer builds the whole
        vocabulary dict on every ``.vocab`` access (~50 ms of the event loop per request)."""
        return len(self.tokenizer.vocab)


def cpu_backend() -> bool:
    """True when MLX computes on the CPU (no Metal, or the CPU is the default device)."""
    try:
        metal = mx.metal.is_available()
    except AttributeError:  # builds without the metal module
        metal = False
    return not metal or mx.default_device() == mx.cpu


def resolve_weights(weights: str) -> str:
    """Map the ``weights`` knob to a concrete mode: a float dtype name or ``"quantized"``."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_CHOICES)}, not {weights!r}")
    if weights == "auto":
        return "float32" if cpu_backend() else "quantized"
    return weights


def _quantized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in model.named_modules() if hasattr(m, "scales") and hasattr(m, "bits")]


def quantized_label(model: nn.Module) -> str | None:
    """``"q4"``, ``"q4/q8"``...: the bit widths of the quantized layers, or None if dense."""
    bits = sorted({int(m.bits) for _, m in _quantized_modules(model)})
    return "/".join(f"q{b}" for b in bits) if bits else None


def float_label(model: nn.Module) -> str:
    """The most common floating dtype among the parameters, e.g. ``"float16"``."""
    counts: Counter[str] = Counter()
    tree_map(
        lambda a: (
            counts.update({str(a.dtype).rsplit(".", 1)[-1]: a.size})
            if mx.issubdtype(a.dtype, mx.floating)
            else None
        ),
        model.parameters(),
    )
    return counts.most_common(1)[0][0] if counts else "unknown"


def cast_floating(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast every floating-point parameter of ``model`` (in place) and materialize it."""
    model.update(
        tree_map(
            lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a,
            model.parameters(),
        )
    )
    mx.eval(model.parameters())


def _scales_dtype(model: nn.Module) -> mx.Dtype | None:
    for _, module in _quantized_modules(model):
        return module.scales.dtype
    return None


def apply_weight_mode(model: nn.Module, config: dict[str, Any], mode: str) -> str:
    """Apply a resolved ``mode`` to ``model`` in place and return the ``weight_dtype`` label.

    ``"quantized"`` keeps quantized layers and computes in float32 on the CPU backend
    (MLX's CPU float16/bfloat16 kernels are ~30x slower) or in the scales' dtype
    elsewhere. Float modes dequantize every quantized layer (affine ones in the target
    dtype, so float32 is exact) and cast all floating parameters; ``config`` then loses
    its quantization keys so that it again describes the model.
    """
    if mode == "quantized":
        dtype = mx.float32 if cpu_backend() else _scales_dtype(model)
        if dtype is not None:
            cast_floating(model, dtype)
        return quantized_label(model) or float_label(model)
    dtype = FLOAT_DTYPES[mode]
    from mlx_lm.utils import dequantize_model

    for _, module in _quantized_modules(model):
        if getattr(module, "mode", "affine") == "affine":
            module.scales = module.scales.astype(dtype)
            module.biases = module.biases.astype(dtype)
    dequantize_model(model)
    cast_floating(model, dtype)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    return mode
