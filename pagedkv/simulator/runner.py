"""Orchestrate one ``pagedkv simulate`` run: workload → modes → a plain-dict report.

Kept apart from argument parsing so that scripts and tests can run exactly what the CLI runs
(``SimulationConfig`` → :func:`run_simulation`) and get the same report the CLI renders.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pagedkv.engine.config import EngineConfig
from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.advice import serving_warnings
from pagedkv.simulator.blocks import BlockStream, build_block_stream
from pagedkv.simulator.contiguous import RESERVATIONS, ContiguousBackend, default_max_model_len
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.engine_serve import simulate_serve
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
    # serving and baselines: the engine's knobs (EngineConfig's names and defaults)
    kv_tokens: int | None = None  # KV memory; None = sized from the trace
    num_blocks: int | None = None  # usable blocks, instead of kv_tokens
    serve_policy: str = "lru"  # EngineConfig.eviction_policy
    prefix_caching: bool = True  # the baselines' paged arm never shares
    partial_block_hits: bool = True  # EngineConfig.enable_partial_block_hits
    watermark: float = 0.01
    max_model_len: int | None = None  # None = max(2048, next power of two of the longest)
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None  # None = EngineConfig.token_budget's default
    enable_chunked_prefill: bool = True
    preemption_mode: str = "recompute"  # the baselines always recompute
    num_host_blocks: int = 0
    arrival_scale: float = 1.0
    cost: LinearCostModel = field(default_factory=LinearCostModel)
    jobs: int = 1  # worker processes for sweeps; 0 = one per core

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise InvalidArgumentError(f"unknown mode(s) {bad or self.modes}; known: {MODES}")
        if not self.block_sizes or min(self.block_sizes) <= 0:
            raise InvalidArgumentError(f"block sizes must be positive, got {self.block_sizes}")
        if self.kv_tokens is not None and self.num_blocks is not None:
            raise InvalidArgumentError(
                f"give --num-blocks ({self.num_blocks}) or --kv-tokens ({self.kv_tokens}), not both"
            )
        if self.kv_tokens is not None and any(m != "hitrate" for m in self.modes):
            serving_blocks(self.kv_tokens, self.block_sizes[0], given=True)
        if any(m != "hitrate" for m in self.modes):
            self.engine_config(1)  # EngineConfig's own checks (swap without host blocks, ...)
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

    def engine_config(self, usable_blocks: int) -> EngineConfig:
        """The engine configuration the serve mode runs (and whose values the baselines
        read)."""
        return EngineConfig(
            block_size=self.block_sizes[0],
            num_blocks=usable_blocks,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enable_chunked_prefill=self.enable_chunked_prefill,
            preemption_mode=self.preemption_mode,
            num_host_blocks=self.num_host_blocks,
            eviction_policy=self.serve_policy,
            enable_prefix_caching=self.prefix_caching,
            enable_partial_block_hits=self.partial_block_hits,
            watermark=self.watermark,
            max_model_len=self.max_model_len,
        )


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


ServeInputs = tuple[Trace, BlockStream, int, SimulationConfig, SchedulerLimits]
BackendSpec = tuple[str, Any]  # ("paged", None) or ("contiguous", reservation)


def _backend(inputs: ServeInputs, spec: BackendSpec) -> MemoryBackend:
    trace, stream, blocks, cfg, _ = inputs
    kind, arg = spec
    if kind == "paged":
        return PagedBackend(
            stream, blocks, policy=cfg.serve_policy, prefix_caching=False, watermark=cfg.watermark
        )
    return ContiguousBackend(trace, blocks * stream.block_size, arg, model_len(trace, cfg))


def _baseline_point(
    inputs: ServeInputs, spec: BackendSpec
) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """One baseline replay (module level, so worker processes can run it)."""
    be = _backend(inputs, spec)
    res = replay(inputs[0], be, inputs[3].cost, inputs[4])
    return be.name, dict(res.summary), res.timeline


def _baselines(
    trace: Trace, cfg: SimulationConfig, blocks: int, limits: SchedulerLimits, bar: ProgressBar
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Paging without prefix sharing next to the contiguous reservations, on the simplified
    scheduler (:mod:`~pagedkv.simulator.serving`): the engine's BlockManager cannot model a
    contiguous reservation, and only allocation may differ between the arms."""
    trace = _scaled(trace, cfg.arrival_scale)
    bs = cfg.block_sizes[0]
    inputs: ServeInputs = (trace, build_block_stream(trace, bs), blocks, cfg, limits)
    specs: list[BackendSpec] = [("paged", None), *(("contiguous", r) for r in RESERVATIONS)]
    if resolve_jobs(cfg.jobs) > 1:
        bar.task(f"{len(specs)} baseline replays in {resolve_jobs(cfg.jobs)} processes")
        runs = run_points(_baseline_point, inputs, specs, cfg.jobs, bar.update)
    else:
        runs = []
        for spec in specs:
            be = _backend(inputs, spec)
            bar.task(f"baseline replay {be.name}")
            res = replay(trace, be, cfg.cost, limits, bar.update)
            runs.append((be.name, dict(res.summary), res.timeline))
    return [summary for _, summary, _ in runs], {name: tl for name, _, tl in runs}


def model_len(trace: Trace, cfg: SimulationConfig) -> int:
    """``--max-model-len``, else max(2048, next power of two of the longest request)."""
    return cfg.max_model_len or default_max_model_len(trace)


def usable_blocks(trace: Trace, cfg: SimulationConfig) -> int:
    """``--num-blocks``, else ``--kv-tokens`` (default: sized from the trace) in blocks."""
    if cfg.num_blocks is not None:
        return cfg.num_blocks
    kv = cfg.kv_tokens or default_kv_tokens(trace)
    return serving_blocks(kv, cfg.block_sizes[0], given=cfg.kv_tokens is not None)


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
    if serving:  # before the hit-rate sweep: a pool or budget the engine refuses fails at once
        blocks = usable_blocks(trace, cfg)
        max_len = model_len(trace, cfg)
        engine_cfg = cfg.engine_config(blocks)
        limits = SchedulerLimits(
            cfg.max_num_seqs, engine_cfg.token_budget(max_len), cfg.enable_chunked_prefill
        )
    if "hitrate" in cfg.modes:
        if not trace.has_prefix_info:
            report["notes"] = ["trace has no prefix information: hit rate is 0 by construction"]
        report["hitrate"] = _hitrate(trace, cfg, bar)
    if serving:
        rows: list[dict[str, Any]] = []
        if "serve" in cfg.modes:
            bar.task("serving replay through the engine's scheduler")
            row, timeline, settings = simulate_serve(
                trace,
                engine_cfg,
                cfg.cost,
                max_model_len=max_len,
                arrival_scale=cfg.arrival_scale,
                progress=bar.update,
            )
            report["serving"] = [row]
            report["config"]["engine"] = settings
            timelines[row["backend"]] = timeline
            rows.append(row)
        if "baselines" in cfg.modes:
            report["baselines"], baseline_tl = _baselines(trace, cfg, blocks, limits, bar)
            timelines.update(baseline_tl)
            rows += report["baselines"]
        report["config"]["kv_tokens_used"] = blocks * cfg.block_sizes[0]
        report["warnings"] = serving_warnings(
            rows, trace, cfg.cost, cfg.arrival_scale, cfg.max_num_seqs
        )
    bar.close()
    return report, timelines
