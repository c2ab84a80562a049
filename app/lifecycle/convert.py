"""``python -m app convert``: any language model source into a standard mlx-lm directory.

The input is a registry model id, a ``pypi:``/``package:``/``hf:`` source, a ``.gguf``
file or an mlx-lm directory. It is loaded in float32 through the server's own loaders
(GGUFs that need dequantizing go through the conversion cache, so a second convert, or a
server start, of the same file skips that work), optionally cast (``dtype``) and quantized
with mlx-lm (``quantize`` bits, ``group_size``), and written as ``config.json``,
safetensors, ``tokenizer.json`` and ``tokenizer_config.json`` (with the chat template,
when the model has one), which ``mlx_lm.load`` and ``mlx_lm.server --model`` open.

``quantize="gguf"`` keeps a GGUF's own quantization instead: its blocks become MLX
quantized layers exactly where the format allows (see :mod:`app.models.gguf.repack`).
Requantizing an already 4-bit GGUF to 4 bits from its dequantized weights stacks two
rounding errors; on Gemma 3 270M that visibly hurts, while ``gguf`` is lossless.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from app.config import Settings
from app.models.gguf import is_gguf
from app.models.loaded import FLOAT_DTYPES, LoadedLanguageModel, cast_floating

QUANT_BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


class ConvertError(ValueError):
    """The input cannot be converted; the message says why."""


def resolve_input(text: str, settings: Settings) -> Path:
    """A registry id, a source string or a path -> the local file or directory."""
    from app.lifecycle.manager import resolve_model_path
    from app.lifecycle.registry import ModelRegistry
    from app.models.sources.resolve import resolve_source

    spec = ModelRegistry.load(settings.models_file).get(text)
    if spec is not None:
        if spec.type != "lm":
            raise ConvertError(f"{text!r} is an embedding model; only language models convert")
        return resolve_model_path(spec, settings)
    if text.startswith(("pypi:", "package:", "hf:")):
        return resolve_source(
            text, model_id=text, cache_dir=settings.cache_dir, offline=settings.offline
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise ConvertError(f"{text!r} is neither a registry model id nor an existing path")
    return path


def load_model_for(path: Path, settings: Settings, weights: str) -> LoadedLanguageModel:
    if path.is_file() and (path.suffix == ".gguf" or is_gguf(path)):
        from app.models.gguf.loader import load_gguf_model

        return load_gguf_model(path, weights=weights, cache_dir=settings.cache_dir)
    if weights == "quantized":
        raise ConvertError(f"--quantize gguf needs a .gguf source, not {path}")
    if path.is_dir() and (path / "config.json").is_file():
        from app.models.mlx_dir import load_mlx_dir

        return load_mlx_dir(path, weights="float32")
    raise ConvertError(f"{path} is neither a .gguf file nor an mlx-lm model directory")


def _template_into_config(out_dir: Path, chat_template: str | None) -> None:
    """Also keep the chat template in tokenizer_config.json (older loaders read it there)."""
    if not chat_template:
        return
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = chat_template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def convert(
    source: str,
    out_dir: Path,
    *,
    settings: Settings,
    dtype: str = "float32",
    quantize: int | str | None = None,
    group_size: int = 64,
    progress: bool | None = None,
) -> Path:
    """Write ``source`` as an mlx-lm directory at ``out_dir`` (which must be new or empty)."""
    from mlx_lm.utils import quantize_model

    from app.models.mlx_dir import save_mlx_dir

    if dtype not in FLOAT_DTYPES:
        raise ConvertError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, not {dtype!r}")
    if quantize is not None and quantize not in (*QUANT_BITS, "gguf"):
        raise ConvertError(f"quantize must be 'gguf' or one of {QUANT_BITS}, not {quantize!r}")
    if group_size not in GROUP_SIZES:
        raise ConvertError(f"group size must be one of {GROUP_SIZES}, not {group_size}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConvertError(f"{out_dir} exists and is not an empty directory")

    steps = ["resolve", "load", "cast", "quantize", "save"]
    with tqdm(total=len(steps), desc="convert", unit="step",
              disable=None if progress is None else not progress) as bar:  # fmt: skip
        bar.set_postfix_str(source[:60])
        path = resolve_input(source, settings)
        bar.update()
        keep = quantize == "gguf"
        loaded = load_model_for(path, settings, "quantized" if keep else "float32")
        bar.update()
        if dtype != "float32":
            cast_floating(loaded.model, FLOAT_DTYPES[dtype])
        bar.update()
        if isinstance(quantize, int):
            loaded.model, loaded.model_config = quantize_model(
                loaded.model, loaded.model_config, group_size, quantize
            )
        bar.update()
        save_mlx_dir(loaded, out_dir)
        _template_into_config(out_dir, loaded.chat_template)
        bar.update()
    return out_dir
