"""Provide the runtime libs an OpenBLAS needs (``libgfortran.so.5`` & co.) from wheels' copies.

The OpenBLAS builds on PyPI that export plain ``cblas_*``/``sgemm_`` symbols
(``ngsolve-openblas``, ``cmeel-openblas``) need ``libgfortran.so.5``, which a fresh
machine usually lacks. The wheels of mlx-cpu and numpy carry renamed copies
(``libgfortran-<hash>.so.5.0.0``, SONAME = the renamed name), which the loader will
not match for a ``DT_NEEDED`` of ``libgfortran.so.5``. We copy one into a user cache
dir with its SONAME rewritten (in place, pure Python: the new name is shorter) to
``libgfortran.so.5`` and load it first: glibc then satisfies OpenBLAS's ``DT_NEEDED``
with the already loaded object, whatever the system has.

The patched copies live in :func:`blas_cache_dir` (the probe's verdicts are cached there
too); where that directory cannot be written or mapped executable, an in-memory copy is
loaded instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .elf import _Elf, _expand_rpath, _patched_bytes, _safe_read_elf
from .symbols import _handles

_CACHE_LAYOUT = "v1"  # bump when the patched-copy format changes

_SHIMMABLE = re.compile(r"lib(gfortran|quadmath|gomp)\.so\.(\d+)")


def _provide_runtime_deps(info: _Elf, libmlx: str | None) -> list[str]:
    """Load a SONAME-matching copy of each Fortran runtime lib that ``info`` needs."""
    notes = []
    for name in info.needed:
        m = _SHIMMABLE.fullmatch(name)
        if not m:
            continue
        if _already_loaded(name):
            notes.append(f"{name} already loaded")
            continue
        wanted = info.verneeds.get(name, set())
        done = False
        for src in _bundled_copies(m.group(1), m.group(2), libmlx):
            src_info = _safe_read_elf(src)
            if src_info is None or src_info.machine != info.machine:
                continue
            if not wanted <= src_info.verdefs:
                continue
            try:
                where = _load_renamed(src, src_info, name)
            except OSError as exc:
                notes.append(f"{name}: {exc}")
                continue
            notes.append(f"{name} <- {where}")
            done = True
            break
        if not done:
            notes.append(f"{name}: no usable bundled copy, left to the system loader")
    return notes


def _already_loaded(soname: str) -> bool:
    """Is an object with this SONAME loaded? (Without dlopen's RTLD_NOLOAD, which would
    still search the file system, i.e. look at a system copy.)"""
    stem = soname.split(".so")[0]
    paths = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith(stem):
                    paths.add(fields[5].strip())
    except OSError:
        return False
    for path in paths:
        info = _safe_read_elf(path) if os.path.isfile(path) else None
        if info is not None and info.soname == soname:
            return True
    return False


def _bundled_copies(stem: str, major: str, libmlx: str | None) -> Iterator[str]:
    pat = re.compile(rf"lib{stem}-[0-9A-Za-z_]+(-[0-9A-Za-z_]+)*\.so\.{major}(\.\d+)*")
    dirs: list[str] = []
    if libmlx:  # mlx_cpu.libs first: mlx-cpu is what we are speeding up
        info = _safe_read_elf(libmlx)
        if info:
            dirs += _expand_rpath(info.rpath, libmlx)
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            try:
                dirs += sorted(str(p) for p in Path(entry).glob("*.libs") if p.is_dir())
            except OSError:
                continue
    seen = set()
    for d in dirs:
        real = os.path.realpath(d)
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        for name in sorted(os.listdir(real)):
            if pat.fullmatch(name):
                yield os.path.join(real, name)


def _load_renamed(src: str, info: _Elf, soname: str) -> str:
    """Load a copy of ``src`` whose SONAME is ``soname``; returns where it came from."""
    src_dir = os.path.dirname(src)
    for dep in info.needed:  # bundled siblings (libquadmath-<hash>): load by path
        sibling = os.path.join(src_dir, dep)
        if os.path.isfile(sibling):
            _handles.append(ctypes.CDLL(sibling))
    errors = []
    try:
        path = _cached_copy(src, info, soname)
        _handles.append(ctypes.CDLL(path))
        return f"{path} (copy of {src})"
    except Exception as exc:  # read-only home, noexec mount, ...
        errors.append(f"cache: {exc}")
    try:  # an anonymous in-memory file needs no writable or exec-mounted directory
        fd = os.memfd_create(soname, 0)
        try:
            os.write(fd, _patched_bytes(src, info, soname))
            _handles.append(ctypes.CDLL(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
        return f"in-memory copy of {src}"
    except Exception as exc:
        errors.append(f"memfd: {exc}")
    raise OSError(f"cannot provide {soname} from {src}: {'; '.join(errors)}")


def blas_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx-openai-server-lab" / "blas"


def _cached_copy(src: str, info: _Elf, soname: str) -> str:
    st = os.stat(src)
    key = hashlib.sha256(
        f"{_CACHE_LAYOUT}\0{os.path.realpath(src)}\0{st.st_size}\0{st.st_mtime_ns}\0{soname}"
        .encode()
    ).hexdigest()[:16]
    target_dir = blas_cache_dir() / f"{os.path.basename(src)}-{key}"
    target = target_dir / soname
    if target.is_file() and target.stat().st_size == st.st_size:
        cached = _safe_read_elf(str(target))
        if cached is not None and cached.soname == soname:
            return str(target)
    _atomic_write(target, _patched_bytes(src, info, soname), mode=0o755)
    return str(target)


def _atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file + rename: concurrent starters each write identical bytes."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
