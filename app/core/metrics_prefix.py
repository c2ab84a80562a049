"""Prefix-cache metrics by tier (RAM, disk), read from engines' stats at scrape time.

vLLM's ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (tokens, all tiers) stay
in :mod:`app.core.metrics`; vLLM has no per-tier names, so these are ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_TIER = ["model_name", "tier"]
_MODEL = ["model_name"]
# (name, help, family type, labels, value of a (cache, tier stats) pair; tier families only)
_TIER_FAMILIES = [
    ("tier_hits", "Lookups served, by tier.", CounterMetricFamily, lambda t: t.hits),
    ("tier_hit_tokens", "Prompt tokens served, by tier.", CounterMetricFamily,
     lambda t: t.cached_tokens),
    ("tier_bytes", "Bytes held, by tier.", GaugeMetricFamily, lambda t: t.bytes),
    ("tier_entries", "Entries held, by tier.", GaugeMetricFamily, lambda t: t.entries),
]
_MODEL_FAMILIES = [
    ("lookups", "Prefix-cache lookups (one per sequence).", lambda c: c.stats.queries),
    ("evictions", "Entries evicted from RAM.", lambda c: c.stats.evictions),
    ("disk_written_bytes", "Bytes written to the disk tier.",
     lambda c: c.disk.stats.written_bytes if c.disk else None),
    ("disk_budget_skips", "Disk writes skipped by the write budget or size bound.",
     lambda c: c.disk.stats.skipped_budget if c.disk else None),
]


def prefix_cache_families(caches: Iterable[tuple[str, Any]]) -> Iterator[Metric]:
    """Families for ``(model id, PrefixCache)`` pairs."""
    caches = list(caches)
    for name, doc, kind, value in _TIER_FAMILIES:
        family = kind(f"mlx_server_prefix_cache_{name}", doc, labels=_TIER)
        for model_id, cache in caches:
            for tier, stats in cache.stats.tiers.items():
                if tier == "ram" or cache.disk is not None:
                    family.add_metric([model_id, tier], value(stats))
        yield family
    for name, doc, value in _MODEL_FAMILIES:
        family = CounterMetricFamily(f"mlx_server_prefix_cache_{name}", doc, labels=_MODEL)
        for model_id, cache in caches:
            if value(cache) is not None:
                family.add_metric([model_id], value(cache))
        yield family
