"""``pagedkv profile``: time the real engine on a grid of batch shapes and fit the simulator's
step cost model to it, so ``pagedkv simulate --cost FILE.json`` predicts this engine.

The grid makes the shapes a serving engine steps through, each several times:

* decode ladders: ``B`` sequences of up to a context length decode, then one or more of them are
  aborted, and so on down to the smallest batch (32, 24, then every size from 16 to 1 at 16
  tokens, 16 .. 1 at 112, 8 .. 1 at 64, 12 .. 1 at 256, 4 .. 2 at 512, 2 and 1 at 1000). Their
  prompts are
  computed first, several per step and chunked by the token budget: those steps are prefill
  and mixed records too;
* mixed steps: prompts join a ladder at some of its batch sizes, so their (chunked) prefill
  runs beside decodes (the engine then runs both attention paths: a cost of its own); some
  start with the ladder's first prompt (a prefix-cache hit, as a chat follow-up's is);
* prefills of 8 .. 1536 tokens alone, several short prompts in one step, and short chunks after
  cached prefixes of 96 .. 1024 tokens;
* all of it three times (:class:`ProfileGrid`), every other pass in reverse order.

Every step after a warm-up is a record (``engine.last_step``: the step's shapes and wall time).
Every 5th record is held out of the fit and reported separately: the error a replay can expect
on steps the fit did not see. Prompts are random token ids (no prefix-cache hits); sampling is
what a replayed trace request does (seeded, temperature 1, ``ignore_eos`` so no request ends
early). Points that do not fit the engine (the model's length, the token budget, the KV pool,
``max_num_seqs``) are shrunk or skipped, and said so. Timings are as noisy as the machine:
profile on an otherwise idle one.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar

from pagedkv.errors import PagedKVError
from pagedkv.simulator.costfit import error_stats, fit_cost_model
from pagedkv.simulator.costmodel import CostModelInfo, ErrorStats, LinearCostModel
from pagedkv.simulator.profile_grid import (  # the grid's names, importable from here too
    DEFAULT_GRID,
    QUICK_GRID,
    Ladder,
    Prefills,
    ProfileGrid,
)

if TYPE_CHECKING:  # the engine imports torch: only when profiling
    from pagedkv.engine import LLMEngine
    from pagedkv.engine.scheduler_output import StepRecord

__all__ = [
    "DEFAULT_GRID",
    "QUICK_GRID",
    "Ladder",
    "Prefills",
    "ProfileError",
    "ProfileGrid",
    "ProfileResult",
    "collect_steps",
    "fit_profile",
    "pair_counting",
    "profile_cost_model",
    "split_held_out",
]
HOLD_OUT_EVERY = 5
T = TypeVar("T")


class ProfileError(PagedKVError):
    """The engine did not step as the grid expects (no step ran, or a phase never ended)."""


@dataclass
class ProfileResult:
    """``model`` (fitted on ``fitted``, with its :class:`CostModelInfo`), its error on those
    steps and on the ``held_out`` ones (None when there are none), and what was skipped."""

    model: LinearCostModel
    fit_error: ErrorStats
    held_out_error: ErrorStats | None
    fitted: list[StepRecord]
    held_out: list[StepRecord]
    skipped: list[str] = field(default_factory=list)


Say = Callable[[str], None]


class _Runner:
    """Drives one engine through the grid, collecting a record per step."""

    def __init__(self, engine: LLMEngine, seed: int, say: Say) -> None:
        self.engine, self.say = engine, say
        self.rng = random.Random(seed)
        self.records: list[StepRecord] = []
        self.skipped: list[str] = []
        self.count = 0
        self.budget = engine.config.token_budget(engine.max_model_len)
        self.block = engine.config.block_size
        self.max_seqs = engine.config.max_num_seqs
        usable = engine.num_usable_blocks
        self.pool_blocks = usable - int(engine.config.watermark * usable)

    def _add(self, length: int, max_tokens: int, prefix: Sequence[int] = ()) -> str:
        """Queue a prompt of ``prefix`` + ``length`` random tokens."""
        from pagedkv.engine import SamplingParams

        self.count += 1
        rid = f"profile-{self.count}"
        ids = [*prefix, *(self.rng.randrange(self.engine.vocab_size) for _ in range(length))]
        # the sampling a replayed trace request does (trace_prompts): seeded, EOS ignored
        params = SamplingParams(
            max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=len(self.records)
        )
        self.engine.add_request(rid, {"prompt_token_ids": ids}, params)
        return rid

    def _step(self) -> tuple[StepRecord, set[str]]:
        before = self.engine.last_step
        outputs = self.engine.step()
        rec = self.engine.last_step
        if rec is None or rec is before:
            raise ProfileError("the engine ran no step although requests were waiting")
        self.records.append(rec)
        return rec, {o.request_id for o in outputs if o.finished}

    def _blocks(self, seqs: int, tokens: int) -> int:
        return seqs * -(-tokens // self.block)

    def ladder(self, lad: Ladder, label: str = "decode ladder") -> None:
        mix = lad.mix_prompt if lad.mix_at else 0
        mix_steps = -(-mix // max(1, self.budget - lad.batches[0])) + 1 if mix else 0
        mixes = sum(1 for b in lad.batches if b in lad.mix_at) if mix else 0
        # the first prompts decode while the last are computed: no sequence may run out of
        # tokens before the ladder ends (it aborts them)
        prompt_steps = 4 + 2 * lad.batches[0] * lad.context // max(1, self.budget)
        max_tokens = len(lad.batches) * lad.steps + mixes * mix_steps + prompt_steps + 2
        name = f"{label} at context {lad.context}"
        if lad.context + max_tokens > self.engine.max_request_tokens:
            self.skipped.append(f"{name}: longer than the engine allows")
            return
        spare = self._blocks(1, mix + 1) if mix else 0
        fits = [
            b
            for b in lad.batches
            if b + (1 if mix and b in lad.mix_at else 0) <= self.max_seqs
            and self._blocks(b, lad.context + max_tokens) + spare <= self.pool_blocks
        ]
        if len(fits) < len(lad.batches):
            dropped = [b for b in lad.batches if b not in fits]
            self.skipped.append(f"{name}: batch sizes {dropped} (KV pool or max_num_seqs)")
        if not fits:
            return
        self.say(f"  {name}: {fits[0]}..{fits[-1]} sequences")
        n = fits[0]
        shrink = [(i * lad.context) // (2 * n) if lad.ragged else 0 for i in range(n)]
        live = [self._add(lad.context - d, max_tokens) for d in shrink]
        first_prompt = self.engine.requests[live[0]].prompt_token_ids
        for _ in range(prompt_steps):
            rec, _ = self._step()
            if len(rec.shapes) == fits[0] and all(n == 1 for _, n in rec.shapes):
                break
        else:
            raise ProfileError(f"{name}: the prompts were never all decoding")
        first = True
        for b in fits:
            while len(live) > b:
                self.engine.abort(live.pop())
            for _ in range(lad.steps - 1 if first else lad.steps):
                self._step()
            first = False
            if b in lad.mix_at and mix:
                prefix = first_prompt if lad.mix_cached else ()
                rid = self._add(mix, 1, prefix)
                self._until_done({rid}, f"{name}: mixed prompt", mix_steps)
        for rid in live:
            self.engine.abort(rid)

    def prefills(self, p: Prefills) -> None:
        name = f"prefill {p.count} x {p.length} tokens"
        name += f" after {p.cached} cached" if p.cached else ""
        total = p.cached + p.length + 1
        if (
            p.length * p.count > self.budget
            or total > self.engine.max_request_tokens
            or p.count > self.max_seqs
            or self._blocks(p.count, total) > self.pool_blocks
        ):
            self.skipped.append(f"{name}: over the token budget, model length or KV pool")
            return
        prefix = [self.rng.randrange(self.engine.vocab_size) for _ in range(p.cached)]
        if prefix:  # computed (and cached) first, in as many chunks as the budget needs
            steps = 2 + -(-p.cached // max(1, self.budget))
            self._until_done({self._add(0, 1, prefix)}, f"{name}: its prefix", steps)
        ids = {self._add(p.length, 1, prefix) for _ in range(p.count)}
        self._until_done(ids, name, 2 * p.count + 2)

    def _until_done(self, pending: set[str], name: str, limit: int) -> None:
        for _ in range(limit):
            pending -= self._step()[1]
            if not pending:
                return
        raise ProfileError(f"{name}: not finished after {limit} steps")


def collect_steps(
    engine: LLMEngine,
    grid: ProfileGrid = DEFAULT_GRID,
    *,
    seed: int = 0,
    say: Say | None = None,
    first_pass: int = 0,
) -> tuple[list[StepRecord], list[str]]:
    """Run ``grid`` on ``engine`` (idle: no requests of its own); returns the step records
    after the warm-up, in order, and the points skipped. ``first_pass``: the index the first
    pass counts as (odd passes run in reverse), for a caller that runs one pass at a time
    between other work (``benchmarks/sim_vs_real.py`` interleaves them with real runs)."""
    if engine.has_unfinished_requests():
        raise ProfileError("profile needs an idle engine (it has unfinished requests)")
    run = _Runner(engine, seed, say or (lambda _: None))
    run.ladder(grid.warmup, "warm-up")  # first calls allocate and pick kernels: not what steps cost
    del run.records[:]
    del run.skipped[:]
    points: list[Ladder | Prefills] = [*grid.ladders, *grid.prefills]
    for rep in range(first_pass, first_pass + grid.repeats):
        if grid.repeats > 1:
            run.say(f" pass {rep + 1 - first_pass} of {grid.repeats}")
        for point in reversed(points) if rep % 2 else points:
            if isinstance(point, Ladder):
                run.ladder(point)
            else:
                run.prefills(point)
    return run.records, list(dict.fromkeys(run.skipped))  # each skipped point said once


def pair_counting(engine: LLMEngine) -> str:
    """How ``engine``'s attention scores pairs (:mod:`pagedkv.simulator.stepfeatures`): the
    compiled ``cpu`` backend scores each sequence's own causal pairs, the ``torch`` reference
    pads decodes to the longest and masks chunks after cached KV. (A model whose prompt rows
    the prefill kernel refuses, with a sliding window, softcap or sinks, still decodes exactly
    but prompts by the reference; its fit absorbs the difference, its held-out error shows it.)"""
    return "exact" if engine.runner.backend.name == "cpu" else "padded"


def split_held_out(records: Sequence[T], every: int = HOLD_OUT_EVERY) -> tuple[list[T], list[T]]:
    """(fitted, held out): every ``every``-th record is held out."""
    fitted = [r for i, r in enumerate(records) if i % every != every - 1]
    held = [r for i, r in enumerate(records) if i % every == every - 1]
    return fitted, held


def profile_cost_model(
    engine: LLMEngine,
    grid: ProfileGrid = DEFAULT_GRID,
    *,
    seed: int = 0,
    relative: bool = True,
    curve: bool = True,
    say: Say | None = None,
) -> ProfileResult:
    """Profile ``engine`` and fit a cost model on 4 of every 5 steps (see the module doc)."""
    records, skipped = collect_steps(engine, grid, seed=seed, say=say)
    return fit_profile(engine, records, skipped, relative=relative, curve=curve)


def fit_profile(
    engine: LLMEngine,
    records: Sequence[StepRecord],
    skipped: Sequence[str] = (),
    *,
    relative: bool = True,
    curve: bool = True,
) -> ProfileResult:
    """Fit a cost model on 4 of every 5 of ``engine``'s profile ``records`` (the 5th held
    out), with the engine's pair counting, model, dtype and threads in its info."""
    import torch

    fitted, held = split_held_out(records)
    counting = pair_counting(engine)
    model, fit_err = fit_cost_model(fitted, relative=relative, curve=curve, counting=counting)
    held_err = error_stats(model, held) if held else None
    dtype = str(next(engine.loaded.model.parameters()).dtype).removeprefix("torch.")
    info = CostModelInfo(
        model=engine.loaded.name,
        dtype=dtype,
        threads=torch.get_num_threads(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        fit_error=fit_err,
        held_out_error=held_err,
    )
    return ProfileResult(replace(model, info=info), fit_err, held_err, fitted, held, list(skipped))
