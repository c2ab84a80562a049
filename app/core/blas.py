"""Give MLX's CPU backend an optimized BLAS on Linux.

The ``mlx-cpu`` wheel links the netlib *reference* BLAS (``mlx_cpu.libs/libblas-*.so``).
MLX resolves ``cblas_sgemm`` & co. when ``mlx.core`` is loaded (Python loads extensions
with ``RTLD_NOW``), and the dynamic loader looks in the *global* scope before the
extension's own dependencies. So loading an OpenBLAS with ``RTLD_GLOBAL`` before
``mlx.core`` is imported makes MLX's float32 matmuls use it: on a 2-core AMD EPYC,
1024^3 matmul 3-4 -> 55-90 GFLOP/s, SmolLM2-135M's mat-vecs 4-10x faster
(``scripts/bench_blas.py``). float16/bfloat16 matmuls do not go through BLAS.

The OpenBLAS builds on PyPI that export plain ``cblas_*``/``sgemm_`` symbols
(``ngsolve-openblas``, ``cmeel-openblas``) need ``libgfortran.so.5``, which a fresh
machine usually lacks. The wheels of mlx-cpu and numpy carry renamed copies
(``libgfortran-<hash>.so.5.0.0``, SONAME = the renamed name), which the loader will
not match for a ``DT_NEEDED`` of ``libgfortran.so.5``. We copy one into a user cache
dir with its SONAME rewritten (in place, pure Python: the new name is shorter) to
``libgfortran.so.5`` and load it first: glibc then satisfies OpenBLAS's ``DT_NEEDED``
with the already loaded object, whatever the system has.

Some builds are not ``DYNAMIC_ARCH`` (cmeel-openblas 0.3.31 targets SKYLAKEX on
x86_64 and NEOVERSEN2 on aarch64) and die with SIGILL on CPUs without those
instructions. So each candidate is first loaded in a child process that runs a few
small GEMMs (a SIGILL kills only the child) and reports ``openblas_get_config()``;
non-DYNAMIC_ARCH targets are then checked against ``/proc/cpuinfo``. The verdict is
cached per library file and CPU.

Nothing here imports mlx (or numpy). macOS and GPU builds of MLX are left alone.
Failures never raise: they log a warning and leave the reference BLAS in place.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import importlib.util
import logging
import mmap
import os
import re
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODES = ("auto", "openblas", "off")
# Measured on 2 cores (scripts/bench_blas.py): with 2 OpenBLAS threads the 1024^3
# matmul and both SmolLM2 mat-vecs got 2-5x slower and erratic (OpenBLAS's spinning
# pool fights MLX's own threads), so one thread per BLAS call is the default.
DEFAULT_THREADS = 1
_CACHE_LAYOUT = "v1"  # bump when the patched-copy format changes


@dataclass(frozen=True)
class BlasReport:
    """What :func:`configure_blas` did."""

    backend: str  # "openblas" | "reference" | "accelerate" | "not-applicable"
    library: str | None = None  # path of the BLAS MLX will call, when known
    threads: int | None = None  # OpenBLAS threads per call
    detail: str = ""
    threads_chosen: bool = False  # threads came from a setting or $OPENBLAS_NUM_THREADS

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = [self.backend]
        if self.library:
            parts.append(self.library)
        if self.threads:
            parts.append(f"threads={self.threads}")
        return " ".join(parts) + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class OpenBlasCandidate:
    """An OpenBLAS shared library found on this machine."""

    path: str
    source: str  # distribution or "system"
    config: str | None  # the "OpenBLAS 0.3.x DYNAMIC_ARCH ..." string embedded in it
    usable: bool  # ELF machine matches and the CPU can run it
    reason: str  # why (not) usable
    verified: bool  # True: known safe (DYNAMIC_ARCH or a known target whose flags we have)


_lock = threading.Lock()
_report: BlasReport | None = None
_handles: list[ctypes.CDLL] = []  # keep what we loaded referenced for the process lifetime


def set_openblas_threads(n: int) -> bool:
    """Threads for the OpenBLAS :func:`configure_blas` loaded (process-wide, takes effect for
    the next BLAS call); False when no OpenBLAS of ours is loaded."""
    if _report is None or _report.backend != "openblas" or not _handles:
        return False
    try:
        fn = _handles[-1].openblas_set_num_threads
    except AttributeError:
        return False
    fn.argtypes, fn.restype = [ctypes.c_int], None
    fn(int(n))
    return True


def get_blas_report() -> BlasReport | None:
    """The report of the first :func:`configure_blas` call in this process, if any."""
    return _report


def configure_blas(
    mode: str = "auto", threads: int | None = None, *, library: str | None = None
) -> BlasReport:
    """Choose the BLAS MLX's CPU backend will use. Call before ``mlx.core`` is imported.

    mode: ``"auto"`` (use a verified OpenBLAS when MLX is the reference-BLAS CPU build),
    ``"openblas"`` (also try when that cannot be verified), ``"off"`` (leave MLX alone).
    threads: OpenBLAS threads per call; default: ``$OPENBLAS_NUM_THREADS`` if set, else
    :data:`DEFAULT_THREADS`. library: an explicit OpenBLAS path to use instead of the
    installed candidates. Idempotent: later calls return the first call's report.
    Never raises.
    """
    global _report
    with _lock:
        if _report is not None:
            return _report
        try:
            report = _configure(mode, threads, library)
        except Exception as exc:  # never take the server down over a BLAS choice
            log.warning("BLAS setup failed, MLX keeps its reference BLAS: %r", exc)
            report = BlasReport("reference", None, None, f"setup failed: {exc!r}")
        _report = report
        return report


# --------------------------------------------------------------------------- policy


def _configure(mode: str, threads: int | None, library: str | None) -> BlasReport:
    mode = str(mode or "auto").strip().lower()
    if mode not in MODES:
        log.warning("unknown BLAS mode %r, using 'auto'", mode)
        mode = "auto"
    n_threads, threads_from = _resolve_threads(threads)

    if sys.platform == "darwin":
        return BlasReport("accelerate", None, None, "macOS: MLX uses Metal and Accelerate")
    if not sys.platform.startswith("linux"):
        return BlasReport("not-applicable", None, None, f"nothing to do on {sys.platform}")

    libmlx = _find_libmlx()
    mlx_info = _safe_read_elf(libmlx) if libmlx else None
    if _is_gpu_build(mlx_info):
        return BlasReport("not-applicable", None, None, "MLX is a GPU (CUDA) build")

    ref_blas = _reference_blas(libmlx, mlx_info)
    if "mlx.core" in sys.modules or _mapped_path("/libmlx.so"):
        owner = _symbol_owner("cblas_sgemm")
        backend = "openblas" if owner and "openblas" in os.path.basename(owner) else "reference"
        return BlasReport(
            backend, owner if backend == "openblas" else ref_blas, None,
            "too late: mlx.core was imported before configure_blas(); "
            "MLX keeps the BLAS it was loaded with",
        )
    if mode == "off":
        return BlasReport("reference", ref_blas, None, "BLAS mode 'off'")

    if mlx_info is not None and any("openblas" in n for n in mlx_info.needed):
        return BlasReport("openblas", None, None, "this MLX build links OpenBLAS itself")
    if mode == "auto":
        if mlx_info is None:
            return BlasReport("not-applicable", None, None, "mlx (libmlx.so) not found")
        if ref_blas is None:
            return BlasReport(
                "not-applicable", None, None,
                f"MLX does not link the reference BLAS (needs {', '.join(mlx_info.needed)})",
            )

    owner = _symbol_owner("cblas_sgemm")
    if owner:  # e.g. LD_PRELOAD or an earlier ctypes load: MLX will bind to it
        backend = "openblas" if "openblas" in os.path.basename(owner) else "reference"
        return BlasReport(backend, owner, _openblas_threads_of(owner),
                          "cblas_sgemm was already provided globally before configure_blas()")

    if library:
        found = iter([_inspect_candidate(library, "explicit", True, libmlx)])
    else:
        found = _iter_candidates(True, libmlx)
    cands: list[OpenBlasCandidate] = []
    chosen = None
    for c in found:  # probing is lazy: stop at the first verified one
        cands.append(c)
        if c.usable and c.verified:
            chosen = c
            break
    if chosen is None and mode == "openblas":
        chosen = next((c for c in cands if c.usable), None)
    if chosen is None:
        why = "; ".join(f"{c.source} {c.path}: {c.reason}" for c in cands)
        msg = f"no usable OpenBLAS ({why or 'none installed'})"
        if mode == "openblas" or cands:
            log.warning("BLAS: %s; MLX keeps its reference BLAS", msg)
        return BlasReport("reference", ref_blas, None, msg)
    return _load_openblas(chosen, n_threads, threads_from, ref_blas, libmlx)


def _resolve_threads(threads: int | None) -> tuple[int, str]:
    if threads is not None:
        try:
            n = int(threads)
            if n >= 1:
                return n, "argument"
        except (TypeError, ValueError):
            pass
        log.warning("ignoring invalid BLAS thread count %r", threads)
    env = os.environ.get("OPENBLAS_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "$OPENBLAS_NUM_THREADS"
    return DEFAULT_THREADS, "default"


def _load_openblas(
    cand: OpenBlasCandidate, n_threads: int, threads_from: str,
    ref_blas: str | None, libmlx: str | None,
) -> BlasReport:
    # OpenBLAS sizes its thread pool from the environment when it is loaded. (Left
    # set afterwards: child processes and a later-loaded numpy OpenBLAS see it too.)
    previous = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = str(n_threads)
    try:
        info = _read_elf(cand.path)
        notes = _provide_runtime_deps(info, libmlx)
        handle = ctypes.CDLL(cand.path, mode=os.RTLD_GLOBAL)
        _handles.append(handle)
    except Exception as exc:
        if previous is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = previous
        log.warning("BLAS: could not load %s (%s); MLX keeps its reference BLAS", cand.path, exc)
        return BlasReport("reference", ref_blas, None, f"loading {cand.path} failed: {exc}")

    owner = _symbol_owner("cblas_sgemm")
    if not owner or os.path.realpath(owner) != os.path.realpath(cand.path):
        msg = f"loaded {cand.path} but cblas_sgemm resolves to {owner}"
        log.warning("BLAS: %s", msg)
        return BlasReport("reference", ref_blas, None, msg)
    actual = _openblas_call_int(handle, "openblas_get_num_threads") or n_threads
    core = _openblas_call_str(handle, "openblas_get_corename")
    config = _openblas_call_str(handle, "openblas_get_config") or cand.config or "OpenBLAS"
    detail = (
        f"{config.strip()} (core {core or '?'}) from {cand.source}; "
        f"threads from {threads_from}"
    )
    if notes:
        detail += "; " + "; ".join(notes)
    report = BlasReport("openblas", cand.path, actual, detail, threads_from != "default")
    log.debug("BLAS: %s", report)
    return report


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
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_mlx_server_blas_probe", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
sys.path[:] = json.loads(sys.argv[2])
mod._probe_child(sys.argv[3], sys.argv[4] or None)
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
    cmd = [sys.executable, "-I", "-S", "-c", _PROBE_CODE, __file__, json.dumps(sys.path),
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


# ------------------------------------------------------- runtime deps (libgfortran)

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


def _patched_bytes(src: str, info: _Elf, soname: str) -> bytes:
    """``src``'s bytes with its DT_SONAME string overwritten by ``soname``."""
    if info.soname is None or info.soname_offset is None:
        raise ValueError(f"{src} has no SONAME")
    old, new = info.soname.encode(), soname.encode()
    if len(new) > len(old):
        raise ValueError(f"SONAME {soname!r} longer than {info.soname!r}")
    start, end = info.soname_offset, info.soname_offset + len(old)
    clash = [o for o in info.string_refs if start < o <= end]
    if clash:  # another string shares the tail we would rewrite
        raise ValueError(f"{src}: SONAME string is shared ({len(clash)} references)")
    with open(src, "rb") as f:
        data = bytearray(f.read())
    if bytes(data[start:end]) != old:
        raise ValueError(f"{src}: SONAME not where expected")
    data[start:end] = new + b"\0" * (len(old) - len(new))
    return bytes(data)


