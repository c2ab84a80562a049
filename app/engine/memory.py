"""Give memory back to the operating system when an engine goes idle.

Under batching, the process's resident memory grows far beyond what MLX holds: on Linux the
MLX CPU backend allocates its buffers with ``malloc``, and glibc keeps the freed ones in its
heaps (the dynamic mmap threshold rises with the first large frees, so later KV caches and
activations of a few MiB come from the heap, not from ``mmap``). Measured on the default
model (docs/BENCHMARKS.md, "Memory under batching"): MLX active memory stays at the weights'
~514 MiB and MLX's buffer pool at tens of MiB, while glibc holds ~940 MiB of free heap after a
32-way burst. ``malloc_trim(0)`` hands those free pages back (RSS 1613 -> 648 MB).

:func:`release_memory` empties MLX's buffer pool, then calls ``malloc_trim(0)`` where the C
library is glibc. Elsewhere (macOS, musl) the trim step is skipped: it is a glibc extension.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

log = logging.getLogger(__name__)


def _find_malloc_trim(platform: str | None = None) -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None when the process does not run on glibc."""
    if not (platform or sys.platform).startswith("linux"):
        return None
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # unset (ValueError/None) off glibc
    except (ValueError, OSError):
        return None
    if not version or not version.startswith("glibc"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the libc already loaded in this process
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _find_malloc_trim()


@dataclass
class ReleaseStats:
    releases: int = 0  # calls of release_memory
    trims: int = 0  # of which ran malloc_trim
    seconds: float = 0.0  # time spent in them, summed


stats = ReleaseStats()


def can_trim() -> bool:
    """Whether :func:`release_memory` can return freed heap pages (glibc only)."""
    return _malloc_trim is not None


def release_memory() -> None:
    """Free MLX's cached buffers, then return free C-heap pages to the OS (glibc only).

    Meant for the moment an engine runs out of work: it costs ~2 ms when there is little to
    return and tens of ms after a large burst, on the engine's thread.
    """
    started = time.perf_counter()
    mx.clear_cache()
    if _malloc_trim is not None:
        try:
            _malloc_trim(0)
            stats.trims += 1
        except Exception:  # noqa: BLE001 - best effort, never fatal
            log.debug("malloc_trim failed", exc_info=True)
    stats.releases += 1
    stats.seconds += time.perf_counter() - started


class IdleRelease:
    """Calls :func:`release_memory` once each time an engine runs out of work.

    The engine calls it from its loop whenever no sequence is running, with a counter of the
    work it has done (its step count); it releases when the counter moved since the last
    release. Called from the loop rather than the step itself, so the step's own temporaries
    (logits, logprob rows) are already freed and go back too.
    """

    def __init__(self) -> None:
        self._seen = 0

    def __call__(self, work_done: int) -> bool:
        if work_done == self._seen:
            return False
        self._seen = work_done
        release_memory()
        return True


def trim_heap() -> None:
    """Return free C-heap pages to the OS (glibc only); safe from any thread, since it
    leaves MLX's buffer pool alone. For after a large request's temporaries are freed."""
    if _malloc_trim is not None:
        try:
            _malloc_trim(0)
        except Exception:  # noqa: BLE001 - best effort, never fatal
            log.debug("malloc_trim failed", exc_info=True)
