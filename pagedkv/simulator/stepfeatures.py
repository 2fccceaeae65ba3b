"""What one engine step's cost depends on, counted from its ``(start, num_tokens)`` shapes.

One module for the fit (:mod:`pagedkv.simulator.costfit`) and the prediction
(:class:`~pagedkv.simulator.costmodel.LinearCostModel`), so both count the same way. A
sequence with one token is a decode, one with more is (a chunk of) a prompt.

Attention is counted as the query-key pairs the engine's kernels score, and which pairs they
score depends on the attention backend, so a cost model records its *pair counting*:

``padded`` (the ``torch`` reference backend, and cost models written before the counting
existed):

- a fresh prompt of ``n`` tokens (``start == 0``) runs dense causal attention on its own keys:
  ``n*(n+1)/2`` *prompt* pairs;
- a chunk of ``n`` tokens after ``start`` cached ones is gathered from the pool and masked:
  the whole ``n * (start + n)`` rectangle, *paged* pairs;
- decodes are padded to the step's longest decode context ``L``: ``L`` paged pairs each
  (measured on CPU with that backend: 12 decodes at contexts 16 and 500 cost nearly as much
  as 12 at 500);
- a step is ``mixed`` when a fresh prompt runs beside any other sequence (both paths run).

``exact`` (the compiled ``cpu`` backend, what ``auto`` picks on a CPU):

- every prompt row, fresh or after cached KV, goes through the prefill kernel, which scores
  only the causal pairs over the sequence's pool rows: ``n*start + n*(n+1)/2`` prompt pairs;
- each decode scores its own context, ``start + 1`` paged pairs (the decode kernel walks each
  sequence's own blocks; a decode reads ~46 KB of KV per context token for SmolLM2 in fp32,
  so 16 decodes at 250 tokens read a third as many bytes as the weights);
- a step is ``mixed`` when prompt rows and decodes run in it (two kernels a layer).

Either way a chunk after ``start`` cached tokens first copies its sequence's cached K/V out of
the pool once a layer (the prefill kernel's stage; the reference's gather), a cost that grows
with ``start`` however few its rows: ``cached_tokens`` sums ``start`` over a step's prompt
chunks. Measured on SmolLM2, 2 threads: a 16-token chunk after 1,024 cached took 46-54 ms
against 29-32 fresh, where its pairs accounted for 9.

Imports neither numpy nor torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pagedkv.errors import InvalidArgumentError

#: the ways of counting attention pairs (see the module doc), the first the default
PAIR_COUNTINGS = ("padded", "exact")


@dataclass(frozen=True)
class StepFeatures:
    """What a step's cost depends on. Attention is counted per kernel, because their costs
    differ tenfold on CPU: ``attention_pairs``, the query-key pairs of prompt rows;
    ``paged_pairs``, those of the paged path (which rows take it: the module doc);
    ``cached_tokens``, the cached context the step's prompt chunks copy out of the pool."""

    prefill_tokens: int
    decode_seqs: int
    attention_pairs: int
    paged_pairs: int = 0
    mixed: int = 0  # 1: both attention paths ran in the step
    cached_tokens: int = 0

    @property
    def attention_kpairs(self) -> float:
        return self.attention_pairs / 1000.0

    @property
    def paged_kpairs(self) -> float:
        return self.paged_pairs / 1000.0

    @property
    def cached_ktokens(self) -> float:
        return self.cached_tokens / 1000.0

    def row(self) -> tuple[float, float, float, float, float, float, float]:
        """The regressors in :data:`~pagedkv.simulator.costmodel.TERMS` order (the constant
        first)."""
        return (
            1.0,
            float(self.prefill_tokens),
            float(self.decode_seqs),
            self.attention_kpairs,
            self.paged_kpairs,
            float(self.mixed),
            self.cached_ktokens,
        )


def check_counting(counting: str) -> str:
    if counting not in PAIR_COUNTINGS:
        raise InvalidArgumentError(
            f"attention pair counting must be one of {', '.join(PAIR_COUNTINGS)}, got {counting!r}"
        )
    return counting


def step_features(shapes: Iterable[tuple[int, int]], counting: str = "padded") -> StepFeatures:
    """Features of one step from its ``(start, num_tokens)`` per scheduled sequence, pairs
    counted as ``counting`` (``"padded"`` or ``"exact"``, the module doc)."""
    check_counting(counting)
    prefill = decode = prompt_pairs = paged = longest = fresh = others = cached = 0
    for start, num in shapes:
        if start < 0 or num < 1:
            raise InvalidArgumentError(
                f"step shape (start={start}, num_tokens={num}): expected start >= 0 and "
                f"num_tokens >= 1"
            )
        if num == 1:
            decode += 1
            longest = max(longest, start + 1)
            paged += start + 1 if counting == "exact" else 0
            others += 1
            continue
        prefill += num  # a prompt chunk, either counting
        cached += start
        if counting == "exact":
            prompt_pairs += num * start + num * (num + 1) // 2
        elif start == 0:
            fresh += 1
            prompt_pairs += num * (num + 1) // 2
        else:
            others += 1
            paged += num * (start + num)
    if counting == "exact":
        mixed = int(prefill > 0 and decode > 0)
        return StepFeatures(prefill, decode, prompt_pairs, paged, mixed, cached)
    mixed = int(fresh > 0 and others > 0)
    return StepFeatures(prefill, decode, prompt_pairs, paged + decode * longest, mixed, cached)


def curve_weights(knots: tuple[int, ...], tokens: int) -> list[float]:
    """Weights of the knot values whose sum is the piecewise-linear curve at ``tokens``:
    constant below the first knot, linear between two, the last segment's line past the end.
    One function for the fit (the design matrix) and the prediction."""
    n = len(knots)
    w = [0.0] * n
    if n == 0:
        return w
    if tokens <= knots[0]:
        w[0] = 1.0
        return w
    i = next((j for j in range(1, n) if tokens <= knots[j]), n - 1)
    t = (tokens - knots[i - 1]) / (knots[i] - knots[i - 1])
    w[i - 1], w[i] = 1.0 - t, t
    return w