# ---------------------------------------------------------------------- MLX facts


def _find_libmlx() -> str | None:
    try:
        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, "lib", "libmlx.so")
        if os.path.isfile(p):
            return p
    return None


def _is_gpu_build(mlx_info: _Elf | None) -> bool:
    import importlib.metadata

    if mlx_info is not None and any(
        n.startswith(("libcuda", "libcublas", "libcudnn", "libnvrtc")) for n in mlx_info.needed
    ):
        return True
    for dist in ("mlx-cuda", "mlx-cuda-12", "mlx-cuda-13"):
        try:
            importlib.metadata.distribution(dist)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def _reference_blas(libmlx: str | None, info: _Elf | None) -> str | None:
    """Path of the reference ``libblas`` that libmlx links, if it links one."""
    if not libmlx or info is None:
        return None
    for name in info.needed:
        if name.startswith("libblas"):
            for d in _expand_rpath(info.rpath, libmlx):
                if os.path.isfile(os.path.join(d, name)):
                    return os.path.join(d, name)
            return name
    return None


def _expand_rpath(rpath: list[str], obj: str) -> list[str]:
    origin = os.path.dirname(os.path.realpath(obj))
    return [
        os.path.normpath(p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
        for p in rpath
    ]


# ------------------------------------------------------------- process inspection


def _mapped_path(fragment: str) -> str | None:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                if fragment in line:
                    return line.split(None, 5)[-1].strip()
    except OSError:
        pass
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _symbol_owner(symbol: str) -> str | None:
    """File of the object that provides ``symbol`` in the global scope, if any."""
    try:
        addr = ctypes.cast(getattr(ctypes.CDLL(None), symbol), ctypes.c_void_p).value
    except (AttributeError, OSError):
        return None
    for lib in (None, "libdl.so.2"):
        try:
            dladdr = ctypes.CDLL(lib).dladdr
        except (AttributeError, OSError):
            continue
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        dladdr.restype = ctypes.c_int
        out = _DlInfo()
        if dladdr(addr, ctypes.byref(out)) and out.dli_fname:
            return os.fsdecode(out.dli_fname)
    return None


def _openblas_call(handle: ctypes.CDLL, name: str, restype: type) -> Any:
    """``handle.name()`` (no arguments) returning ``restype``; None where it lacks ``name``."""
    try:
        fn = getattr(handle, name)
    except AttributeError:
        return None
    fn.restype = restype
    fn.argtypes = []
    return fn()


def _openblas_call_int(handle: ctypes.CDLL, name: str) -> int | None:
    value = _openblas_call(handle, name, ctypes.c_int)
    return None if value is None else int(value)


def _openblas_call_str(handle: ctypes.CDLL, name: str) -> str | None:
    value = _openblas_call(handle, name, ctypes.c_char_p)
    return value.decode("ascii", "replace") if value else None


def _openblas_threads_of(path: str) -> int | None:
    try:
        return _openblas_call_int(ctypes.CDLL(path, mode=os.RTLD_NOLOAD),
                                  "openblas_get_num_threads")
    except OSError:
        return None


# ------------------------------------------------------------------- ELF reading

_DT_NEEDED, _DT_STRTAB, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 14, 15, 29
_DT_VERDEF, _DT_VERDEFNUM = 0x6FFFFFFC, 0x6FFFFFFD
_DT_VERNEED, _DT_VERNEEDNUM = 0x6FFFFFFE, 0x6FFFFFFF
_PT_LOAD, _PT_DYNAMIC, _SHT_DYNSYM = 1, 2, 11


@dataclass
class _Elf:
    machine: int
    needed: list[str]
    soname: str | None
    soname_offset: int | None  # file offset of the SONAME string
    rpath: list[str]  # DT_RPATH + DT_RUNPATH entries
    verdefs: set[str]  # versions this object defines
    verneeds: dict[str, set[str]]  # needed file -> versions required from it
    string_refs: set[int]  # file offsets of dynstr strings referenced (excl. SONAME)


def _safe_read_elf(path: str) -> _Elf | None:
    try:
        return _read_elf(path)
    except (OSError, ValueError, struct.error, IndexError):
        return None


def _read_elf(path: str) -> _Elf:
    """Parse the dynamic section of an ELF shared object (32/64-bit, either endian)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return _parse_elf(m)


def _parse_elf(d: mmap.mmap | bytes) -> _Elf:
    if d[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    is64 = d[4] == 2
    e = "<" if d[5] == 1 else ">"
    machine = struct.unpack_from(e + "H", d, 18)[0]
    if is64:
        phoff, shoff = struct.unpack_from(e + "QQ", d, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", d, 54)
    else:
        phoff, shoff = struct.unpack_from(e + "II", d, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", d, 42)

    loads: list[tuple[int, int, int]] = []
    dyn: tuple[int, int] | None = None
    for i in range(phnum):
        o = phoff + i * phentsize
        if is64:
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(e + "IIQQQQ", d, o)
        else:
            p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(e + "IIIII", d, o)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dyn = (p_offset, p_filesz)
    if dyn is None:
        raise ValueError("no dynamic section")

    def file_off(vaddr: int) -> int:
        for va, off, size in loads:
            if va <= vaddr < va + size:
                return vaddr - va + off
        raise ValueError(f"address {vaddr:#x} not in a loaded segment")

    tags: list[tuple[int, int]] = []
    fmt, step = (e + "qQ", 16) if is64 else (e + "iI", 8)
    for o in range(dyn[0], dyn[0] + dyn[1], step):
        tag, val = struct.unpack_from(fmt, d, o)
        if tag == 0:
            break
        tags.append((tag, val))
    first = {t: v for t, v in reversed(tags)}
    if _DT_STRTAB not in first:
        raise ValueError("no DT_STRTAB")
    strtab = file_off(first[_DT_STRTAB])

    def string(off: int) -> str:
        end = d.find(b"\0", strtab + off)
        return bytes(d[strtab + off:end]).decode("utf-8", "replace")

    refs: set[int] = set()
    needed, rpath = [], []
    soname = soname_off = None
    for tag, val in tags:
        if tag == _DT_NEEDED:
            needed.append(string(val))
            refs.add(strtab + val)
        elif tag in (_DT_RPATH, _DT_RUNPATH):
            rpath += [p for p in string(val).split(":") if p]
            refs.add(strtab + val)
        elif tag == _DT_SONAME:
            soname, soname_off = string(val), strtab + val

    verdefs: set[str] = set()
    if _DT_VERDEF in first:
        o = file_off(first[_DT_VERDEF])
        for _ in range(first.get(_DT_VERDEFNUM, 0)):
            _, _, _, cnt, _, aux, nxt = struct.unpack_from(e + "HHHHIII", d, o)
            a = o + aux
            for j in range(cnt):
                name, anext = struct.unpack_from(e + "II", d, a)
                refs.add(strtab + name)
                if j == 0:
                    verdefs.add(string(name))
                a += anext
            if not nxt:
                break
            o += nxt
    verneeds: dict[str, set[str]] = {}
    if _DT_VERNEED in first:
        o = file_off(first[_DT_VERNEED])
        for _ in range(first.get(_DT_VERNEEDNUM, 0)):
            _, cnt, fname, aux, nxt = struct.unpack_from(e + "HHIII", d, o)
            refs.add(strtab + fname)
            versions = verneeds.setdefault(string(fname), set())
            a = o + aux
            for _ in range(cnt):
                _, _, _, name, anext = struct.unpack_from(e + "IHHII", d, a)
                refs.add(strtab + name)
                versions.add(string(name))
                if not anext:
                    break
                a += anext
            if not nxt:
                break
            o += nxt

    # Symbol names live in the same string table: collect them via the section headers.
    shfmt = e + ("IIQQQQII" if is64 else "IIIIIIII")
    for i in range(shnum if shoff else 0):
        sh = struct.unpack_from(shfmt, d, shoff + i * shentsize)
        sh_type, sh_offset, sh_size, sh_link = sh[1], sh[4], sh[5], sh[6]
        if sh_type != _SHT_DYNSYM or sh_link >= shnum:
            continue
        link = struct.unpack_from(shfmt, d, shoff + sh_link * shentsize)
        if link[4] != strtab:
            continue
        entsize = 24 if is64 else 16
        for s in range(sh_offset, sh_offset + sh_size, entsize):
            refs.add(strtab + struct.unpack_from(e + "I", d, s)[0])
    if soname_off is not None:
        refs.discard(soname_off)
    return _Elf(machine, needed, soname, soname_off, rpath, verdefs, verneeds, refs)


_own_machine: int | None = None


def _process_machine() -> int | None:
    global _own_machine
    if _own_machine is None:
        try:
            with open("/proc/self/exe", "rb") as f:
                head = f.read(20)
            if head[:4] == b"\x7fELF":
                _own_machine = struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]
        except OSError:
            return None
    return _own_machine
