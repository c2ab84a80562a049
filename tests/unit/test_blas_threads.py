"""The OpenBLAS thread governor: all cores only while the machine is otherwise idle."""

from __future__ import annotations

from app.core import blas
from app.core.blas import governor as blas_threads
from app.core.blas.governor import BlasThreadGovernor


class Machine:
    """Fake /proc counters: busy CPU ticks of everyone and of us; a clock."""

    def __init__(self) -> None:
        self.total = self.ours = 0.0
        self.applied: list[int] = []
        self.synced = 0

    def run(self, seconds: float, ours: float, others: float) -> None:
        tick = blas_threads._TICK
        self.ours += ours * seconds * tick
        self.total += (ours + others) * seconds * tick

    def governor(self, clock: list[float]) -> BlasThreadGovernor:
        return BlasThreadGovernor(apply=lambda n: self.applied.append(n) or True, cores=2,
                                  interval_s=0.5, sample=lambda: (self.total, self.ours),
                                  clock=lambda: clock[0])

    def sync(self) -> None:
        self.synced += 1


def test_all_cores_while_quiet_one_when_others_work():
    machine, clock = Machine(), [100.0]
    gov = machine.governor(clock)
    engine = object()
    with gov.computing(engine):
        assert gov.tick(engine, machine.sync) == 1  # first sample: nothing known yet
        machine.run(1.0, ours=1.0, others=0.1)
        clock[0] += 1.0
        assert gov.tick(engine, machine.sync) == 2
        assert machine.applied == [2] and machine.synced == 1
        machine.run(1.0, ours=2.0, others=0.6)  # our own two threads do not count
        clock[0] += 1.0
        assert gov.tick(engine, machine.sync) == 2  # 0.6 < 0.8: hysteresis keeps two
        machine.run(1.0, ours=1.0, others=1.2)
        clock[0] += 1.0
        assert gov.tick(engine, machine.sync) == 1
        assert machine.applied == [2, 1]


def test_no_change_while_another_engine_computes():
    machine, clock = Machine(), [0.0]
    gov = machine.governor(clock)
    lm, embeddings = object(), object()
    with gov.computing(lm):
        gov.tick(lm, machine.sync)
        with gov.computing(embeddings, 2):
            machine.run(1.0, ours=1.0, others=0.0)
            clock[0] += 1.0
            assert gov.tick(lm, machine.sync) == 1
        assert machine.applied == [] and machine.synced == 0
        clock[0] += 1.0
        assert gov.tick(lm, machine.sync) == 2
    gov.rest(lm, machine.sync)  # out of work: back to one thread
    assert gov.threads == 1 and machine.applied == [2, 1]


def test_only_for_our_openblas_with_free_threads(monkeypatch):
    monkeypatch.setattr(blas_threads, "_governor", None)
    monkeypatch.setattr(blas_threads, "get_blas_report", lambda: None)
    assert blas_threads.blas_governor() is None
    fixed = blas.BlasReport("openblas", "/x.so", 1, "", threads_chosen=True)
    monkeypatch.setattr(blas_threads, "get_blas_report", lambda: fixed)
    assert blas_threads.blas_governor() is None
    auto = blas.BlasReport("openblas", "/x.so", 1, "")
    monkeypatch.setattr(blas_threads, "get_blas_report", lambda: auto)
    monkeypatch.setattr(blas_threads.os, "sched_getaffinity", lambda _pid: {0, 1})
    governor = blas_threads.blas_governor()
    assert governor is not None and governor.cores == 2
    assert blas_threads.blas_governor() is governor
    monkeypatch.setattr(blas_threads, "_governor", None)
    monkeypatch.setattr(blas_threads.os, "sched_getaffinity", lambda _pid: {0})
    assert blas_threads.blas_governor() is None


def test_a_two_stream_pass_runs_with_one_thread():
    machine, clock = Machine(), [0.0]
    gov = machine.governor(clock)
    embeddings = object()
    with gov.computing(embeddings, 1):  # one sequence: one stream, may take both cores
        gov.tick(embeddings, machine.sync)
        machine.run(1.0, ours=1.0, others=0.0)
        clock[0] += 1.0
        assert gov.tick(embeddings, machine.sync) == 2
    with gov.computing(embeddings, 2):  # a batch split over two streams: one thread each
        assert gov.tick(embeddings, machine.sync) == 1
    assert machine.applied == [2, 1]


def test_idle_samples_keep_the_judgement_recent():
    """Others were busy while our engine idled, then stopped: the next burst gets both cores."""
    machine, clock = Machine(), [0.0]
    gov = machine.governor(clock)
    engine = object()
    gov.rest(engine, machine.sync)
    for _ in range(20):  # 20 s idle: others busy for 19 s, then quiet for 1 s
        machine.run(1.0, ours=0.0, others=1.5 if clock[0] < 19 else 0.0)
        clock[0] += 1.0
        gov.observe()
    with gov.computing(engine):
        clock[0] += 0.5
        assert gov.tick(engine, machine.sync) == 2
