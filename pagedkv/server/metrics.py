"""Prometheus metrics under vLLM's names with a ``pagedkv:`` prefix.

State (running/waiting/swapped requests, KV usage) and running totals (tokens, prefix-cache
queries and hits, preemptions) are read from the engine at scrape time by a custom collector,
so they can never drift from what the engine did. Per-request latencies are histograms observed
once, when the engine reports a request finished (``LLMEngine.on_finish``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pagedkv.engine import AsyncLLMEngine, LLMEngine, RequestOutput

PREFIX = "pagedkv:"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


def engine_snapshot(engine: LLMEngine) -> dict[str, float]:
    """Every scraped number, read under the engine lock."""
    sched, mgr = engine.scheduler, engine.manager
    usable = engine.num_usable_blocks
    return {
        "num_requests_running": len(sched.running),
        "num_requests_waiting": len(sched.waiting),
        "num_requests_swapped": len(sched.swapped),
        "kv_cache_usage_perc": mgr.num_used_blocks / usable if usable else 0.0,
        "prefix_cache_queries": sched.prefix_query_tokens,
        "prefix_cache_hits": sched.prefix_hit_tokens,
        "num_preemptions": sched.num_preemptions,
        "prompt_tokens": engine.totals["prompt_tokens"],
        "generation_tokens": engine.totals["generation_tokens"],
        "request_success": engine.totals["finished_requests"],
    }


_GAUGES = {
    "num_requests_running": "Sequences in the running queue (on the device).",
    "num_requests_waiting": "Sequences waiting to be scheduled (new or preempted).",
    "num_requests_swapped": "Sequences swapped out to the host pool.",
    "kv_cache_usage_perc": "Fraction of usable KV blocks referenced by sequences (0..1).",
}
_COUNTERS = {
    "prefix_cache_queries": "Tokens looked up in the prefix cache at admission.",
    "prefix_cache_hits": "Tokens found in the prefix cache at admission.",
    "num_preemptions": "Sequences preempted (recompute or swap).",
    "prompt_tokens": "Prompt tokens of submitted requests.",
    "generation_tokens": "Tokens generated.",
    "request_success": "Requests finished (any reason).",
}


_TIER_COUNTERS = {
    "lookups": "Tier lookups (one per admitted prompt that missed on the device).",
    "hit_tokens": "Tokens the tier held at lookup.",
    "bytes_loaded": "Bytes read from the tier.",
    "bytes_stored": "Bytes written to the tier.",
    "rejected": "Values that failed validation (never used as KV).",
    "errors": "Tier faults (timeouts, connection errors); each cost only recomputation.",
    "dropped_writes": "Writes dropped (tier full, or the write queue full).",
}
_TIER_GAUGES = {"load_gbps": "Load throughput, GB/s.", "store_gbps": "Store throughput, GB/s."}


def tier_metrics(stats: dict[str, dict[str, float]]) -> Iterator[Metric]:
    """``pagedkv:kv_tier_*{tier="host|disk|remote"}`` from ``TieredKVCache.stats()``."""
    tiers = {name: st for name, st in stats.items() if name != "connector"}
    for key, doc in _TIER_COUNTERS.items():
        fam = CounterMetricFamily(f"{PREFIX}kv_tier_{key}", doc, labels=["tier"])
        for name, st in tiers.items():
            fam.add_metric([name], float(st.get(key, 0)))
        yield fam
    for key, doc in _TIER_GAUGES.items():
        gauge = GaugeMetricFamily(f"{PREFIX}kv_tier_{key}", doc, labels=["tier"])
        for name, st in tiers.items():
            gauge.add_metric([name], float(st.get(key, 0)))
        yield gauge


class EngineCollector(Collector):
    def __init__(self, engine: AsyncLLMEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        snap: dict[str, float] = self.engine.call(engine_snapshot)
        for name, doc in _GAUGES.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=snap[name])
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(PREFIX + name, doc, value=snap[name])
        tiers = self.engine.engine.tiers
        if tiers is not None:
            yield from tier_metrics(tiers.stats())


class ServerMetrics:
    """The registry ``/metrics`` serves for one engine."""

    def __init__(self, engine: AsyncLLMEngine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine))

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, buckets=buckets, registry=self.registry)

        self.ttft = hist(
            "time_to_first_token_seconds", "Arrival to first output token.", _LATENCY_BUCKETS
        )
        self.tpot = hist(
            "time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            _TPOT_BUCKETS,
        )
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to finish.", _LATENCY_BUCKETS)
        self.queue = hist(
            "request_queue_time_seconds", "Arrival to first scheduled.", _LATENCY_BUCKETS
        )
        engine.engine.on_finish = self.observe

    def observe(self, out: RequestOutput) -> None:
        m = out.metrics
        pairs: list[tuple[Any, float | None]] = [
            (self.ttft, m.ttft),
            (self.e2e, m.e2e_latency),
            (self.queue, m.queue_time),
            (self.tpot, m.tpot(max((len(o.token_ids) for o in out.outputs), default=0))),
        ]
        for hist, value in pairs:
            if value is not None:
                hist.observe(value)
