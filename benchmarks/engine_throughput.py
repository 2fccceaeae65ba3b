"""Serving throughput: the pagedkv engine vs. HF static batching vs. HF continuous batching.

Usage::

    python benchmarks/engine_throughput.py                    # both models, ~10 min on 2 cores
    python benchmarks/engine_throughput.py --quick            # ~1 min smoke run
    python benchmarks/engine_throughput.py --model random-50m --num-requests 64 --json

The same model, prompts and **KV memory budget** (``--kv-budget-mb``; default: 4096 tokens of
the model's fp32 KV, 1024 with ``--quick``) go through

* (a) ``pagedkv``: ``LLM(model, kv_cache_memory=budget, enable_chunked_prefill=True)``, greedy,
  per-request ``max_tokens``; all requests submitted at once (offline).
* (b) ``HF static``: ``model.generate`` on left-padded batches (``attention_mask``), taken in
  arrival order, each as large as the budget allows when every request reserves its maximum
  length: ``k * (longest prompt in the batch + max_new_tokens) * KV bytes/token <= budget``
  (and ``k <= --max-num-seqs``). ``max_new_tokens`` is the batch's largest ``max_tokens``; EOS
  stops a row but the row stays in the batch until every row is done.
* (c) ``HF CB``: transformers' continuous batching, paged cache sized to the same budget
  (``ContinuousBatchingConfig(page_size=block_size, num_blocks=budget // block bytes,
  max_batch_tokens=..., max_requests_per_batch=...)``). ``model.generate_batch`` when every
  request has the same ``max_tokens`` (chat workload); with per-request ``max_tokens``
  (random-model workload) the same manager through ``continuous_batching_context_manager`` +
  ``add_request(max_new_tokens=...)`` (what ``generate_batch`` does inside, but with each
  request's own limit, so (c) does no wasted decoding).

Workloads (``_workload.py``, seeded): the default real model (SmolLM2-135M-Instruct) gets chat
prompts of lognormal length (16-512 tokens) and one ``max_tokens``, answers ending at EOS; the
~50M random Llama gets random token prompts and per-request output lengths.

Counting: only *useful* output tokens, i.e. each request's output cut at its own ``max_tokens``
and just after its first EOS (EOS counted, as vLLM does); HF's padding and its tokens past a
row's limit are not counted. Throughput = useful tokens / wall time of the generation (for (c):
first request created -> last request finished, without the manager's set-up and warm-up,
which are shown apart). Each system first runs a small untimed warm-up.

Latency (all requests arrive at t=0): (a) ``RequestOutput.metrics`` (TTFT = arrival -> first
token; TPOT = (finish - first token) / (n - 1)); (b) a streamer time-stamps every decoding step
of a batch: TTFT = benchmark start -> the batch's first token (queueing behind earlier batches
included), TPOT = (time of the row's last useful token - first token) / (n - 1); (c)
``record_timestamps=True``: TTFT = request created -> first token, TPOT likewise.

Greedy agreement: the fraction of requests whose useful token ids are identical between (a) and
(b) / (c), and where the others first diverge (batched / padded fp32 arithmetic differs in the
last bits, which can flip near-ties; a flip changes the rest of the answer).

Engine overhead (a): ``engine.totals`` gives step time and executor (forward) time; the model's
own forward of the same packed batch inside each step is timed by wrapping the native Llama
forward (Llama models) or by forward hooks on the HF model (other families; a hook on a Llama
would send its steps to the HF path).
Reported: (step - executor) / step and (step - model forward) / step (target <= 10%).

Targets (issue 9, side by side in one run): a/b >= 2, a/c >= 1.5, overhead <= 10%.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workload import Workload, chat_workload, random_workload

from pagedkv.engine import LLM, SamplingParams
from pagedkv.engine.kv_sizing import kv_bytes_per_block
from pagedkv.integrations.hf_support import check_model_supported
from pagedkv.models import LoadedModel, load_model, random_llama_50m

TARGET_B, TARGET_C, TARGET_OVERHEAD = 2.0, 1.5, 0.10
SYSTEMS = {"a": "pagedkv engine", "b": "HF generate (static)", "c": "HF continuous batching"}
MODELS = ("default", "random-50m")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results
@dataclass
class Result:
    system: str
    tokens: list[list[int]] | None = None  # useful output ids per request (None: failed)
    wall: float = 0.0  # seconds the throughput divides by
    ttft: list[float] = field(default_factory=list)
    tpot: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def useful_tokens(self) -> int:
        return sum(len(t) for t in self.tokens or [])

    @property
    def tok_s(self) -> float | None:
        if self.error or not self.wall:
            return None
        return self.useful_tokens / self.wall


def useful(ids: list[int], max_tokens: int, eos: set[int]) -> list[int]:
    """A request's output as it counts: cut at ``max_tokens`` and just after the first EOS."""
    ids = [int(t) for t in ids[:max_tokens]]
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def pct(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}


