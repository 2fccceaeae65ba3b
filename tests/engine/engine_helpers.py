"""Shared helpers for the engine tests (imported by the test modules; conftest.py applies
the core shim and holds the fixtures): one tiny random Llama per worker, cached greedy
references from ``model.generate``, and a driver that steps an engine with integrity checks.

Everything runs on CPU in fp32 with one torch thread per xdist worker (the tiny model is far
faster single-threaded than with two workers fighting over two cores).
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Iterable
from typing import Any

import torch

from pagedkv.engine import LLMEngine, RequestOutput, SamplingParams
from pagedkv.models import LoadedModel, tiny_random_llama

MODEL_SEED = 0
BYTE_OFFSET = 3  # byte-level tokenizer: token id = byte + 3
REF_TOKENS = 24  # every greedy reference is computed this long once, then sliced


@functools.cache
def tiny_model() -> LoadedModel:
    return tiny_random_llama(MODEL_SEED)


@functools.cache
def _greedy(prompt: tuple[int, ...], n: int, repetition_penalty: float) -> tuple[int, ...]:
    model = tiny_model().model
    ids = torch.tensor([list(prompt)])
    extra = {} if repetition_penalty == 1.0 else {"repetition_penalty": repetition_penalty}
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        **extra,
    )
    return tuple(out[0, len(prompt) :].tolist())


def greedy_ref(prompt: Iterable[int], n: int, repetition_penalty: float = 1.0) -> list[int]:
    """``n`` greedy tokens of unpadded single-prompt ``model.generate`` (no EOS stopping)."""
    m = max(n, REF_TOKENS)
    return list(_greedy(tuple(prompt), m, repetition_penalty)[:n])


def encode(text: str) -> list[int]:
    return [int(t) for t in tiny_model().tokenizer.encode(text)]


def decode(ids: list[int]) -> str:
    return str(tiny_model().tokenizer.decode(ids, skip_special_tokens=True))


def random_prompts(lengths: Iterable[int], seed: int = 0) -> list[list[int]]:
    """Random byte-token prompts (ids of bytes, so they also decode to text)."""
    rng = random.Random(seed)
    return [[rng.randrange(BYTE_OFFSET, BYTE_OFFSET + 256) for _ in range(n)] for n in lengths]


def greedy(max_tokens: int, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def make_engine(model: LoadedModel | None = None, **options: Any) -> LLMEngine:
    return LLMEngine(model if model is not None else tiny_model(), **options)


def with_eos(model: LoadedModel, eos: list[int]) -> LoadedModel:
    return dataclasses.replace(model, eos_token_ids=list(eos))


@dataclasses.dataclass
class Run:
    final: dict[str, RequestOutput]
    history: dict[str, list[RequestOutput]]
    steps: int


def drive(
    engine: LLMEngine,
    submissions: Iterable[tuple[Any, ...]] = (),
    *,
    max_steps: int = 5000,
    on_step: Any = None,
) -> Run:
    """Submit requests and step the engine until nothing is left, checking integrity after
    every step. A submission is ``(rid, prompt, params)`` (submitted before the first step) or
    ``(at_step, rid, prompt, params)`` (submitted before step ``at_step``)."""
    pending: list[tuple[int, str, Any, SamplingParams]] = []
    for sub in submissions:
        pending.append(sub if len(sub) == 4 else (0, *sub))
    pending.sort(key=lambda s: s[0])
    final: dict[str, RequestOutput] = {}
    history: dict[str, list[RequestOutput]] = {}
    steps = 0
    submitted: set[str] = set()
    engine.check_integrity()
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] <= steps:
            _, rid, prompt, params = pending.pop(0)
            engine.add_request(rid, prompt, params)
            submitted.add(rid)
            engine.check_integrity()
        outs = engine.step()
        steps += 1
        engine.check_integrity()
        for o in outs:
            history.setdefault(o.request_id, []).append(o)
            if o.finished:
                assert o.request_id not in final, f"{o.request_id} finished twice"
                final[o.request_id] = o
        if on_step is not None:
            on_step(engine, steps)
        assert steps < max_steps, "engine did not drain"
    for rid in submitted:  # what a stream of these outputs shows adds up exactly
        for c in final[rid].outputs:
            deltas = [o.outputs[c.index] for o in history[rid]]
            assert "".join(d.delta_text for d in deltas) == c.text, rid
            assert [t for d in deltas for t in d.delta_token_ids] == c.token_ids, rid
    return Run(final, history, steps)
