"""The batched-speculation gate: passes run while they yield more tokens per second."""

from __future__ import annotations

from app.engine.lm.spec_gate import PROBE_EVERY, SpeculationGate


def _steps(gate: SpeculationGate, n: int, spec_rate: float, plain_rate: float) -> list[bool]:
    """``n`` decisions, each followed by a one-second step at the given rates."""
    chosen = []
    for _ in range(n):
        speculative = gate.speculate()
        chosen.append(speculative)
        gate.record(speculative, int(spec_rate if speculative else plain_rate), 1.0)
    return chosen


def test_measures_both_kinds_first() -> None:
    gate = SpeculationGate()
    assert _steps(gate, 2, spec_rate=10, plain_rate=20) == [True, False]


def test_losing_passes_stop_but_are_probed() -> None:
    gate = SpeculationGate()
    chosen = _steps(gate, 4 * PROBE_EVERY, spec_rate=10, plain_rate=20)
    assert sum(chosen[2:]) == 4  # the re-measurements only: decisions 16, 32, 48 and 64


def test_paying_passes_keep_running() -> None:
    gate = SpeculationGate()
    chosen = _steps(gate, 4 * PROBE_EVERY, spec_rate=40, plain_rate=20)
    assert chosen[:2] == [True, False]
    assert sum(not c for c in chosen[2:]) <= 4  # only the periodic re-measurements


def test_passes_come_back_when_rows_start_copying() -> None:
    gate = SpeculationGate()
    _steps(gate, 3 * PROBE_EVERY, spec_rate=10, plain_rate=20)
    chosen = _steps(gate, 3 * PROBE_EVERY, spec_rate=60, plain_rate=20)
    assert all(chosen[-PROBE_EVERY + 1:-1])


def test_empty_or_instant_steps_are_ignored() -> None:
    gate = SpeculationGate()
    gate.record(True, 0, 1.0)
    gate.record(False, 5, 0.0)
    assert gate.spec_rate is None and gate.plain_rate is None
