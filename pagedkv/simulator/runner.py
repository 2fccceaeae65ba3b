"""Orchestrate one ``pagedkv simulate`` run: workload → modes → a plain-dict report.

Kept apart from argument parsing so that scripts and tests can run exactly what the CLI runs
(``SimulationConfig`` → :func:`run_simulation`) and get the same report the CLI renders.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.advice import serving_warnings
from pagedkv.simulator.blocks import BlockStream, build_block_stream
from pagedkv.simulator.contiguous import RESERVATIONS, ContiguousBackend, default_max_model_len
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.hitrate import capacities_for, manager_policies, run_policy
from pagedkv.simulator.oracle import infinite_cache
from pagedkv.simulator.paged import PagedBackend
from pagedkv.simulator.parallel import resolve_jobs, run_points
from pagedkv.simulator.progress import ProgressBar
from pagedkv.simulator.serving import MemoryBackend, SchedulerLimits, replay
from pagedkv.simulator.trace import Request, Trace

MODES = ("hitrate", "serve", "baselines")
DEFAULT_CAPACITY_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)


@dataclass
class SimulationConfig:
    """Everything a run needs besides the workload (the CLI flags, one to one)."""

    modes: tuple[str, ...] = MODES
    block_sizes: tuple[int, ...] = (16,)
    capacities: tuple[int, ...] = ()  # blocks
    capacity_tokens: tuple[int, ...] = ()
    policies: tuple[str, ...] = ()  # () = every manager policy + belady
    warmup: float = 0.5
    partial: str = "cache"
    kv_tokens: int | None = None  # serving / baseline memory; None = sized from the trace
    serve_policy: str = "lru"
    prefix_caching: bool | None = None  # None = on iff the trace has prefix information
    watermark: float = 0.0
    max_model_len: int | None = None
    arrival_scale: float = 1.0
    cost: LinearCostModel = field(default_factory=LinearCostModel)
    limits: SchedulerLimits = field(default_factory=SchedulerLimits)
    jobs: int = 1  # worker processes for sweeps; 0 = one per core

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise InvalidArgumentError(f"unknown mode(s) {bad or self.modes}; known: {MODES}")
        if not self.block_sizes or min(self.block_sizes) <= 0:
            raise InvalidArgumentError(f"block sizes must be positive, got {self.block_sizes}")
        if self.kv_tokens is not None and any(m != "hitrate" for m in self.modes):
            serving_blocks(self.kv_tokens, self.block_sizes[0], given=True)
        if not self.arrival_scale > 0:
            raise InvalidArgumentError(f"arrival_scale must be > 0, got {self.arrival_scale}")
        resolve_jobs(self.jobs)
        known = [*manager_policies(), "belady"]
        unknown = [p for p in self.policies if p not in known]
        if unknown:
            raise InvalidArgumentError(f"unknown policy {unknown}; known: {known}")
        if self.serve_policy not in manager_policies():
            raise InvalidArgumentError(
                f"unknown serving policy {self.serve_policy!r}; known: {list(manager_policies())}"
            )
        for bs in self.block_sizes:  # token capacities that hold no block fail before the run
            capacities_for(bs, self.capacities, self.capacity_tokens)


def default_capacities(stream: BlockStream) -> list[int]:
    """Fractions of the trace's distinct blocks (its infinite-cache working set)."""
    unique = len(np.unique(stream.keys))
    return sorted({max(1, math.ceil(unique * f)) for f in DEFAULT_CAPACITY_FRACTIONS})


def default_kv_tokens(trace: Trace) -> int:
    """Serving memory when not given: 4x the longest request rounded up to a power of two,
    at least 16384 tokens — small enough that memory is the bottleneck, large enough that every
    request fits."""
    longest = max(r.input_len + max(1, r.output_len) for r in trace.requests)
    return max(16384, 1 << (4 * longest - 1).bit_length())


HitPoint = tuple[int, int, str, float, str]  # block size, capacity, policy, warmup, partial


def _hitrate_point(streams: dict[int, BlockStream], point: HitPoint) -> dict[str, Any]:
    """One sweep point (module level, so worker processes can run it)."""
    bs, cap, policy, warmup, partial = point
    return run_policy(streams[bs], policy, cap, warmup, partial).to_dict()


def _hitrate(trace: Trace, cfg: SimulationConfig, bar: ProgressBar) -> list[dict[str, Any]]:
    policies = list(cfg.policies) or [*manager_policies(), "belady"]
    parallel = resolve_jobs(cfg.jobs) > 1
    streams: dict[int, BlockStream] = {}
    out: list[dict[str, Any]] = []
    points: list[HitPoint] = []
    for bs in dict.fromkeys(cfg.block_sizes):
        bar.task(f"splitting trace into {bs}-token blocks").update(0, 1)
        stream = build_block_stream(trace, bs)
        bar.update(1, 1)
        out.append(infinite_cache(stream, cfg.warmup).to_dict())  # the ceiling, then the points
        caps = capacities_for(bs, cfg.capacities, cfg.capacity_tokens)
        mine = [
            (bs, cap, policy, cfg.warmup, cfg.partial)
            for cap in caps or default_capacities(stream)
            for policy in policies
        ]
        if parallel:  # run every block size's points together at the end
            streams[bs] = stream
            points += mine
            out += [{}] * len(mine)  # placeholders, filled in sweep order below
            continue
        for _, cap, policy, warmup, partial in mine:  # one stream in memory at a time
            bar.task(f"hit rate {policy} bs={bs} cap={cap}")
            res = run_policy(stream, policy, cap, warmup, partial, bar.update)
            bar.update(1, 1)
            out.append(res.to_dict())
    if points:
        bar.task(f"hit-rate sweep, {len(points)} replays in {resolve_jobs(cfg.jobs)} processes")
        results = iter(run_points(_hitrate_point, streams, points, cfg.jobs, bar.update))
        out = [row or next(results) for row in out]
    return out


