"""Give MLX's CPU backend an optimized BLAS on Linux.

The ``mlx-cpu`` wheel links the netlib *reference* BLAS (``mlx_cpu.libs/libblas-*.so``).
MLX resolves ``cblas_sgemm`` & co. when ``mlx.core`` is loaded (Python loads extensions
with ``RTLD_NOW``), and the dynamic loader looks in the *global* scope before the
extension's own dependencies. So loading an OpenBLAS with ``RTLD_GLOBAL`` before
``mlx.core`` is imported makes MLX's float32 matmuls use it: on a 2-core AMD EPYC,
1024^3 matmul 3-4 -> 55-90 GFLOP/s, SmolLM2-135M's mat-vecs 4-10x faster
(``scripts/bench_blas.py``). float16/bfloat16 matmuls do not go through BLAS.

:func:`configure_blas` holds the policy: it loads the first verified OpenBLAS that
``discovery`` finds (any usable one in mode ``"openblas"``), after the runtime libraries it
needs (``runtime_deps``). macOS and GPU builds of MLX are left alone. Failures never
raise: they log a warning and leave the reference BLAS in place.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import logging
import os
import sys
import threading
from dataclasses import dataclass

from .discovery import OpenBlasCandidate, _inspect_candidate, _iter_candidates
from .elf import _Elf, _expand_rpath, _read_elf, _safe_read_elf
from .runtime_deps import _provide_runtime_deps
from .symbols import (
    _handles,
    _mapped_path,
    _openblas_call_int,
    _openblas_call_str,
    _openblas_threads_of,
    _symbol_owner,
)

log = logging.getLogger(__package__)  # "app.core.blas", the name these logs always had

MODES = ("auto", "openblas", "off")
# Measured on 2 cores (scripts/bench_blas.py): with 2 OpenBLAS threads the 1024^3
# matmul and both SmolLM2 mat-vecs got 2-5x slower and erratic (OpenBLAS's spinning
# pool fights MLX's own threads), so one thread per BLAS call is the default.
DEFAULT_THREADS = 1


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


_lock = threading.Lock()
_report: BlasReport | None = None


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
