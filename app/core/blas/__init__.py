"""Give MLX's CPU backend an optimized BLAS on Linux: ``elf`` reads (and SONAME-patches) shared
objects, ``symbols`` inspects what this process has loaded, ``runtime_deps`` provides an
OpenBLAS's libgfortran from a wheel's renamed copy, ``discovery`` finds the installed OpenBLAS
builds and tries each in a child process, ``loader`` (:func:`configure_blas`) picks and loads
one before ``mlx.core`` is imported, and ``governor`` resizes its thread pool while the server
runs. The package is imported before MLX is loaded, and the probe child loads it by path in an
interpreter that has only the standard library: its modules import only the standard library
and each other (relatively), never mlx or numpy, and nothing from ``app.engine``,
``app.models``, ``app.handler`` or ``app.api``.
"""

from .discovery import OpenBlasCandidate, find_openblas_candidates, missing_cpu_flags
from .loader import (
    DEFAULT_THREADS,
    MODES,
    BlasReport,
    configure_blas,
    get_blas_report,
    set_openblas_threads,
)
from .runtime_deps import blas_cache_dir

__all__ = [
    "DEFAULT_THREADS",
    "MODES",
    "BlasReport",
    "OpenBlasCandidate",
    "blas_cache_dir",
    "configure_blas",
    "find_openblas_candidates",
    "get_blas_report",
    "missing_cpu_flags",
    "set_openblas_threads",
]