def error_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def guarded(system: str, fn: Callable[..., Result], *args: Any) -> Result:
    try:
        return fn(*args)
    except Exception as exc:  # a benchmark reports a failing system and goes on
        log(traceback.format_exc())
        return Result(system, error=error_text(exc))
    finally:
        gc.collect()


# --------------------------------------------------------------------------- (a) pagedkv
def run_pagedkv(lm: LoadedModel, wl: Workload, budget: int, args: argparse.Namespace) -> Result:
    opts: dict[str, Any] = {
        "block_size": args.block_size,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_batched_tokens,
        "enable_chunked_prefill": True,
        "backend": args.backend,
    }
    warm = LLM(lm, num_blocks=64, **opts)
    warm.generate([p[:32] for p in wl.prompts[:2]], SamplingParams(temperature=0.0, max_tokens=4))
    del warm
    gc.collect()

    llm = LLM(lm, kv_cache_memory=budget, **opts)
    eng = llm.engine
    steps: list[tuple[int, int]] = []  # (sequences, tokens) per step
    schedule = eng.scheduler.schedule

    def recording_schedule() -> Any:
        out = schedule()
        if out.scheduled:
            steps.append((len(out.scheduled), out.num_batched_tokens))
        return out

    eng.scheduler.schedule = recording_schedule  # type: ignore[method-assign]
    model_time, started = [0.0], [0.0]

    def pre(module: Any, inputs: Any) -> None:
        started[0] = time.perf_counter()

    def post(module: Any, inputs: Any, output: Any) -> None:
        model_time[0] += time.perf_counter() - started[0]

    native = eng.runner.native
    hooks = []
    if native is not None:
        # The native Llama forward: time it directly (a hook would send steps to the HF path).
        forward = native.forward

        def timed(*a: Any) -> Any:
            pre(None, None)
            out = forward(*a)
            post(None, None, out)
            return out

        setattr(native, "forward", timed)  # noqa: B010
    else:
        hooks = [lm.model.register_forward_pre_hook(pre), lm.model.register_forward_hook(post)]
    params = [SamplingParams(temperature=0.0, max_tokens=m) for m in wl.max_tokens]
    try:
        t0 = time.perf_counter()
        outs = llm.generate(wl.prompts, params)
        wall = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    res = Result("a", wall=wall)
    failed = [o for o in outs if o.error]
    if failed:
        res.error = f"{len(failed)}/{len(outs)} requests failed, e.g. {failed[0].error}"
        return res
    eos = set(wl.eos_ids)
    res.tokens = [
        useful(o.outputs[0].token_ids, m, eos) for o, m in zip(outs, wl.max_tokens, strict=True)
    ]
    for o, toks in zip(outs, res.tokens, strict=True):
        if o.metrics.ttft is not None:
            res.ttft.append(o.metrics.ttft)
        tpot = o.metrics.tpot(len(toks))
        if tpot is not None:
            res.tpot.append(tpot)
    tot = eng.totals
    step_t, fwd_t, mdl_t = tot["step_time"], tot["forward_time"], model_time[0]
    seqs = [s for s, _ in steps]
    res.info = {
        "kv_blocks": eng.num_usable_blocks,
        "kv_capacity_tokens": eng.num_usable_blocks * args.block_size,
        "steps": int(tot["steps"]),
        "mean_seqs_per_step": float(np.mean(seqs)) if seqs else 0.0,
        "max_seqs_per_step": max(seqs, default=0),
        "mean_tokens_per_step": float(np.mean([t for _, t in steps])) if steps else 0.0,
        "preemptions": eng.scheduler.num_preemptions,
        "cached_prompt_tokens": sum(o.num_cached_tokens for o in outs),
        "step_time_s": step_t,
        "runner_forward_time_s": fwd_t,
        "model_forward_time_s": mdl_t,
        "overhead_vs_runner_forward": (step_t - fwd_t) / step_t if step_t else None,
        "overhead_vs_model_forward": (step_t - mdl_t) / step_t if step_t else None,
        "outside_steps_s": wall - step_t,
        "finish_reasons": _count(o.outputs[0].finish_reason for o in outs),
    }
    return res


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


