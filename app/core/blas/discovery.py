"""Find the OpenBLAS libraries installed here and check each one against this CPU.

Some builds are not ``DYNAMIC_ARCH`` (cmeel-openblas 0.3.31 targets SKYLAKEX on
x86_64 and NEOVERSEN2 on aarch64) and die with SIGILL on CPUs without those
instructions. So each candidate is first loaded in a child process that runs a few
small GEMMs (a SIGILL kills only the child) and reports ``openblas_get_config()``;
non-DYNAMIC_ARCH targets are then checked against ``/proc/cpuinfo``. The verdict is
cached per library file and CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .elf import _process_machine, _read_elf, _safe_read_elf
from .runtime_deps import _atomic_write, _provide_runtime_deps, blas_cache_dir
from .symbols import _openblas_call_str


@dataclass(frozen=True)
class OpenBlasCandidate:
    """An OpenBLAS shared library found on this machine."""

    path: str
    source: str  # distribution or "system"
    config: str | None  # the "OpenBLAS 0.3.x DYNAMIC_ARCH ..." string embedded in it
    usable: bool  # ELF machine matches and the CPU can run it
    reason: str  # why (not) usable
    verified: bool  # True: known safe (DYNAMIC_ARCH or a known target whose flags we have)


# ------------------------------------------------------------------ find OpenBLAS


def find_openblas_candidates(probe: bool = True) -> list[OpenBlasCandidate]:
    """Installed OpenBLAS libraries, best first, each checked against this CPU.

    With ``probe`` each one is loaded in a child process first (result cached).
    """
    return sorted(_iter_candidates(probe, None), key=lambda c: (not c.usable, not c.verified))


def _iter_candidates(probe: bool, libmlx: str | None) -> Iterator[OpenBlasCandidate]:
    seen: set[str] = set()
    for path, source in _candidate_paths():
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        yield _inspect_candidate(path, source, probe, libmlx)


def _candidate_paths() -> Iterator[tuple[str, str]]:
    # ngsolve-openblas: DYNAMIC_ARCH, x86_64. Located without importing it (its
    # __init__ loads the library RTLD_GLOBAL as a side effect).
    try:
        spec = importlib.util.find_spec("ngsolve_openblas")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            for p in sorted(Path(loc).glob("libopenblas*.so*")):
                yield str(p), "ngsolve-openblas"
    # cmeel-openblas: site-packages/cmeel.prefix/lib/libopenblas.so.0
    rel = "cmeel.prefix/lib/libopenblas.so.0"
    for entry in sys.path:
        if entry and os.path.isfile(os.path.join(entry, rel)):
            yield os.path.join(entry, rel), "cmeel-openblas"
    # A distribution's OpenBLAS (Debian's is DYNAMIC_ARCH).
    for d in _system_lib_dirs():
        for name in ("libopenblas.so.0", "openblas-pthread/libopenblas.so.0"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                yield p, "system"


def _system_lib_dirs() -> list[str]:
    multiarch = getattr(sys.implementation, "_multiarch", None)
    dirs = [f"/usr/lib/{multiarch}"] if multiarch else []
    return dirs + ["/usr/lib64", "/usr/lib"]


# OpenBLAS TARGET -> /proc/cpuinfo flags the build's code may use (conservative).
_X86_AVX2 = {"avx", "avx2", "fma", "bmi1", "bmi2"}
_X86_AVX512 = _X86_AVX2 | {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
_TARGET_FLAGS: dict[str, set[str]] = {
    "PRESCOTT": {"pni"}, "CORE2": {"ssse3"}, "PENRYN": {"ssse3", "sse4_1"},
    "NEHALEM": {"ssse3", "sse4_1", "sse4_2", "popcnt"},
    "SANDYBRIDGE": {"sse4_2", "avx"},
    "HASWELL": _X86_AVX2, "ZEN": _X86_AVX2,
    "SKYLAKEX": _X86_AVX512,
    "COOPERLAKE": _X86_AVX512 | {"avx512_bf16", "avx512_vnni"},
    "SAPPHIRERAPIDS": _X86_AVX512 | {"avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile"},
    "ARMV8": {"asimd"}, "CORTEXA53": {"asimd"}, "CORTEXA57": {"asimd"},
    "CORTEXA72": {"asimd"}, "CORTEXA73": {"asimd"},
    "NEOVERSEN1": {"asimd", "atomics", "asimddp"},
    "ARMV8SVE": {"asimd", "sve"}, "A64FX": {"asimd", "sve"},
    "NEOVERSEV1": {"asimd", "atomics", "asimddp", "sve", "bf16"},
    "NEOVERSEN2": {"asimd", "atomics", "asimddp", "sve", "sve2", "bf16"},
    "NEOVERSEV2": {"asimd", "atomics", "asimddp", "sve", "sve2", "bf16"},
}


def missing_cpu_flags(config: str, cpu_flags: set[str]) -> list[str] | None:
    """CPU flags a (non-DYNAMIC_ARCH) OpenBLAS build needs but ``cpu_flags`` lacks.

    ``config`` is what ``openblas_get_config()`` returns. ``[]``: fine (DYNAMIC_ARCH
    builds pick their kernels at run time); ``None``: unknown build target.
    """
    words = config.split()
    if "DYNAMIC_ARCH" in words:
        return []
    target = next((w.upper() for w in words if w.upper() in _TARGET_FLAGS), None)
    if target is None:
        return None
    return sorted(_TARGET_FLAGS[target] - cpu_flags)


def _inspect_candidate(
    path: str, source: str, probe: bool = True, libmlx: str | None = None
) -> OpenBlasCandidate:
    def cand(usable: bool, reason: str, verified: bool = False, config: str | None = None):
        return OpenBlasCandidate(path, source, config, usable, reason, verified)

    info = _safe_read_elf(path)
    if info is None:
        return cand(False, "not a readable ELF shared library")
    own = _process_machine()
    if own is not None and info.machine != own:
        return cand(False, f"ELF machine {info.machine} != this process's {own}")
    if not probe:
        return cand(True, "not probed")
    result = _probe(path, libmlx)
    config = result.get("config")
    if not config:
        return cand(False, f"probe failed: {result.get('error', 'no output')}")
    missing = missing_cpu_flags(config, _cpu_flags())
    if missing:
        return cand(False, f"{config.strip()!r} needs CPU features this CPU lacks: "
                    f"{', '.join(missing)}", False, config)
    if not result.get("ok"):
        return cand(False, f"probe failed: {result.get('error', '?')}", False, config)
    if missing is None:
        return cand(True, "probe passed; build target unknown", False, config)
    return cand(True, "probe passed", True, config)


# ------------------------------------------------------------------------- probe

_PROBE_LAYOUT = "probe-v1"
_PROBE_CODE = """
import importlib, importlib.util, json, os, sys
pkg = sys.argv[1]  # app/core/blas, loaded by path while sys.path holds only the stdlib
spec = importlib.util.spec_from_file_location(
    "_mlx_server_blas_probe", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
)
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
sys.path[:] = json.loads(sys.argv[2])
importlib.import_module(spec.name + ".discovery")._probe_child(sys.argv[3], sys.argv[4] or None)
"""


def _probe(path: str, libmlx: str | None) -> dict:
    """Load ``path`` in a child process and run small GEMMs there; cached per CPU+file.

    A build compiled for newer CPUs dies with SIGILL: it must do so in the child.
    """
    import json
    import subprocess

    st = os.stat(path)
    cpu = _cpu_identity() + "|" + os.environ.get("OPENBLAS_CORETYPE", "")
    key = hashlib.sha256(
        f"{_PROBE_LAYOUT}\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{cpu}"
        .encode()
    ).hexdigest()[:16]
    cache = blas_cache_dir() / f"probe-{key}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    cmd = [sys.executable, "-I", "-S", "-c", _PROBE_CODE, os.path.dirname(__file__),
           json.dumps(sys.path),
           path, libmlx or ""]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"could not run probe: {exc!r}"}  # not cached: may be transient
    result: dict = {}
    for line in proc.stdout.splitlines():
        try:
            result.update(json.loads(line))
        except ValueError:
            continue
    if proc.returncode != 0:
        result["ok"] = False
        if proc.returncode < 0:
            import signal

            try:
                sig = signal.Signals(-proc.returncode).name
            except ValueError:
                sig = str(-proc.returncode)
            result["error"] = f"probe process killed by {sig} during {result.get('stage')}"
        else:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            result.setdefault("error", f"probe exited {proc.returncode}: {tail[0]}")
    # Cache verdicts about the library on this CPU, not failures that may be ours or
    # the environment's (a missing libgfortran, a bug in this module).
    if result.get("ok") or result.get("wrong") or proc.returncode < 0:
        try:
            _atomic_write(cache, json.dumps(result).encode())
        except OSError:
            pass
    return result


def _probe_child(path: str, libmlx: str | None) -> None:
    import json
    import random

    def say(**kw: object) -> None:
        print(json.dumps(kw), flush=True)

    say(stage="load")
    try:
        notes = _provide_runtime_deps(_read_elf(path), libmlx)
        h = ctypes.CDLL(path)
    except Exception as exc:
        say(ok=False, error=f"load failed: {exc}")
        return
    say(stage="gemm", config=_openblas_call_str(h, "openblas_get_config"),
        corename=_openblas_call_str(h, "openblas_get_corename"), notes=notes)
    rng = random.Random(1234)
    pool = [rng.uniform(-1, 1) for _ in range(1 << 16)]
    row, notr, tr = 101, 111, 112  # CblasRowMajor, CblasNoTrans, CblasTrans
    shapes = [(64, 48, 40), (160, 1, 192), (1, 96, 128), (128, 112, 144)]
    for fname, ctype in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
        fn = getattr(h, fname)
        fn.restype = None
        fn.argtypes = [ctypes.c_int] * 6 + [ctype, ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_void_p, ctypes.c_int, ctype,
                                            ctypes.c_void_p, ctypes.c_int]
        for m, n, k in shapes if ctype is ctypes.c_float else shapes[:1]:
            for ta, tb in ((notr, notr), (tr, notr), (notr, tr)):
                off = rng.randrange(len(pool) - m * k - k * n)
                a, b = pool[off:off + m * k], pool[off + m * k:off + m * k + k * n]
                ca, cb, cc = (ctype * (m * k))(*a), (ctype * (k * n))(*b), (ctype * (m * n))()
                lda = k if ta == notr else m
                ldb = n if tb == notr else k
                fn(row, ta, tb, m, n, k, 1.0, ca, lda, cb, ldb, 0.0, cc, n)
                for _ in range(8):
                    i, j = rng.randrange(m), rng.randrange(n)
                    terms = [
                        (a[i * k + p] if ta == notr else a[p * m + i])
                        * (b[p * n + j] if tb == notr else b[j * k + p])
                        for p in range(k)
                    ]
                    if abs(cc[i * n + j] - sum(terms)) > 1e-4 * (1 + sum(map(abs, terms))):
                        say(ok=False, wrong=True,
                            error=f"{fname} {m}x{n}x{k} gives wrong results")
                        return
    say(stage="done", ok=True)


def _cpu_identity() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "CPU part", "CPU implementer")):
                    model += line.split(":", 1)[-1].strip() + ";"
                if line.strip() == "":
                    break
    except OSError:
        pass
    return model + " ".join(sorted(_cpu_flags()))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()
