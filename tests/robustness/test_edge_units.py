"""The edge's pure parts, without a server: body checks, key guard, request timer."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from app.api.auth import ApiKeyGuard
from app.core.limits import check_json_body, is_json_content
from app.engine.lm.types import Failed, Finished, SamplingParams, TextDelta
from app.generation import timing
from app.generation.timing import RequestTimer, SequenceStats


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@pytest.mark.parametrize(
    "body, code",
    [
        (nested(8), None),
        (nested(9), "json_too_deep"),
        (b'{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}', None),
        (b'{"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}', "json_too_deep"),
        (b'"' + b"[" * 100 + b'"', None),  # brackets inside a string are text
        (b'{"s": "\\\\ud800"}', None),  # an escaped backslash, then plain text
        (b'{"s": "\\ud83d\\ude00"}', None),  # a valid surrogate pair
        (b'{"s": "\\ud83d"}', "invalid_encoding"),
        (b'{"s": "\\ude00x"}', "invalid_encoding"),
        (b'{"s": "\xc3\x28"}', "invalid_encoding"),
        (b'{"s": broken', None),  # left to FastAPI's invalid_json
        (b"", None),
    ],
)
def test_check_json_body(body: bytes, code: str | None):
    error = check_json_body(body, max_depth=8)
    assert (error.code if error else None) == code
    if error is not None:
        assert error.status == 400


def test_json_content_types():
    assert is_json_content(None) and is_json_content("application/json; charset=utf-8")
    assert is_json_content("application/merge-patch+json")
    assert not is_json_content("text/plain") and not is_json_content("multipart/form-data")


def _scope(path: str, auth: str | None = None) -> dict:
    headers = [(b"authorization", auth.encode())] if auth else []
    return {"type": "http", "path": path, "headers": headers}


def test_api_key_guard():
    guard = ApiKeyGuard(["alpha", "beta"])
    assert guard.check(_scope("/health")) is None
    assert guard.check(_scope("/v1/models", "Bearer beta")) is None
    for auth in (None, "Bearer gamma", "Bearer alph", "Token alpha", "Bearer "):
        error = guard.check(_scope("/v1/models", auth))
        assert error is not None and error.status == 401 and error.code == "invalid_api_key"
    assert guard.check(_scope("/metrics")) is not None
    assert ApiKeyGuard(["alpha"], metrics_public=True).check(_scope("/metrics")) is None
    with pytest.raises(ValueError):
        ApiKeyGuard([])


@dataclass
class _Spec:
    id: str = "m"


@dataclass
class _Managed:
    spec: _Spec = field(default_factory=_Spec)


@dataclass
class _Request:
    enqueued_at: float = 10.0
    admitted_at: float | None = 10.5
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=8))


@dataclass
class _Submission:
    requests: list
    managed: _Managed = field(default_factory=_Managed)


@dataclass
class _Item:
    index: int
    event: object


class _Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def __getattr__(self, name: str):
        return lambda model, value: self.calls.append((name, model, value))


def test_request_timer_counts_tokens_reasons_and_aborts():
    sink = _Sink()
    timer = RequestTimer(sink=sink)
    sub = _Submission([_Request(), _Request(admitted_at=None), _Request()])
    timer.observe(_Item(0, TextDelta("a", 1)), sub)
    timer.observe(_Item(0, TextDelta("b", 2)), sub)
    timer.observe(_Item(0, Finished("length", 7, 2, cached_tokens=3)), sub)
    timer.observe(_Item(1, Failed("boom")), sub)
    timer.close()
    timer.close()  # idempotent
    assert (timer.prompt_tokens, timer.completion_tokens, timer.cached_tokens) == (7, 2, 3)
    assert timer.finish_reasons == ["length", "error", "abort"]  # choice 2 never ended
    assert timer.queue_s == pytest.approx(0.5) and timer.error_code == "internal_error"
    names = [c[0] for c in sink.calls]
    assert names.count("observe_ttft") == 1 and names.count("observe_itl") == 1
    assert names.count("observe_queue") == 1  # choice 1 was never admitted
    assert names.count("observe_e2e") == 1
    assert [c[2] for c in sink.calls if c[0] == "count_finished"] == ["length", "error",
                                                                      "abort"]


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
    itl = [value for name, _, value in sink.calls if name == "observe_itl"]
    assert len(itl) == 8 - 1  # every generated token but the first (that one is TTFT)
    assert itl == pytest.approx([1 / 3] * 3 + [0.5] * 2 + [1.0] * 2)
    assert sum(itl) == pytest.approx(5.0 - 2.0 + 1.0)  # first group at 1.0 → last at 5.0
    (stats,) = [value for name, _, value in sink.calls if name == "observe_sequence"]
    assert isinstance(stats, SequenceStats)
    assert (stats.prompt_tokens, stats.generation_tokens, stats.max_tokens) == (5, 8, 8)
    assert stats.inference_s == pytest.approx(stats.prefill_s + stats.decode_s)
    assert [value for name, _, value in sink.calls if name == "observe_params_n"] == [1]