# --------------------------------------------------------------------------- (b) HF static
def static_batches(
    wl: Workload, bytes_per_token: int, budget: int, max_seqs: int
) -> list[list[int]]:
    """Arrival-order batches, each as large as the budget allows when every request reserves
    ``longest prompt in the batch + max_new_tokens`` tokens of KV."""
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = new = 0
    for i, (p, m) in enumerate(zip(wl.prompts, wl.max_tokens, strict=True)):
        if (len(p) + m) * bytes_per_token > budget:
            raise ValueError(
                f"request {i} ({len(p)} prompt + {m} new tokens) does not fit the "
                f"KV budget of {budget} bytes even alone"
            )
        nl, nn = max(longest, len(p)), max(new, m)
        if cur and (
            (len(cur) + 1) * (nl + nn) * bytes_per_token > budget or len(cur) + 1 > max_seqs
        ):
            batches.append(cur)
            cur, nl, nn = [], len(p), m
        cur.append(i)
        longest, new = nl, nn
    if cur:
        batches.append(cur)
    return batches


def run_hf_static(lm: LoadedModel, wl: Workload, budget: int, args: argparse.Namespace) -> Result:
    from transformers import GenerationConfig as _GenerationConfig
    from transformers.generation.streamers import BaseStreamer

    generation_config_cls: Any = _GenerationConfig  # untyped constructor

    class StepClock(BaseStreamer):
        """Time of each decoding step (the first ``put`` is the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if self.prompt_seen:
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self) -> None:
            pass

    model, pad, eos = lm.model, wl.pad_id, set(wl.eos_ids)
    bpt = kv_bytes_per_token(lm)

    def gen_batch(prompts: list[list[int]], max_new: int, clock: StepClock | None) -> torch.Tensor:
        """Greedy ``generate`` of one left-padded batch; returns the new tokens ``[k, n]``."""
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), pad, dtype=torch.int64)
        mask = torch.zeros((len(prompts), longest), dtype=torch.int64)
        for r, p in enumerate(prompts):
            ids[r, longest - len(p) :] = torch.tensor(p)
            mask[r, longest - len(p) :] = 1
        cfg = generation_config_cls(
            max_new_tokens=max_new, do_sample=False, eos_token_id=wl.eos_ids, pad_token_id=pad
        )
        out: torch.Tensor = model.generate(
            input_ids=ids, attention_mask=mask, generation_config=cfg, streamer=clock
        )
        return out[:, longest:]

    batches = static_batches(wl, bpt, budget, args.max_num_seqs)
    gen_batch([p[:32] for p in wl.prompts[:2]], 4, None)  # warm-up (untimed)
    tokens: list[list[int]] = [[] for _ in wl.prompts]
    res = Result("b")
    row_steps = padded_prompt = 0
    t0 = time.perf_counter()
    for idx in batches:
        clock = StepClock()
        gen = gen_batch([wl.prompts[i] for i in idx], max(wl.max_tokens[i] for i in idx), clock)
        row_steps += len(idx) * len(clock.times)
        padded_prompt += len(idx) * max(len(wl.prompts[i]) for i in idx)
        for r, i in enumerate(idx):
            toks = useful(gen[r].tolist(), wl.max_tokens[i], eos)
            tokens[i] = toks
            if clock.times:
                res.ttft.append(clock.times[0] - t0)
                if len(toks) >= 2:
                    res.tpot.append((clock.times[len(toks) - 1] - clock.times[0]) / (len(toks) - 1))
    res.wall = time.perf_counter() - t0
    res.tokens = tokens
    sizes = [len(b) for b in batches]
    res.info = {
        "batches": len(batches),
        "mean_batch": float(np.mean(sizes)),
        "max_batch": max(sizes),
        "batch_sizes": sizes,
        "decode_row_steps": row_steps,
        "decode_waste": 1 - res.useful_tokens / row_steps if row_steps else None,
        "prompt_padding": 1 - sum(map(len, wl.prompts)) / padded_prompt,
    }
    return res


# --------------------------------------------------------------------------- (c) HF CB
def run_hf_cb(lm: LoadedModel, wl: Workload, budget: int, args: argparse.Namespace) -> Result:
    from transformers import GenerationConfig as _GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import cache as cb_cache
    from transformers.generation.continuous_batching.utils import WorkloadHints

    generation_config_cls: Any = _GenerationConfig  # untyped constructor
    model, eos = lm.model, set(wl.eos_ids)
    block_bytes = args.block_size * kv_bytes_per_token(lm)
    num_blocks = max(1, budget // block_bytes)

    def cb_config() -> Any:
        return ContinuousBatchingConfig(
            page_size=args.block_size,
            num_blocks=num_blocks,
            max_batch_tokens=args.max_batched_tokens or 2048,
            max_requests_per_batch=args.max_num_seqs,
            allow_block_sharing=True,
        )

    def gen_config(max_new: int) -> Any:
        return generation_config_cls(
            max_new_tokens=max_new, do_sample=False, eos_token_id=wl.eos_ids, pad_token_id=wl.pad_id
        )

    captured: dict[str, Any] = {}
    orig_init = cb_cache.PagedAttentionCache.__init__

    def init(self: Any, *a: Any, **k: Any) -> None:
        orig_init(self, *a, **k)
        captured.update(
            num_blocks=int(self.num_blocks),
            max_batch_tokens=int(self.max_batch_tokens),
            cache_bytes=int(self.cache_tensor.numel()),
            prefix_sharing=bool(self.use_prefix_sharing),
            attn_implementation=str(model.config._attn_implementation),
        )

    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record.getMessage())

    catcher = Catch(level=logging.ERROR)
    tf_logger = logging.getLogger("transformers")
    attn_before = model.config._attn_implementation
    cb_cache.PagedAttentionCache.__init__ = init  # type: ignore[method-assign]
    tf_logger.addHandler(catcher)
    uniform = len(set(wl.max_tokens)) == 1
    try:
        model.generate_batch(
            [p[:32] for p in wl.prompts[:2]],
            generation_config=gen_config(4),
            continuous_batching_config=cb_config(),
        )  # warm-up (untimed)
        errors.clear()
        t0 = time.perf_counter()
        if uniform:
            api = "generate_batch"
            out = model.generate_batch(
                wl.prompts,
                generation_config=gen_config(wl.max_tokens[0]),
                continuous_batching_config=cb_config(),
                record_timestamps=True,
            )
            by_req = [out.get(f"req_{i}") for i in range(wl.num_requests)]
        else:
            api = "continuous_batching_context_manager + add_request(max_new_tokens=...)"
            by_req = _cb_manager_run(
                model, wl, gen_config(max(wl.max_tokens)), cb_config(), WorkloadHints
            )
        call_wall = time.perf_counter() - t0
    finally:
        cb_cache.PagedAttentionCache.__init__ = orig_init  # type: ignore[method-assign]
        tf_logger.removeHandler(catcher)
        if model.config._attn_implementation != attn_before:
            model.set_attn_implementation(attn_before)
    res = Result("c")
    missing = [i for i, r in enumerate(by_req) if r is None]
    failed = [r for r in by_req if r is not None and r.error is not None]
    bad = [i for i, r in enumerate(by_req) if r is not None and list(r.prompt_ids) != wl.prompts[i]]
    if missing or failed or bad:
        res.error = (
            f"{len(missing)} missing, {len(failed)} failed, {len(bad)} mismatched of "
            f"{wl.num_requests} requests; "
            + (f"error: {failed[0].error}; " if failed else "")
            + (f"logged: {errors[0][:300]}" if errors else "")
        )
        return res
    res.tokens = [
        useful(list(r.generated_tokens), m, eos) for r, m in zip(by_req, wl.max_tokens, strict=True)
    ]
    res.wall = max(r.lifespan[1] for r in by_req) - min(r.created_time for r in by_req)
    for r, toks in zip(by_req, res.tokens, strict=True):
        ts = r.timestamps or []
        if ts:
            res.ttft.append(ts[0] - r.created_time)
            if len(toks) >= 2 and len(ts) >= len(toks):
                res.tpot.append((ts[len(toks) - 1] - ts[0]) / (len(toks) - 1))
    res.info = {
        "api": api,
        "call_wall_s": call_wall,
        "setup_and_teardown_s": call_wall - res.wall,
        "page_size": args.block_size,
        "num_blocks_requested": num_blocks,
        **captured,
    }
    return res


def _cb_manager_run(
    model: Any, wl: Workload, gen_cfg: Any, cb_cfg: Any, hints_cls: Any
) -> list[Any]:
    """``generate_batch``'s loop, with each request's own ``max_new_tokens``."""
    hints = hints_cls(
        max_prompt_length=max(len(p) for p in wl.prompts),
        max_generated_length=max(wl.max_tokens),
        num_requests=wl.num_requests,
    )
    results: dict[str, Any] = {}
    with model.continuous_batching_context_manager(
        generation_config=gen_cfg,
        continuous_batching_config=cb_cfg,
        block=True,
        timeout=5,
        workload_hints=hints,
    ) as manager:
        for i, (p, m) in enumerate(zip(wl.prompts, wl.max_tokens, strict=True)):
            manager.add_request(p, request_id=f"r{i}", max_new_tokens=m, record_timestamps=True)
        while len(results) < wl.num_requests:
            r = manager.get_result(timeout=1)
            if r is not None:
                if r.is_finished():
                    results[r.request_id] = r
            elif not manager.is_running():
                break
    return [results.get(f"r{i}") for i in range(wl.num_requests)]


# --------------------------------------------------------------------------- comparison
def agreement(ref: list[list[int]], other: list[list[int]]) -> dict[str, Any]:
    identical, firsts, matched, total = 0, [], 0, 0
    for a, b in zip(ref, other, strict=True):
        n = min(len(a), len(b))
        d = next((k for k in range(n) if a[k] != b[k]), n)
        matched += d
        total += max(len(a), len(b))
        if a == b:
            identical += 1
        else:
            firsts.append(d)
    return {
        "identical": identical,
        "requests": len(ref),
        "identical_fraction": identical / len(ref) if ref else None,
        "first_divergence": (
            {"min": min(firsts), "p50": float(np.median(firsts)), "max": max(firsts)}
            if firsts
            else None
        ),
        "tokens_before_divergence_fraction": matched / total if total else None,
    }


def kv_bytes_per_token(lm: LoadedModel) -> int:
    dtype = next(lm.model.parameters()).dtype
    return kv_bytes_per_block(check_model_supported(lm.model).kv_dims, 1, dtype)


def build(model: str, args: argparse.Namespace) -> tuple[LoadedModel, Workload]:
    n = args.num_requests
    if model == "random-50m":
        lm = random_llama_50m(args.seed)
        wl = random_workload(
            3,
            259,
            lm.eos_token_ids,
            0,
            num_requests=n,
            max_tokens=args.max_tokens,
            seed=args.seed,
            max_len=args.max_prompt_len,
            prompt_median=args.prompt_median,
        )
    else:
        lm = load_model(None)
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else lm.eos_token_ids[0]
        wl = chat_workload(
            tok,
            lm.eos_token_ids,
            int(pad),
            num_requests=n,
            max_tokens=args.max_tokens,
            seed=args.seed,
            max_len=args.max_prompt_len,
            prompt_median=args.prompt_median,
        )
    return lm, wl


def bench_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    t_load = time.perf_counter()
    lm, wl = build(model, args)
    log(f"[{model}] loaded {lm.name} in {time.perf_counter() - t_load:.1f} s; {wl.describe()}")
    bpt = kv_bytes_per_token(lm)
    budget = (
        int(args.kv_budget_mb * (1 << 20))
        if args.kv_budget_mb
        else args.default_budget_tokens * bpt
    )
    runners: dict[str, Callable[[LoadedModel, Workload, int, argparse.Namespace], Result]] = {
        "a": run_pagedkv,
        "b": run_hf_static,
        "c": run_hf_cb,
    }
    results: dict[str, Result] = {}
    for s in args.systems:
        log(f"[{model}] running ({s}) {SYSTEMS[s]} ...")
        t = time.perf_counter()
        r = results[s] = guarded(s, runners[s], lm, wl, budget, args)
        log(
            f"[{model}] ({s}) done in {time.perf_counter() - t:.1f} s"
            + (f": ERROR {r.error}" if r.error else f": {r.tok_s:.1f} tok/s")
        )
    out: dict[str, Any] = {
        "model": model,
        "model_name": lm.name,
        "workload": wl.describe(),
        "notes": wl.notes,
        "kv_budget_bytes": budget,
        "kv_bytes_per_token": bpt,
        "kv_budget_tokens": budget // bpt,
        "systems": {},
        "agreement": {},
        "speedup": {},
    }
    for s, r in results.items():
        out["systems"][s] = {
            "name": SYSTEMS[s],
            "error": r.error,
            "useful_tokens": r.useful_tokens,
            "wall_s": r.wall,
            "tok_s": r.tok_s,
            "ttft_s": pct(r.ttft),
            "tpot_s": pct(r.tpot),
            "info": r.info,
        }
    a = results.get("a")
    for s in ("b", "c"):
        other = results.get(s)
        if a is None or other is None or a.tokens is None or other.tokens is None:
            continue
        out["agreement"][s] = agreement(a.tokens, other.tokens)
        if a.tok_s and other.tok_s:
            ratio = a.tok_s / other.tok_s
            target = TARGET_B if s == "b" else TARGET_C
            out["speedup"][f"a/{s}"] = {"ratio": ratio, "target": target, "met": ratio >= target}
    if a is not None and not a.error:
        ov = a.info["overhead_vs_runner_forward"]
        out["overhead"] = {
            "value": ov,
            "vs_model_forward": a.info["overhead_vs_model_forward"],
            "target": TARGET_OVERHEAD,
            "met": ov is not None and ov <= TARGET_OVERHEAD,
        }
    del lm
    gc.collect()
    return out


# --------------------------------------------------------------------------- report
def _fmt_p(p: dict[str, float] | None, scale: float, digits: int) -> str:
    if p is None:
        return "-"
    return "/".join(f"{p[k] * scale:.{digits}f}" for k in ("p50", "p90", "p99"))


def print_report(rep: dict[str, Any]) -> None:
    print(f"\n== {rep['model']} ({rep['model_name']}): {rep['workload']}")
    print(
        f"   KV budget {rep['kv_budget_bytes'] / (1 << 20):.1f} MiB = "
        f"{rep['kv_budget_tokens']} tokens ({rep['kv_bytes_per_token'] / 1024:.1f} KiB/token)"
    )
    print(
        f"   {'system':<26}{'useful tok':>11}{'wall s':>9}{'tok/s':>9}"
        f"   {'TTFT p50/p90/p99 s':<22}{'TPOT p50/p90/p99 ms':<22}"
    )
    for s, r in rep["systems"].items():
        label = f"({s}) {r['name']}"
        if r["error"]:
            print(f"   {label:<26}  ERROR: {r['error']}")
            continue
        print(
            f"   {label:<26}{r['useful_tokens']:>11}{r['wall_s']:>9.1f}{r['tok_s']:>9.1f}"
            f"   {_fmt_p(r['ttft_s'], 1, 2):<22}{_fmt_p(r['tpot_s'], 1e3, 0):<22}"
        )
    sy = rep["systems"]
    if "a" in sy and not sy["a"]["error"]:
        i = sy["a"]["info"]
        print(
            f"   (a): {i['kv_blocks']} blocks = {i['kv_capacity_tokens']} tokens; {i['steps']} "
            f"steps, {i['mean_seqs_per_step']:.1f} seqs / {i['mean_tokens_per_step']:.0f} "
            f"tokens per step (max {i['max_seqs_per_step']} seqs); {i['preemptions']} "
            f"preemptions; {i['cached_prompt_tokens']} prompt tokens from the prefix cache; "
            f"finish {i['finish_reasons']}"
        )
    if "b" in sy and not sy["b"]["error"]:
        i = sy["b"]["info"]
        print(
            f"   (b): {i['batches']} batches, mean {i['mean_batch']:.1f} / max "
            f"{i['max_batch']} rows (budget reserves prompt+max_new per row); "
            f"{100 * (i['decode_waste'] or 0):.0f}% of row decode steps wasted (finished "
            f"rows), {100 * i['prompt_padding']:.0f}% of prompt positions padding"
        )
    if "c" in sy and not sy["c"]["error"]:
        i = sy["c"]["info"]
        print(
            f"   (c): {i['api']}; cache {i.get('num_blocks', '?')} blocks of {i['page_size']} "
            f"(asked {i['num_blocks_requested']}), max_batch_tokens "
            f"{i.get('max_batch_tokens', '?')}, attn {i.get('attn_implementation', '?')}, "
            f"prefix sharing {i.get('prefix_sharing', '?')}; set-up+teardown "
            f"{i['setup_and_teardown_s']:.1f} s not counted"
        )
    for s, ag in rep["agreement"].items():
        fd = ag["first_divergence"]
        div = (
            f"; the others first diverge at output token min/p50/max "
            f"{fd['min']}/{fd['p50']:.0f}/{fd['max']}"
            if fd
            else ""
        )
        print(
            f"   greedy agreement (a) vs ({s}): {ag['identical']}/{ag['requests']} requests "
            f"identical{div}; {100 * ag['tokens_before_divergence_fraction']:.1f}% of tokens "
            f"before the first divergence"
        )
    if "overhead" in rep:
        i, o = sy["a"]["info"], rep["overhead"]
        print(
            f"   engine overhead: step {i['step_time_s']:.2f} s, runner.forward "
            f"{i['runner_forward_time_s']:.2f} s, model forward (same packed batches) "
            f"{i['model_forward_time_s']:.2f} s -> (step - forward)/step = "
            f"{100 * o['value']:.1f}% ({100 * o['vs_model_forward']:.1f}% vs the model "
            f"forward alone); target <= {100 * TARGET_OVERHEAD:.0f}%: "
            f"{'MET' if o['met'] else 'NOT MET'}"
        )
    for k, sp in rep["speedup"].items():
        print(
            f"   speedup {k} = {sp['ratio']:.2f}x (target >= {sp['target']}x: "
            f"{'MET' if sp['met'] else 'NOT MET'})"
        )


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=[*MODELS, "both"], default="both")
    p.add_argument("--num-requests", type=int, default=None, help="default 48 (8 with --quick)")
    p.add_argument("--max-tokens", type=int, default=None, help="default 128 (24 with --quick)")
    p.add_argument(
        "--kv-budget-mb",
        type=float,
        default=None,
        help="KV memory budget in MiB for every system (default: 4096 tokens of the "
        "model's KV, 1024 with --quick)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=64,
        help="max sequences per step / batch, for every system",
    )
    p.add_argument(
        "--max-batched-tokens", type=int, default=2048, help="per-step token budget of (a) and (c)"
    )
    p.add_argument("--backend", default="torch", help="pagedkv attention backend")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not systems or any(s not in SYSTEMS for s in systems):
        p.error(f"--systems: expected a comma-separated subset of a,b,c, got {args.systems!r}")
    args.systems = systems
    args.num_requests = args.num_requests or (8 if args.quick else 48)
    args.max_tokens = args.max_tokens or (24 if args.quick else 128)
    args.max_prompt_len = 128 if args.quick else 512
    args.prompt_median = 48.0 if args.quick else 120.0
    args.default_budget_tokens = 1024 if args.quick else 4096
    args.models = list(MODELS) if args.model == "both" else [args.model]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    reports = [bench_model(m, args) for m in args.models]
    total = time.perf_counter() - t0
    cmd = "python benchmarks/engine_throughput.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if args.json:
        print(
            json.dumps(
                {
                    "command": cmd.strip(),
                    "torch_threads": args.threads,
                    "total_s": total,
                    "models": reports,
                },
                indent=2,
            )
        )
        return 0
    print(f"command: {cmd.strip()}   (torch threads {args.threads}, total {total:.0f} s)")
    print(
        "useful tokens = each output cut at its own max_tokens and after its first EOS; "
        "TTFT from t=0 (all requests arrive at once)"
    )
    for rep in reports:
        print_report(rep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
