"""GGUF files that ``mx.load`` cannot read (K-quants, other families): dequantize, cache, load.

Every tensor is dequantized to float32 with ``gguf-py`` (:mod:`app.models.gguf.reader`),
renamed and fixed for the mlx-lm model (:mod:`app.models.gguf.arch`), checked by loading
it into that model, and written once as a standard mlx-lm directory (``config.json``,
safetensors, ``tokenizer.json``...) under ``<cache_dir>/converted/<sha256 of the GGUF>/``.
Later loads read that directory: no re-parsing of a 262k-token vocabulary, no
dequantization. ``gguf_source.json`` there records each layer's GGUF tensor and type, so
that the ``quantized`` weight mode (the GPU default) can rebuild MLX quantized layers from
the GGUF's own blocks (:mod:`app.models.gguf.repack`: exact for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/
Q4_K/Q5_K, 8-bit otherwise), group size 32, scales in float32.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from gguf import GGMLQuantizationType
from tqdm import tqdm

from app.models.gguf.arch import family_for, model_class
from app.models.gguf.loader import _source_quantization
from app.models.gguf.reader import DEQUANT_TYPES, GGUFFile
from app.models.gguf.repack import AFFINE, FALLBACK_BITS, GROUP_SIZE, affine_codes, mlx_bits
from app.models.loaded import LoadedLanguageModel, apply_weight_mode, resolve_weights

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
SIDECAR = "gguf_source.json"
MARKER = ".complete"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _memo_digest(path: Path, cache_root: Path) -> str:
    """sha256 of ``path``, remembered per (path, size, mtime, inode) so reloads skip hashing."""
    st = path.stat()
    key = hashlib.sha256(
        f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()
    ).hexdigest()
    memo = cache_root / ".digests" / key
    try:
        value = memo.read_text().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    value = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".{os.getpid()}")
    tmp.write_text(value)
    os.replace(tmp, memo)
    return value


# --- conversion --------------------------------------------------------------------


def convert_gguf(path: Path, out_dir: Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Write ``path`` as a float32 mlx-lm directory; returns the sidecar record.

    ``progress``: show a tqdm bar (None: only when stderr is a terminal).
    """
    from mlx_lm.utils import save_config, save_model

    from app.models.gguf.tokenizer import build_hf_tokenizer, eos_token_ids

    path, out_dir = Path(path), Path(out_dir)
    started = time.perf_counter()
    with GGUFFile(path) as gf:
        meta = gf.metadata
        family = family_for(gf.architecture, path)
        types = {t.name: t.type_name for t in gf.tensors}
        bad = sorted({t.type_name for t in gf.tensors if t.kind not in DEQUANT_TYPES})
        if bad:
            raise ValueError(f"{path}: tensor types {', '.join(bad)} cannot be dequantized")
        unknown = [t.name for t in gf.tensors if family.rename(t.name) is None]
        if unknown:
            raise ValueError(
                f"{path}: unsupported {family.arch} tensors: {', '.join(sorted(unknown)[:5])}"
            )
        weights: dict[str, mx.array] = {}
        extras: dict[str, np.ndarray] = {}  # tensors the config reads (phi3's rope factors)
        layers: dict[str, dict[str, str]] = {}  # module -> GGUF tensor and type
        bar = tqdm(gf.tensors, desc=f"dequantizing {path.name}", unit="tensor",
                   disable=None if progress is None else not progress, leave=False)
        for info in bar:
            name = family.rename(info.name)
            assert name is not None
            if name.removesuffix(".weight") in family.extras:
                extras[name] = gf.dequantize(info)
                continue
            weights[name] = mx.array(family.fix(info.name, gf.dequantize(info)))
            mx.eval(weights[name])
            if name.endswith(".weight") and len(info.shape) == 2:
                layers[name.removesuffix(".weight")] = {"tensor": info.name,
                                                        "type": info.type_name}
    config = family.config(meta, {**weights, **extras}, path)
    model_cls, args_cls = model_class(family.model_type)
    model = model_cls(args_cls.from_dict(config))
    if hasattr(model, "sanitize"):  # mlx-lm's phi3 has none
        weights = model.sanitize(weights)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{path}: tensors do not match mlx-lm's {family.model_type}: {exc}"
        ) from exc
    del weights

    context = int(config["max_position_embeddings"])
    eos_ids = eos_token_ids(meta)
    config["eos_token_id"] = sorted(eos_ids)
    config["bos_token_id"] = meta.get("tokenizer.ggml.bos_token_id")
    hf = build_hf_tokenizer(meta, source=str(path), context_length=context)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(out_dir, model, donate_model=True)
    save_config(config, out_dir / "config.json")
    hf.save_pretrained(str(out_dir))
    record = {
        "converter_version": CONVERTER_VERSION,
        "gguf": path.name,
        "architecture": family.arch,
        "source_quantization": _source_quantization(meta, types),
        "layers": layers,
        "eos_token_ids": sorted(eos_ids),
    }
    (out_dir / SIDECAR).write_text(json.dumps(record, indent=1) + "\n")
    log.info("converted %s (%s) to %s in %.1fs", path.name, family.arch, out_dir,
             time.perf_counter() - started)
    return record


def _complete(folder: Path) -> bool:
    try:
        record = json.loads((folder / SIDECAR).read_text())
    except (OSError, ValueError):
        return False
    return (folder / MARKER).exists() and record.get("converter_version") == CONVERTER_VERSION


