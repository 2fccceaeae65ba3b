"""Turn one step's logits into tokens, row by row, each row under its own request's parameters.

Reproducibility: a non-greedy row draws one uniform from a fresh ``torch.Generator`` seeded by
``(request seed, sample index, output position)`` (:func:`draw_index`). The draw therefore does
not depend on which other requests share the batch, nor on whether the request was preempted
and recomputed in between.
Greedy rows take the argmax of the raw logits (after penalties), exactly what
``model.generate`` does.
"""

from __future__ import annotations

import math

import torch

from pagedkv.engine.outputs import TokenLogprobs
from pagedkv.engine.sample_types import Sampled, SampleRow, mix_seed
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.errors import PagedKVError

__all__ = ["SampleRow", "Sampled", "draw_index", "mix_seed", "sample"]


def apply_penalties(x: torch.Tensor, row: SampleRow) -> torch.Tensor:
    """Repetition (HF/vLLM: divide positive, multiply negative logits of every seen token),
    presence and frequency (OpenAI: subtract per output occurrence). ``x``: float ``[V]``."""
    p = row.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.output_ids)), dtype=torch.int64)
        if len(seen):
            vals = x[seen]
            x[seen] = torch.where(
                vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
            )
    if (p.presence_penalty or p.frequency_penalty) and row.output_ids:
        ids = torch.tensor(row.output_ids, dtype=torch.int64)
        counts = torch.bincount(ids, minlength=x.numel())[: x.numel()].to(x.dtype)
        x -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(x.dtype)
    return x


def filtered_probs(x: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p applied to float logits ``[V]``; returns probs
    ``[V]`` (float32) summing to one over the kept tokens."""
    x = x / p.temperature
    vocab = x.numel()
    if 0 < p.top_k < vocab:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass strictly above each token
        drop = before >= p.top_p
        drop[0] = False  # the most likely token always stays (a top_p below float32's
        # smallest value, e.g. 1e-300, compares as 0 and would drop every token)
        probs = probs.scatter(0, order[drop], 0.0)
    if p.min_p > 0.0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    return probs / probs.sum()


def draw_index(probs: torch.Tensor, seed: int) -> int:
    """One index drawn from ``probs`` (float ``[V]``, >= 0, not all 0; need not sum to one) by
    inverse transform: a uniform ``u`` in [0, 1) from a generator seeded with ``seed``, then the
    first index whose float64 cumulative sum exceeds ``u`` times the total. Index ``i`` comes up
    with probability ``probs[i] / total``; a 0-probability index never (its cumulative sum equals
    its predecessor's), and some index always does (``u * total < total`` in float64). A total
    that is not a positive finite number (logits that were not finite) raises
    :class:`~pagedkv.errors.PagedKVError` rather than return an index past the vocabulary.

    Why not ``torch.multinomial``: on a CPU it draws an exponential for every vocabulary entry,
    1.0 ms a row for SmolLM2's 49,152 (a 16-sequence decode step spent 16 ms sampling); this
    draws one number and sums once, 0.08 ms (``docs/performance.md``)."""
    gen = torch.Generator().manual_seed(seed)
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    cdf = torch.cumsum(probs, 0, dtype=torch.float64)
    total = float(cdf[-1])
    if not (0.0 < total < math.inf):
        raise PagedKVError(
            f"sampling: the distribution over {probs.numel()} tokens sums to {total} (expected a "
            "positive finite total: were the logits finite?)"
        )
    return int(torch.searchsorted(cdf, u * total, right=True))


def plain_greedy(row: SampleRow) -> bool:
    """Whether ``row``'s token is the plain argmax of its logits (greedy, no penalties, no
    suppressed ids, no logprobs): :func:`sample` would return exactly ``argmax``, so a step's
    such rows can share one batched ``argmax`` (ties: the first index, as here)."""
    p = row.params
    return p.greedy and not p.has_penalties and not row.suppress_ids and p.logprobs is None


def sample(logits: torch.Tensor, rows: list[SampleRow]) -> list[Sampled]:
    """Pick one token per row.

    Args:
        logits: float ``[B, V]`` next-token logits (any float dtype), ``B == len(rows)``.
        rows: per-row parameters and history.
    Returns:
        ``B`` sampled tokens, with log-probabilities of the raw distribution when asked.
    """
    logits = logits.float()
    raw_logprobs = None
    if any(r.params.logprobs is not None for r in rows):
        raw_logprobs = torch.log_softmax(logits, dim=-1)
    out: list[Sampled] = []
    for i, row in enumerate(rows):
        x = logits[i]
        p = row.params
        if p.has_penalties or row.suppress_ids:
            x = x.clone()
            if p.has_penalties:
                x = apply_penalties(x, row)
            if row.suppress_ids:
                x[torch.tensor(row.suppress_ids, dtype=torch.int64)] = float("-inf")
        if p.greedy:
            token = int(torch.argmax(x))
        else:
            seed = mix_seed(row.seed, row.index, len(row.output_ids))
            token = draw_index(filtered_probs(x, p), seed)
        s = Sampled(token)
        if raw_logprobs is not None and p.logprobs is not None:
            lp = raw_logprobs[i]
            s.logprob = float(lp[token])
            top: TokenLogprobs = {token: s.logprob}
            if p.logprobs:
                vals, ids = torch.topk(lp, p.logprobs)
                top.update(zip(ids.tolist(), vals.tolist(), strict=True))
            s.top_logprobs = top
        out.append(s)
    return out
