"""Prometheus metrics under vLLM's names with a ``pagedkv:`` prefix, labelled by ``model_name``.

State (running/waiting/swapped requests, KV usage) and running totals (tokens, prefix-cache
queries and hits, preemptions) come from a snapshot the engine loop publishes after every turn
(each step, and every idle wait) through ``AsyncLLMEngine.on_step``: a scrape reads the latest
snapshot and never waits for the engine lock, which the loop holds through every step. Numbers
are therefore at most one step old, and always what the engine counted. Per-request numbers
(latency histograms, ``request_success`` by ``finished_reason``) are observed once, when the
engine reports a request finished (``LLMEngine.on_finish``); aborted and failed requests are
not successes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pagedkv.engine import AsyncLLMEngine, LLMEngine, RequestOutput

PREFIX = "pagedkv:"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
SUCCESS_REASONS = ("stop", "length")


def engine_snapshot(engine: LLMEngine) -> dict[str, float]:
    """Every engine number a scrape shows (call with the engine lock held)."""
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


def tier_metrics(stats: dict[str, dict[str, float]], model_name: str) -> Iterator[Metric]:
    """``pagedkv:kv_tier_*{tier="host|disk|remote"}`` from ``TieredKVCache.stats()``."""
    tiers = {name: st for name, st in stats.items() if name != "connector"}
    kinds: list[tuple[type[CounterMetricFamily | GaugeMetricFamily], dict[str, str]]] = [
        (CounterMetricFamily, _TIER_COUNTERS),
        (GaugeMetricFamily, _TIER_GAUGES),
    ]
    for kind, docs in kinds:
        for key, doc in docs.items():
            fam = kind(f"{PREFIX}kv_tier_{key}", doc, labels=["model_name", "tier"])
            for name, st in tiers.items():
                fam.add_metric([model_name, name], float(st.get(key, 0)))
            yield fam


class EngineCollector(Collector):
    """The engine's numbers from the latest published snapshot (never takes the engine lock)."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.snapshot: dict[str, float] = engine.call(engine_snapshot)
        self.published = 0  # snapshots published so far (tests wait for a fresh one)
        engine.on_step = self.publish

    def publish(self, engine: LLMEngine) -> None:
        """Called by the engine loop with the lock held, after every turn."""
        self.snapshot = engine_snapshot(engine)  # one assignment: a scrape sees all or none
        self.published += 1

    def collect(self) -> Iterator[Metric]:
        snap, labels = self.snapshot, [self.model_name]
        for name, doc in _GAUGES.items():
            gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["model_name"])
            gauge.add_metric(labels, snap[name])
            yield gauge
        for name, doc in _COUNTERS.items():
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["model_name"])
            counter.add_metric(labels, snap[name])
            yield counter
        tiers = self.engine.engine.tiers  # tier counters are the tiers' own, not the engine's
        if tiers is not None:
            yield from tier_metrics(tiers.stats(), self.model_name)


class ServerMetrics:
    """The registry ``/metrics`` serves for one engine."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self.collector = EngineCollector(engine, model_name)
        self.registry.register(self.collector)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(
                PREFIX + name, doc, ["model_name"], buckets=buckets, registry=self.registry
            )

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
        self.success = Counter(
            PREFIX + "request_success",
            "Requests finished by a stop or their length (not aborted, not failed).",
            ["finished_reason", "model_name"],
            registry=self.registry,
        )
        for reason in SUCCESS_REASONS:
            self.success.labels(reason, model_name)  # shown at 0 before the first request
        engine.engine.on_finish = self.observe

    def observe(self, out: RequestOutput) -> None:
        """One finished request (called by the engine loop)."""
        m, name = out.metrics, self.model_name
        pairs: list[tuple[Histogram, float | None]] = [
            (self.ttft, m.ttft),
            (self.e2e, m.e2e_latency),
            (self.queue, m.queue_time),
            (self.tpot, m.tpot(max((len(o.token_ids) for o in out.outputs), default=0))),
        ]
        for hist, value in pairs:
            if value is not None:
                hist.labels(name).observe(value)
        reason = request_finish_reason(out)
        if reason in SUCCESS_REASONS:
            self.success.labels(reason, name).inc()


def request_finish_reason(out: RequestOutput) -> str:
    """A finished request's one reason: ``"error"`` or ``"abort"`` if any sample ended so,
    else ``"length"`` if any sample ran out of length, else ``"stop"``."""
    reasons = {c.finish_reason for c in out.outputs}
    if out.error or "error" in reasons:
        return "error"
    for reason in ("abort", "length"):
        if reason in reasons:
            return reason
    return "stop"