def converted_dir(
    path: Path, cache_dir: Path, *, sha256: str | None = None, progress: bool | None = None
) -> Path:
    """``<cache_dir>/converted/<sha256>/``, converting ``path`` into it once (file-locked)."""
    root = Path(cache_dir) / "converted"
    digest = sha256 or _memo_digest(Path(path), root)
    final = root / digest
    if _complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting the same file
        if _complete(final):
            return final
        with tempfile.TemporaryDirectory(dir=root, prefix=".convert-") as tmp:
            staging = Path(tmp) / "out"
            convert_gguf(Path(path), staging, progress=progress)
            record = json.loads((staging / SIDECAR).read_text())
            record["gguf_sha256"] = digest
            (staging / SIDECAR).write_text(json.dumps(record, indent=1) + "\n")
            (staging / MARKER).write_text(digest + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
    return final


# --- loading -----------------------------------------------------------------------


def requantize(
    model: nn.Module,
    config: dict[str, Any],
    layers: dict[str, dict[str, str]],
    gguf_path: Path | None,
) -> None:
    """Quantize the layers the GGUF held quantized (dense ones stay dense), from the GGUF's
    own blocks where :mod:`app.models.gguf.repack` can (``gguf_path`` given), else 8-bit."""
    plan: dict[str, int] = {}
    for name, module in model.named_modules():
        entry = layers.get(name)
        weight = getattr(module, "weight", None)
        if entry is None or weight is None or not hasattr(module, "to_quantized"):
            continue
        kind = GGMLQuantizationType[entry["type"]]
        bits = mlx_bits(kind)
        if bits is not None and weight.shape[-1] % GROUP_SIZE == 0:
            plan[name] = bits if gguf_path is not None or kind not in AFFINE else FALLBACK_BITS
    if not plan:
        return
    params = {p: {"group_size": GROUP_SIZE, "bits": b, "mode": "affine"} for p, b in plan.items()}
    nn.quantize(model, class_predicate=lambda p, _m: params.get(p, False))
    if gguf_path is not None:
        _load_exact(model, {p: layers[p] for p in plan}, gguf_path)
    default = Counter(plan.values()).most_common(1)[0][0]
    dense = [p for p, m in model.named_modules() if hasattr(m, "to_quantized") and p not in plan]
    config["quantization"] = {
        "group_size": GROUP_SIZE,
        "bits": default,
        "mode": "affine",
        **{p: q for p, q in params.items() if q["bits"] != default},
        **dict.fromkeys(dense, False),
    }
    config["quantization_config"] = config["quantization"]


def _load_exact(model: nn.Module, layers: dict[str, dict[str, str]], gguf_path: Path) -> None:
    modules = dict(model.named_modules())
    with GGUFFile(gguf_path) as gf:
        infos = {t.name: t for t in gf.tensors}
        for name, entry in layers.items():
            kind = GGMLQuantizationType[entry["type"]]
            info = infos.get(entry["tensor"])
            if kind not in AFFINE or info is None or info.kind != kind:
                continue
            packed = affine_codes(gf.raw(info), kind)
            module = modules[name]
            if packed.weight.shape != module.weight.shape or packed.bits != module.bits:
                raise ValueError(f"{gguf_path}: {entry['tensor']} does not fit {name}")
            module.weight = mx.array(packed.weight)
            module.scales = mx.array(packed.scales)
            module.biases = mx.array(packed.biases)
            mx.eval(module.weight, module.scales, module.biases)


def load_converted(
    folder: Path, *, weights: str = "auto", gguf_path: Path | None = None
) -> LoadedLanguageModel:
    """Load a directory written by :func:`convert_gguf` under the ``weights`` policy.

    ``gguf_path``: the GGUF it came from, for exact requantization in ``quantized`` mode.
    """
    from app.models.mlx_dir import load_mlx_dir

    mode = resolve_weights(weights)
    record = json.loads((Path(folder) / SIDECAR).read_text())
    loaded = load_mlx_dir(folder, weights="float32" if mode == "quantized" else mode)
    if mode == "quantized":
        requantize(loaded.model, loaded.model_config, record.get("layers", {}), gguf_path)
        loaded.weight_dtype = apply_weight_mode(loaded.model, loaded.model_config, "quantized")
    mx.eval(loaded.model.parameters())
    loaded.source_quantization = record.get("source_quantization", loaded.source_quantization)
    return loaded


def load_converted_gguf(
    path: Path, *, weights: str = "auto", cache_dir: Path | None = None
) -> LoadedLanguageModel:
    """Load a GGUF through the conversion cache (a temporary directory without one)."""
    resolve_weights(weights)  # fail on a bad choice before any work
    started = time.perf_counter()
    if cache_dir is not None:
        folder = converted_dir(Path(path), cache_dir)
        loaded = load_converted(folder, weights=weights, gguf_path=Path(path))
    else:
        with tempfile.TemporaryDirectory(prefix="gguf-convert-") as tmp:
            convert_gguf(Path(path), Path(tmp))
            (Path(tmp) / MARKER).touch()
            loaded = load_converted(Path(tmp), weights=weights, gguf_path=Path(path))
    log.info("loaded %s through the conversion cache in %.1fs", Path(path).name,
             time.perf_counter() - started)
    return loaded
