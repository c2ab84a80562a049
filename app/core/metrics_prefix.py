"""Prefix-cache metrics by tier (RAM, disk), read from engines' stats at scrape time.

vLLM's ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (tokens, all tiers) stay
in :mod:`app.core.metrics`; vLLM has no per-tier names, so these are ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_TIER = ["model_name", "tier"]


def prefix_cache_families(caches: Iterable[tuple[str, Any]]) -> Iterator[Metric]:
    """Families for ``(model id, PrefixCache)`` pairs."""
    hits = CounterMetricFamily(
        "mlx_server_prefix_cache_tier_hits", "Lookups served, by tier.", labels=_TIER)
    tokens = CounterMetricFamily(
        "mlx_server_prefix_cache_tier_hit_tokens", "Prompt tokens served, by tier.",
        labels=_TIER)
    held = GaugeMetricFamily(
        "mlx_server_prefix_cache_tier_bytes", "Bytes held, by tier.", labels=_TIER)
    entries = GaugeMetricFamily(
        "mlx_server_prefix_cache_tier_entries", "Entries held, by tier.", labels=_TIER)
    lookups = CounterMetricFamily(
        "mlx_server_prefix_cache_lookups", "Prefix-cache lookups (one per sequence).",
        labels=["model_name"])
    evictions = CounterMetricFamily(
        "mlx_server_prefix_cache_evictions", "Entries evicted from RAM.", labels=["model_name"])
    writes = CounterMetricFamily(
        "mlx_server_prefix_cache_disk_written_bytes", "Bytes written to the disk tier.",
        labels=["model_name"])
    refused = CounterMetricFamily(
        "mlx_server_prefix_cache_disk_budget_skips",
        "Disk writes skipped by the write budget or size bound.", labels=["model_name"])
    for model_id, cache in caches:
        stats = cache.stats
        lookups.add_metric([model_id], stats.queries)
        evictions.add_metric([model_id], stats.evictions)
        for tier, tier_stats in stats.tiers.items():
            if tier == "disk" and cache.disk is None:
                continue
            hits.add_metric([model_id, tier], tier_stats.hits)
            tokens.add_metric([model_id, tier], tier_stats.cached_tokens)
            held.add_metric([model_id, tier], tier_stats.bytes)
            entries.add_metric([model_id, tier], tier_stats.entries)
        if cache.disk is not None:
            writes.add_metric([model_id], cache.disk.stats.written_bytes)
            refused.add_metric([model_id], cache.disk.stats.skipped_budget)
    yield from (hits, tokens, held, entries, lookups, evictions, writes, refused)