def _scaled(trace: Trace, scale: float) -> Trace:
    if scale == 1.0:
        return trace
    reqs = [
        Request(r.arrival_ms / scale, r.input_len, r.output_len, r.hash_ids) for r in trace.requests
    ]
    return Trace(reqs, trace.hash_block_size, trace.name, dict(trace.meta))


def serving_blocks(kv_tokens: int, block_size: int, *, given: bool) -> int:
    """Blocks of ``block_size`` in ``kv_tokens`` of serving memory; refuses zero with what
    would fit."""
    blocks = kv_tokens // block_size
    if blocks <= 0:
        what = "--kv-tokens" if given else "the default serving memory (--kv-tokens)"
        raise InvalidArgumentError(
            f"{what} of {kv_tokens:,} tokens holds 0 blocks of {block_size:,} tokens, so the "
            f"serving replay would have no KV memory: use --block-size <= {kv_tokens:,}, "
            f"--kv-tokens >= {block_size:,}, or --mode hitrate"
        )
    return blocks


ServeInputs = tuple[Trace, BlockStream, int, SimulationConfig]  # trace, stream, blocks, config
BackendSpec = tuple[str, Any]  # ("paged", prefix caching on?) or ("contiguous", reservation)


def _backend(inputs: ServeInputs, spec: BackendSpec) -> MemoryBackend:
    trace, stream, blocks, cfg = inputs
    kind, arg = spec
    if kind == "paged":
        return PagedBackend(
            stream, blocks, policy=cfg.serve_policy, prefix_caching=arg, watermark=cfg.watermark
        )
    max_len = cfg.max_model_len or default_max_model_len(trace)
    return ContiguousBackend(trace, blocks * stream.block_size, arg, max_len)


def _serve_point(
    inputs: ServeInputs, spec: BackendSpec
) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """One serving replay (module level, so worker processes can run it)."""
    be = _backend(inputs, spec)
    res = replay(inputs[0], be, inputs[3].cost, inputs[3].limits)
    return be.name, dict(res.summary), res.timeline


def _serve(
    trace: Trace, cfg: SimulationConfig, blocks: int, bar: ProgressBar
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], int]:
    trace = _scaled(trace, cfg.arrival_scale)
    bs = cfg.block_sizes[0]
    inputs: ServeInputs = (trace, build_block_stream(trace, bs), blocks, cfg)
    specs: list[BackendSpec] = []
    caching = False
    if "serve" in cfg.modes:
        caching = trace.has_prefix_info if cfg.prefix_caching is None else cfg.prefix_caching
        specs.append(("paged", caching))
    if "baselines" in cfg.modes:
        if not specs or caching:  # the baselines compare against paging without sharing
            specs.append(("paged", False))
        specs += [("contiguous", r) for r in RESERVATIONS]
    if resolve_jobs(cfg.jobs) > 1 and len(specs) > 1:
        bar.task(f"{len(specs)} serving replays in {resolve_jobs(cfg.jobs)} processes")
        runs = run_points(_serve_point, inputs, specs, cfg.jobs, bar.update)
    else:
        runs = []
        for spec in specs:
            be = _backend(inputs, spec)
            bar.task(f"serving replay {be.name}")
            res = replay(trace, be, cfg.cost, cfg.limits, bar.update)
            runs.append((be.name, dict(res.summary), res.timeline))
    summaries = [summary for _, summary, _ in runs]
    timelines = {name: timeline for name, _, timeline in runs}
    return summaries, timelines, blocks * bs


def run_simulation(
    trace: Trace, cfg: SimulationConfig, progress: ProgressBar | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Run the configured modes; return the report and the serving timelines (for plots)."""
    cfg.validate()
    bar = progress or ProgressBar(enabled=False)
    report: dict[str, Any] = {"workload": trace.summary()}
    conf = asdict(cfg)
    conf["cost_model"] = cfg.cost.describe()
    report["config"] = conf
    timelines: dict[str, dict[str, np.ndarray]] = {}
    serving = "serve" in cfg.modes or "baselines" in cfg.modes
    if serving:  # before the hit-rate sweep: a memory that holds no block fails at once
        kv = cfg.kv_tokens or default_kv_tokens(trace)
        blocks = serving_blocks(kv, cfg.block_sizes[0], given=cfg.kv_tokens is not None)
    if "hitrate" in cfg.modes:
        if not trace.has_prefix_info:
            report["notes"] = ["trace has no prefix information: hit rate is 0 by construction"]
        report["hitrate"] = _hitrate(trace, cfg, bar)
    if serving:
        report["serving"], timelines, kv = _serve(trace, cfg, blocks, bar)
        report["config"]["kv_tokens_used"] = kv
        report["warnings"] = serving_warnings(
            report["serving"], trace, cfg.cost, cfg.arrival_scale, cfg.limits.max_num_seqs
        )
    bar.close()
    return report, timelines
