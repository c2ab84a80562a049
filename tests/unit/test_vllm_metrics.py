"""vLLM-named series dashboards expect, and one inter-token latency per generated token."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from app.engine.lm.iteration_stats import TokenHistogram
from app.engine.lm.types import Finished, SamplingParams, TextDelta
from app.generation import timing
from app.generation.timing import RequestTimer, SequenceStats


class _Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def __getattr__(self, name: str):
        return lambda model, value: self.calls.append((name, value))

    def values(self, name: str) -> list:
        return [value for called, value in self.calls if called == name]


@dataclass
class _Request:
    enqueued_at: float = 10.0
    admitted_at: float | None = 10.5
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=9))


@dataclass
class _Spec:
    id: str = "tiny"


@dataclass
class _Managed:
    spec: _Spec = field(default_factory=_Spec)


@dataclass
class _Submission:
    requests: list
    managed: _Managed = field(default_factory=_Managed)


@dataclass
class _Item:
    index: int
    event: object


def test_one_inter_token_latency_per_generated_token(monkeypatch: pytest.MonkeyPatch):
    """Tokens that arrive together (speculation accepting several in one step, or text that
    waited for a later token) each get an observation: the gap spread evenly over them;
    tokens that never became text (end of sequence, a stop string) count too."""
    clock = iter([1.0, 2.0, 2.0, 2.0, 3.0, 5.0])  # one reading per event
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    sink = _Sink()
    timer = RequestTimer(sink=sink)
    sub = _Submission([_Request()])
    events = [
        TextDelta("a", 1, step=1),  # first token: TTFT
        TextDelta("b", 2, step=2), TextDelta("c", 3, step=2), TextDelta("d", 4, step=2),
        TextDelta("ef", 6, tokens=2, step=4),  # token 5's text waited for token 6
        Finished("stop", 5, 8),  # two more tokens without text (a stop string)
    ]
    for event in events:
        timer.observe(_Item(0, event), sub)
    itl = sink.values("observe_itl")
    assert len(itl) == 8 - 1  # every generated token but the first (that one is TTFT)
    assert itl == pytest.approx([1 / 3] * 3 + [0.5] * 2 + [1.0] * 2)
    assert sum(itl) == pytest.approx(5.0 - 2.0 + 1.0)  # first group at 1.0 → last at 5.0
    (stats,) = sink.values("observe_sequence")
    assert isinstance(stats, SequenceStats)
    assert (stats.prompt_tokens, stats.generation_tokens, stats.max_tokens) == (5, 8, 9)
    assert stats.inference_s == pytest.approx(stats.prefill_s + stats.decode_s)
    assert sink.values("observe_params_n") == [1]


def test_token_histogram_buckets():
    hist = TokenHistogram()
    for value in (1, 3, 8, 9, 20000):
        hist.observe(value)
    buckets = dict(hist.cumulative())
    assert buckets["1"] == 1 and buckets["8"] == 3 and buckets["16"] == 4
    assert buckets["16384"] == 4 and buckets["+Inf"] == 5 and hist.total == 20021


def _scrape(client: TestClient) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("vllm:") and ('model_name="tiny"' in line or "cache_config" in line):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _get(scrape: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in scrape.items() if re.fullmatch(re.escape(prefix) + r"\{.*", k)
               and "le=" not in k)


def test_vllm_series_move_with_a_request(client: TestClient):
    before = _scrape(client)
    body = {"model": "default", "prompt": "Numbers: 0 1 2 3 4 5", "max_tokens": 5, "n": 2,
            "temperature": 0}
    usage = client.post("/v1/completions", json=body).json()["usage"]
    after = _scrape(client)

    def delta(name: str) -> float:
        return _get(after, name) - _get(before, name)

    assert delta("vllm:request_params_n_count") == 1 and delta("vllm:request_params_n_sum") == 2
    assert delta("vllm:request_prompt_tokens_count") == 2
    assert delta("vllm:request_prompt_tokens_sum") == 2 * usage["prompt_tokens"]  # per choice
    assert delta("vllm:request_generation_tokens_sum") == usage["completion_tokens"] == 10
    assert delta("vllm:request_params_max_tokens_sum") == 10
    for phase in ("prefill", "decode", "inference"):
        assert delta(f"vllm:request_{phase}_time_seconds_count") == 2
    assert delta("vllm:inter_token_latency_seconds_count") == 10 - 2  # all but firsts
    assert delta("vllm:iteration_tokens_total_count") >= 5
    assert delta("vllm:iteration_tokens_total_sum") >= 10
    assert _get(after, "vllm:num_preemptions_total") == 0
    assert 0 <= _get(after, "vllm:kv_cache_usage_perc") <= 1
    (info,) = [k for k in after if k.startswith("vllm:cache_config_info")]
    assert 'enable_prefix_caching="' in info and after[info] == 1
