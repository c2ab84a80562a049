"""Use every core for BLAS while nothing else needs them (Linux CPU + our OpenBLAS only).

MLX's CPU backend runs one op at a time on one thread, so a second core only helps through
OpenBLAS's own threads. Measured on 2 cores (docs/BENCHMARKS.md, "BLAS threads"): with the
machine otherwise idle, two threads make a 128-token prefill ~1.7x and a batch-16 decode step
~1.25x faster; with other jobs on the cores, OpenBLAS's spinning threads make the same work
2-5x *slower*. So the count follows the machine: :class:`BlasThreadGovernor` samples how much
CPU other processes use (``/proc/stat`` minus our own ``/proc/self/stat``) and allows all
cores only while that is under half a core and one engine alone is computing (two engines, or
the embedding model's two streams, would oversubscribe the cores).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .loader import get_blas_report, set_openblas_threads

log = logging.getLogger(__name__)

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks() -> tuple[float, float] | None:
    """(all processes' busy CPU ticks, ours) since boot; None where /proc is missing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return float(sum(fields[:8]) - idle), float(int(mine[11]) + int(mine[12]))  # utime+stime


class BlasThreadGovernor:
    """Decides the OpenBLAS thread count between engine steps; see the module docstring.

    The count only changes while exactly one engine is computing and that engine has waited
    for its own MLX work (``sync``): OpenBLAS must not be resized under a running call.
    """

    def __init__(
        self,
        apply: Callable[[int], bool] = set_openblas_threads,
        cores: int | None = None,
        interval_s: float = 0.5,
        sample: Callable[[], tuple[float, float] | None] = _busy_ticks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.apply, self.sample, self.clock, self.interval_s = apply, sample, clock, interval_s
        if cores is None:
            cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
        self.cores = cores
        self.threads = 1
        self.others = float("inf")  # cores other processes used lately (unknown at first)
        self._busy: dict[object, int] = {}
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = None

    @contextmanager
    def computing(self, who: object, weight: int = 1) -> Iterator[None]:
        """Mark ``who`` as running MLX work for the block; ``weight``: its parallel streams."""
        with self._lock:
            self._busy[who] = weight
        try:
            yield
        finally:
            with self._lock:
                self._busy.pop(who, None)

    def _measure(self, now: float) -> None:
        last, sample = self._last, self.sample()
        if sample is None:
            return
        self._last = (now, *sample)
        if last is not None and now > last[0]:
            others = (sample[0] - last[1]) - (sample[1] - last[2])
            self.others = max(0.0, others / _TICK / (now - last[0]))

    def _measure_if_due(self) -> None:
        now = self.clock()
        if self._last is None or now - self._last[0] >= self.interval_s:
            self._measure(now)

    def tick(self, who: object, sync: Callable[[], object]) -> int:
        """Called by ``who`` (registered with :meth:`computing`) before its MLX work; returns
        the thread count in force. All cores only when ``who`` computes alone on one stream
        and the machine is otherwise quiet; the count changes only while nobody else
        computes, after ``sync`` (``who``'s own queued MLX work) has returned."""
        with self._lock:
            self._measure_if_due()
            solo = set(self._busy) == {who}
            quiet = self.others < (0.5 if self.threads == 1 else 0.8)  # some hysteresis
            want = self.cores if solo and self._busy[who] == 1 and quiet else 1
            if want != self.threads and solo:
                sync()
                if self.apply(want):
                    log.debug("BLAS threads %d -> %d (others use %.2f cores)", self.threads,
                              want, self.others)
                    self.threads = want
            return self.threads

    def observe(self) -> None:
        """Take a sample if one is due. Idle engines call this about once a second, so that
        the first ``tick`` of the next burst judges the last second rather than the whole
        idle stretch (another process busy half a minute ago would otherwise cost that
        burst's first prefill the second core)."""
        with self._lock:
            self._measure_if_due()

    def rest(self, who: object, sync: Callable[[], object]) -> None:
        """Engine ``who`` has run out of work: back to one thread if nobody else computes."""
        with self._lock:
            if self.threads != 1 and set(self._busy) <= {who}:
                sync()
                if self.apply(1):
                    self.threads = 1


_governor: BlasThreadGovernor | None = None
_governor_lock = threading.Lock()


def blas_governor() -> BlasThreadGovernor | None:
    """The process's governor, or None where the thread count is not ours to change
    (no OpenBLAS of ours, a fixed ``--blas-threads`` / ``$OPENBLAS_NUM_THREADS``, one core)."""
    global _governor
    report = get_blas_report()
    if report is None or report.backend != "openblas" or report.threads_chosen:
        return None
    with _governor_lock:
        if _governor is None:
            governor = BlasThreadGovernor()
            if governor.cores < 2:
                return None
            _governor = governor
        return _governor
