"""CTranslate2 Whisper (faster-whisper's format) into MLX Whisper weights, cached.

CTranslate2 fuses the self-attention projections (``linear_0`` = query, key, value) and
the cross-attention key/value (``linear_1``), names layer norms ``gamma``/``beta`` and
stores convolutions as (out, in, width); :func:`mlx_weights` splits, renames and
transposes them onto :class:`~app.models.whisper.model.Whisper`. The result is written
once as ``<cache>/converted/whisper-<sha256 of model.bin>/`` (``model.safetensors`` in the
file's own dtype, ``config.json`` with the dimensions and the decoding hints of the
CTranslate2 ``config.json``, ``tokenizer.json``); later loads read only that folder.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from app.models.build_cache import build_once
from app.models.whisper.ct2 import CT2FormatError, CT2Model, read_ct2
from app.models.whisper.model import Whisper, WhisperDims

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
MARKER = ".complete"
COMPANIONS = ("config.json", "tokenizer.json")  # next to model.bin in faster-whisper folders
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")
_LINEAR = {"ffn/linear_0": "mlp1", "ffn/linear_1": "mlp2"}
_NORMS = {"self_attention/layer_norm": "attn_ln", "attention/layer_norm": "cross_attn_ln",
          "ffn/layer_norm": "mlp_ln"}
_PARAM = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}


def _scalar(model: CT2Model, name: str) -> int:
    return int(np.asarray(model.get(name)).reshape(-1)[0])


def dims_of(model: CT2Model) -> WhisperDims:
    v = model.variables

    def layers(side: str) -> int:
        return len({m.group(2) for name in v if (m := _LAYER.match(name)) and m.group(1) == side})

    if model.spec_name != "WhisperSpec":
        raise CT2FormatError(f"a {model.spec_name} is not a Whisper model")
    for flag, wanted in (("decoder/scale_embeddings", 0), ("decoder/pre_norm", 1)):
        if flag in v and _scalar(model, flag) != wanted:
            raise CT2FormatError(f"{flag}={_scalar(model, flag)} is not Whisper's layout")
    conv1 = v["encoder/conv1/weight"]
    return WhisperDims(
        n_mels=conv1.shape[1],
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=conv1.shape[0],
        n_audio_head=_scalar(model, "encoder/num_heads"),
        n_audio_layer=layers("encoder"),
        n_vocab=v["decoder/embeddings/weight"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        n_text_state=v["decoder/embeddings/weight"].shape[1],
        n_text_head=_scalar(model, "decoder/num_heads"),
        n_text_layer=layers("decoder"),
    )


def _layer_weights(side: str, index: str, rest: str, array: np.ndarray) -> dict[str, np.ndarray]:
    prefix = f"{side}.blocks.{index}"
    module, _, param = rest.rpartition("/")
    if param not in _PARAM:
        raise CT2FormatError(f"unexpected variable {side}/layer_{index}/{rest}")
    param = _PARAM[param]
    if module in _NORMS:
        return {f"{prefix}.{_NORMS[module]}.{param}": array}
    if module in _LINEAR:
        return {f"{prefix}.{_LINEAR[module]}.{param}": array}
    if module == "self_attention/linear_0":  # fused query, key, value
        q, k, v = np.split(array, 3, axis=0)
        return {f"{prefix}.attn.{n}.{param}": a for n, a in
                (("query", q), ("key", k), ("value", v))}
    if module == "self_attention/linear_1":
        return {f"{prefix}.attn.out.{param}": array}
    if module == "attention/linear_0":
        return {f"{prefix}.cross_attn.query.{param}": array}
    if module == "attention/linear_1":  # fused cross-attention key, value
        k, v = np.split(array, 2, axis=0)
        return {f"{prefix}.cross_attn.key.{param}": k, f"{prefix}.cross_attn.value.{param}": v}
    if module == "attention/linear_2":
        return {f"{prefix}.cross_attn.out.{param}": array}
    raise CT2FormatError(f"unexpected variable {side}/layer_{index}/{rest}")


_TOP_LEVEL = {
    "encoder/conv1/bias": "encoder.conv1.bias",
    "encoder/conv2/bias": "encoder.conv2.bias",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "encoder/layer_norm/gamma": "encoder.ln_post.weight",
    "encoder/layer_norm/beta": "encoder.ln_post.bias",
    "decoder/embeddings/weight": "decoder.token_embedding.weight",
    "decoder/position_encodings/encodings": "decoder.positional_embedding",
    "decoder/layer_norm/gamma": "decoder.ln.weight",
    "decoder/layer_norm/beta": "decoder.ln.bias",
}
_IGNORED_SCALARS = {"activation", "alibi", "alignment_heads", "alignment_layer", "num_heads",
                    "pre_norm", "scale_embeddings", "start_from_zero_embedding",
                    "embeddings_merge", "layernorm_embedding", "rotary_dim"}


def mlx_weights(model: CT2Model) -> dict[str, np.ndarray]:
    """The CTranslate2 variables under :class:`Whisper`'s parameter names (numpy views)."""
    out: dict[str, np.ndarray] = {}
    for name, array in model.variables.items():
        if name in _TOP_LEVEL:
            out[_TOP_LEVEL[name]] = array
        elif name in ("encoder/conv1/weight", "encoder/conv2/weight"):
            out[name.replace("/", ".")] = array.transpose(0, 2, 1)  # (out, width, in) for MLX
        elif (m := _LAYER.match(name)) is not None:
            out.update(_layer_weights(m.group(1), m.group(2), m.group(3), array))
        elif name.split("/")[-1] in _IGNORED_SCALARS and array.ndim == 0:
            continue
        else:
            raise CT2FormatError(f"unexpected variable {name}")
    return out


