"""Prometheus metrics, named like vLLM's where vLLM has one (docs/PHASE4_TIER3A_CONTRACT.md).

Each app owns a :class:`ServerMetrics` with its own ``CollectorRegistry`` (several apps can
live in one test process). Request-level series are fed by the middleware and by each
request's :class:`~app.generation.timing.RequestTimer`; engine state (running, waiting,
token totals, prefix cache, embedding batcher, loaded models) is read at scrape time by
:class:`_EngineCollector`, so a scrape always sees the engines' current numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.core.metrics_prefix import prefix_cache_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Buckets follow vLLM's, with finer low ends for small models on CPUs.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
               0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
               30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
                 100000)
N_BUCKETS = (1, 2, 5, 10, 20)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0)
RTF_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
MODEL = ("model_name",)
EMBEDDING_ROUTES = frozenset({"/v1/embeddings", "/embeddings"})
# Per finished sequence: (SequenceStats field, vLLM name, help, buckets)
SEQUENCE_SERIES = (
    ("prompt_tokens", "vllm:request_prompt_tokens", "Prompt tokens of each finished "
     "sequence.", TOKEN_BUCKETS),
    ("generation_tokens", "vllm:request_generation_tokens", "Generated tokens of each "
     "finished sequence.", TOKEN_BUCKETS),
    ("max_tokens", "vllm:request_params_max_tokens", "max_tokens of each finished sequence "
     "(after defaults and caps).", TOKEN_BUCKETS),
    ("prefill_s", "vllm:request_prefill_time_seconds", "Admission to the batch to first "
     "token.", E2E_BUCKETS),
    ("decode_s", "vllm:request_decode_time_seconds", "First token to the sequence's end.",
     E2E_BUCKETS),
    ("inference_s", "vllm:request_inference_time_seconds", "Admission to the batch to the "
     "sequence's end (prefill + decode).", E2E_BUCKETS),
)


class ServerMetrics:
    """All series of one server; also the :class:`~app.generation.timing.MetricsSink`."""

    def __init__(self, manager: Any = None, lifecycle: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.manager = manager
        r = self.registry
        self.request_success = Counter(
            "vllm:request_success", "Finished engine sequences by finish reason "
            "(stop, length, abort: client gone, error: failed).",
            [*MODEL, "finished_reason"], registry=r)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Request arrival to first generated text.",
            MODEL, buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Gap between text events of one sequence.",
            MODEL, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Request arrival to last byte of a "
            "generation response.", MODEL, buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram(
            "vllm:request_queue_time_seconds", "Time a sequence waited for a batch slot.",
            MODEL, buckets=TTFT_BUCKETS, registry=r)
        self.sequence_series = {  # SequenceStats field → its histogram
            field: Histogram(name, doc, MODEL, buckets=buckets, registry=r)
            for field, name, doc, buckets in SEQUENCE_SERIES
        }
        self.request_n = Histogram(
            "vllm:request_params_n", "Choices (n) per prompt of a generation request.",
            MODEL, buckets=N_BUCKETS, registry=r)
        self.http_requests = Counter(
            "http_requests", "HTTP requests by method, route template and status.",
            ["method", "route", "status"], registry=r)
        self.http_latency = Histogram(
            "http_request_duration_seconds", "HTTP request duration by route template.",
            ["method", "route"], buckets=HTTP_BUCKETS, registry=r)
        self.embedding_requests = Counter(
            "mlx_server_embedding_requests", "Embedding requests by model and HTTP status.",
            [*MODEL, "status"], registry=r)
        self.embedding_latency = Histogram(
            "mlx_server_embedding_request_latency_seconds", "Embedding request duration.",
            MODEL, buckets=HTTP_BUCKETS, registry=r)
        self.audio_seconds = Counter(
            "mlx_server_audio_seconds", "Seconds of audio processed: transcribed or "
            "translated (input) and synthesized (output).", [*MODEL, "task"], registry=r)
        self.audio_rtf = Histogram(
            "mlx_server_audio_real_time_factor", "Audio seconds per second of model time "
            "(above 1: faster than real time), per request.", [*MODEL, "task"],
            buckets=RTF_BUCKETS, registry=r)
        self.audio_requests = Counter(
            "mlx_server_audio_requests", "Audio requests by model, route and HTTP status.",
            [*MODEL, "route", "status"], registry=r)
        self.in_flight = Gauge(
            "mlx_server_http_requests_in_flight", "HTTP requests being served "
            "(health, readiness and metrics excluded).", registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes & co. (Linux only)
        if manager is not None:
            r.register(_EngineCollector(manager, lifecycle))

    # ---- MetricsSink ----------------------------------------------------------
    def observe_ttft(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)

    def observe_itl(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)

    def observe_queue(self, model: str, seconds: float) -> None:
        self.queue.labels(model).observe(seconds)

    def observe_e2e(self, model: str, seconds: float) -> None:
        self.e2e.labels(model).observe(seconds)

    def count_finished(self, model: str, reason: str) -> None:
        self.request_success.labels(model, reason).inc()

    def observe_sequence(self, model: str, stats: Any) -> None:
        """A finished sequence (``app.generation.timing.SequenceStats``)."""
        for field, histogram in self.sequence_series.items():
            histogram.labels(model).observe(getattr(stats, field))

    def observe_params_n(self, model: str, n: int) -> None:
        self.request_n.labels(model).observe(n)

    # ---- HTTP -----------------------------------------------------------------
    def observe_http(
        self, method: str, route: str, status: int, seconds: float, model: str | None
    ) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)
        model = self._registry_id(model)
        if route in EMBEDDING_ROUTES and model:
            self.embedding_requests.labels(model, str(status)).inc()
            if status == 200:
                self.embedding_latency.labels(model).observe(seconds)
        elif route.startswith("/v1/audio/") and model:
            self.audio_requests.labels(model, route, str(status)).inc()

    def observe_audio(self, model: str, task: str, audio_seconds: float,
                      compute_seconds: float) -> None:
        """One request's audio (``task``: transcribe, translate or speech) and model time."""
        self.audio_seconds.labels(model, task).inc(audio_seconds)
        if compute_seconds > 0 and audio_seconds > 0:
            self.audio_rtf.labels(model, task).observe(audio_seconds / compute_seconds)

    def _registry_id(self, name: str | None) -> str | None:
        """The registry id behind ``name``; None for names the registry does not know, so a
        client's made-up model names never become label values (unbounded series)."""
        registry = getattr(self.manager, "registry", None)
        if not name or registry is None:
            return None
        spec = registry.get(name)
        return spec.id if spec is not None else None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Reads engine, batcher and model-manager state when Prometheus scrapes."""

    def __init__(self, manager: Any, lifecycle: Any) -> None:
        self.manager = manager
        self.lifecycle = lifecycle

    def describe(self) -> list[Metric]:
        return []  # collected live; nothing to pre-register

    def _cache_config(self) -> GaugeMetricFamily:
        """vLLM's ``cache_config_info``: the engines' KV settings as labels, value 1."""
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "KV cache settings of the engines (labels).",
            labels=["enable_prefix_caching", "prefix_cache_bytes", "max_num_seqs",
                    "prefill_step_size"])
        settings = getattr(self.manager, "settings", None)
        if settings is not None:
            budget = settings.prefix_cache_bytes  # None: sized per model at load ("auto")
            info.add_metric([str(budget is None or budget > 0).lower(),
                             "auto" if budget is None else str(budget),
                             str(settings.max_batch_size),
                             str(settings.prefill_step_size)], 1.0)
        return info

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "vllm:num_requests_running", "Sequences in the running batch.", labels=MODEL)
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting", "Sequences waiting for a batch slot.", labels=MODEL)
        prompt = CounterMetricFamily(
            "vllm:prompt_tokens", "Prompt tokens admitted to the engine.", labels=MODEL)
        generated = CounterMetricFamily(
            "vllm:generation_tokens", "Tokens generated by the engine.", labels=MODEL)
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            labels=MODEL)
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.",
            labels=MODEL)
        cache_bytes = GaugeMetricFamily(
            "mlx_server_prefix_cache_bytes", "Bytes held by the prefix cache.", labels=MODEL)
        passes = CounterMetricFamily(
            "mlx_server_embedding_forward_passes", "Embedding forward passes.", labels=MODEL)
        served = CounterMetricFamily(
            "mlx_server_embedding_sequences", "Sequences embedded.", labels=MODEL)
        spec_steps = CounterMetricFamily(
            "vllm:spec_decode_num_drafts", "Speculative verification passes (prompt lookup).",
            labels=MODEL)
        spec_drafted = CounterMetricFamily(
            "vllm:spec_decode_num_draft_tokens", "Draft tokens proposed and verified.",
            labels=MODEL)
        spec_accepted = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens", "Draft tokens the model accepted.",
            labels=MODEL)
        spec_emitted = CounterMetricFamily(
            "vllm:spec_decode_num_emitted_tokens",
            "Tokens returned by speculative steps (accepted drafts + the model's own).",
            labels=MODEL)
        spec_rate = GaugeMetricFamily(
            "vllm:spec_decode_draft_acceptance_rate",
            "Accepted / proposed draft tokens since start.", labels=MODEL)
        loaded = GaugeMetricFamily(
            "mlx_server_model_loaded", "1 when the model is loaded.", labels=[*MODEL, "type"])
        load_s = GaugeMetricFamily(
            "mlx_server_model_load_seconds", "How long the model took to load.", labels=MODEL)
        memory = GaugeMetricFamily(
            "mlx_server_model_memory_bytes", "MLX memory the loaded model's load added.",
            labels=MODEL)
        iteration = HistogramMetricFamily(
            "vllm:iteration_tokens_total", "Tokens per engine step (prompt tokens prefilled "
            "plus tokens generated).", labels=MODEL)
        kv_usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "Prefix-cache KV bytes as a fraction of its byte "
            "budget (--prefix-cache-bytes; 0 when off).", labels=MODEL)
        preemptions = CounterMetricFamily(
            "vllm:num_preemptions", "Sequences preempted (this engine never preempts: a "
            "running sequence keeps its KV cache until it ends).", labels=MODEL)
        prefix_caches: list[tuple[str, Any]] = []
        for model_id, managed in list(self.manager.models.items()):
            engine = managed.engine
            loaded.add_metric([model_id, managed.spec.type], 1.0 if managed.state == "loaded"
                              else 0.0)
            if managed.load_seconds is not None:
                load_s.add_metric([model_id], managed.load_seconds)
            if managed.state == "loaded" and managed.memory_bytes is not None:
                memory.add_metric([model_id], managed.memory_bytes)
            if engine is None:
                continue
            stats = getattr(engine, "stats", None)
            if managed.spec.type == "lm" and stats is not None:
                running.add_metric([model_id], stats.running)
                hist = stats.iteration_tokens
                iteration.add_metric([model_id], hist.cumulative(), hist.total)
                preemptions.add_metric([model_id], 0)
                waiting.add_metric([model_id], stats.waiting)
                prompt.add_metric([model_id], stats.prompt_tokens)
                generated.add_metric([model_id], stats.generated_tokens)
                spec = getattr(engine, "spec_stats", None)
                if spec is not None:
                    spec_steps.add_metric([model_id], spec.drafts)
                    spec_drafted.add_metric([model_id], spec.drafted)
                    spec_accepted.add_metric([model_id], spec.accepted)
                    spec_emitted.add_metric([model_id], spec.emitted)
                    spec_rate.add_metric([model_id], spec.acceptance_rate)
                cache = getattr(engine, "prefix_cache", None)
                if cache is not None:
                    queries.add_metric([model_id], cache.stats.prompt_tokens)
                    hits.add_metric([model_id], cache.stats.cached_tokens)
                    cache_bytes.add_metric([model_id], cache.stats.bytes)
                    kv_usage.add_metric([model_id], cache.stats.bytes / max(1, cache.max_bytes))
                    prefix_caches.append((model_id, cache))
                else:
                    kv_usage.add_metric([model_id], 0.0)
            elif hasattr(engine, "stats_snapshot"):
                snap = engine.stats_snapshot()
                passes.add_metric([model_id], snap.get("forward_passes", 0))
                served.add_metric([model_id], snap.get("sequences_embedded", 0))
        yield from (running, waiting, prompt, generated, queries, hits, cache_bytes, spec_steps,
                    spec_drafted, spec_accepted, spec_emitted, spec_rate, passes, served, loaded,
                    load_s, memory, iteration, kv_usage, preemptions, self._cache_config())
        yield from prefix_cache_families(prefix_caches)
        if self.lifecycle is not None:
            yield GaugeMetricFamily(
                "mlx_server_draining", "1 while the server drains before exiting.",
                value=1.0 if self.lifecycle.draining else 0.0)
