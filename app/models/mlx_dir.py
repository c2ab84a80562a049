"""Load and save local mlx-lm model directories (config.json + safetensors + tokenizer files).

Loading goes through mlx-lm's own ``load_model``/``load_tokenizer`` on a path that is
checked to exist first (given a missing path, mlx-lm would try the Hugging Face Hub).
Saving writes what ``mlx_lm.load`` / ``mlx_lm.server --model DIR`` expect, so a GGUF
loaded by :mod:`app.models.gguf.loader` can be served by stock mlx-lm for comparison.
"""

from __future__ import annotations

import copy
from pathlib import Path

from mlx_lm.utils import load_model, load_tokenizer, save_config, save_model

from app.models.loaded import (
    FLOAT_DTYPES,
    LoadedLanguageModel,
    apply_weight_mode,
    cast_floating,
    float_label,
    quantized_label,
    resolve_weights,
)

_SHORT_FLOAT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
DEFAULT_CONTEXT = 2048


def load_mlx_dir(path: Path, *, weights: str = "auto") -> LoadedLanguageModel:
    """Load an mlx-lm directory; ``weights`` as in :func:`app.models.loaded.resolve_weights`.

    With ``"auto"`` on the CPU backend a quantized directory is dequantized to float32;
    ``"quantized"`` keeps what the directory holds (computing in float32 on CPU).
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: not an mlx-lm model directory (no config.json)")
    mode = resolve_weights(weights)
    try:
        model, config = load_model(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{path}: cannot load the mlx-lm model: {exc}") from exc
    # An existing local directory: neither mlx-lm nor transformers goes to the Hub.
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    stored = quantized_label(model) or float_label(model)
    weight_dtype = apply_weight_mode(model, config, mode)
    context = config.get("max_position_embeddings") or DEFAULT_CONTEXT
    return LoadedLanguageModel(
        model=model,
        tokenizer=tokenizer,
        model_config=config,
        chat_template=tokenizer.chat_template,
        context_length=int(context),
        source_quantization=_SHORT_FLOAT.get(stored, stored),
        weight_dtype=weight_dtype,
        eos_token_ids=set(tokenizer.eos_token_ids),
    )


def save_mlx_dir(loaded: LoadedLanguageModel, out_dir: Path, *, dtype: str | None = None) -> None:
    """Write ``loaded`` as an mlx-lm directory that ``mlx_lm.load(out_dir)`` reproduces.

    Weights are saved as loaded (float32 stays float32, quantized stays quantized), so the
    reloaded model decodes greedily to the same tokens. ``dtype`` ("float16"...) casts the
    floating parameters first, to save space; note that this casts ``loaded.model`` too.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, not {dtype!r}")
        cast_floating(loaded.model, FLOAT_DTYPES[dtype])
    save_model(out_dir, loaded.model, donate_model=False)

    config = copy.deepcopy(loaded.model_config)
    config["eos_token_id"] = sorted(loaded.eos_token_ids)
    save_config(config, out_dir / "config.json")

    hf_tokenizer = loaded.tokenizer._tokenizer  # the transformers tokenizer inside the wrapper
    if hf_tokenizer.chat_template is None and loaded.chat_template is not None:
        hf_tokenizer.chat_template = loaded.chat_template
    hf_tokenizer.save_pretrained(str(out_dir))