def convert_ct2(model_bin: Path, companions: Path | None, out_dir: Path) -> None:
    """Write ``model_bin`` (with ``config.json``/``tokenizer.json`` from ``companions``)
    as an MLX Whisper folder in ``out_dir``; checks that the weights fit the module."""
    started = time.perf_counter()
    ct2 = read_ct2(model_bin)
    dims = dims_of(ct2)
    weights = mlx_weights(ct2)
    module = Whisper(dims)
    arrays = {k: mx.array(np.ascontiguousarray(v)) for k, v in weights.items()}
    try:
        module.load_weights(list(arrays.items()), strict=True)
    except ValueError as exc:
        raise CT2FormatError(f"{model_bin}: weights do not fit the Whisper module: {exc}") from exc
    mx.save_safetensors(str(out_dir / "model.safetensors"), arrays)
    hints: dict[str, Any] = {}
    if companions is not None:
        for name in COMPANIONS:
            if (companions / name).is_file():
                shutil.copyfile(companions / name, out_dir / name)
        if (companions / "config.json").is_file():
            hints = json.loads((companions / "config.json").read_text())
    config = {"converter_version": CONVERTER_VERSION, "dims": dims.to_dict(),
              "source": model_bin.name, "decoding": hints}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    log.info("converted %s to MLX Whisper in %.1fs", model_bin, time.perf_counter() - started)


def _complete(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (folder / MARKER).exists() and config.get("converter_version") == CONVERTER_VERSION


def converted_whisper_dir(
    model_bin: Path, companions: Path | None, cache_dir: Path, sha256: str
) -> Path:
    """``<cache_dir>/converted/whisper-<sha256>/``, converting ``model_bin`` into it once."""

    def build(staging: Path) -> None:
        convert_ct2(Path(model_bin), companions, staging)
        if not (staging / "tokenizer.json").is_file():
            raise CT2FormatError(f"no tokenizer.json next to {model_bin} (in {companions})")
        (staging / MARKER).write_text(sha256 + "\n")

    return build_once(Path(cache_dir) / "converted", f"whisper-{sha256}", build, _complete)


def cached_whisper_dir(cache_dir: Path, sha256: str) -> Path | None:
    """The converted folder if an earlier load built it (then no source is needed)."""
    folder = Path(cache_dir) / "converted" / f"whisper-{sha256}"
    return folder if _complete(folder) else None
