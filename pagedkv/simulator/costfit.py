"""Fitting a :class:`~pagedkv.simulator.costmodel.LinearCostModel` to measured engine steps.

Least squares of each step's milliseconds with every coefficient >= 0 (a negative term would
make some batch cheaper than a smaller one, and the simulator would then prefer shapes no
engine rewards). Two forms:

* linear (``curve=False``): the :func:`step_features` regressors ``[1, prefill_tokens,
  decode_seqs, attention_kpairs, paged_kpairs, mixed, cached_ktokens]``, solved exactly by
  :func:`nnls` (the
  unconstrained problem on every subset of terms, the best all-positive one kept);
* curve (``curve=True``, what ``pagedkv profile`` fits): a piecewise-linear curve over the
  step's token count in place of the constant and the prefill term (on a CPU a 2-sequence
  decode costs far less than two 1-sequence ones), with the decode, both attention, the
  mixed-step and the cached-prefix terms, solved by Lawson and Hanson's active set
  (:func:`nnls_active_set`). The curve has a knot at every token count up to
  :data:`FREE_KNOTS` and may fall there (a CPU's GEMM kernels make a 3-row step slower than a
  4-row one: measured 137 vs 110 ms for SmolLM2 decodes); above, it never falls.

numpy only: no torch, no scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.costmodel import TERMS, ErrorStats, LinearCostModel
from pagedkv.simulator.stepfeatures import check_counting, curve_weights, step_features

MAX_NNLS_TERMS = 12  # 2**12 subsets: the exhaustive search stays instant below this
FREE_KNOTS = 16  # token counts with a knot each, the curve free to fall between them


class StepLike(Protocol):
    """What a fit reads from a step (``pagedkv.engine.scheduler_output.StepRecord``)."""

    @property
    def shapes(self) -> Sequence[tuple[int, int]]: ...

    @property
    def seconds(self) -> float: ...


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``argmin ||a @ x - b||`` subject to ``x >= 0``. ``a``: float ``[m, n]`` (n <= 12),
    ``b``: float ``[m]``; returns float64 ``[n]``.

    Subsets are tried smallest first and a larger one replaces the best only if it lowers the
    residual, so a term the data do not need stays exactly 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise InvalidArgumentError(f"nnls: expected a [m, n] and b [m], got {a.shape}, {b.shape}")
    n = a.shape[1]
    if n > MAX_NNLS_TERMS:
        raise InvalidArgumentError(f"nnls: at most {MAX_NNLS_TERMS} terms, got {n}")
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0  # an all-zero column: its coefficient stays 0
    scaled = a / scale  # unit columns: lstsq's conditioning no longer depends on units
    best = np.zeros(n)
    best_sq = float(b @ b)
    tie = 1e-12 * max(best_sq, 1e-300)
    for mask in sorted(range(1, 1 << n), key=lambda m: (m.bit_count(), m)):
        cols = [j for j in range(n) if mask >> j & 1]
        sol = np.linalg.lstsq(scaled[:, cols], b, rcond=None)[0]
        if not (sol > 0).all():
            continue
        x = np.zeros(n)
        x[cols] = sol
        r = scaled @ x - b
        sq = float(r @ r)
        if sq < best_sq - tie:
            best, best_sq = x, sq
    out: np.ndarray = best / scale
    return out


def nnls_active_set(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lawson and Hanson's active-set NNLS for more terms than :func:`nnls` tries exhaustively.
    ``a``: float ``[m, n]``, ``b``: float ``[m]``; returns float64 ``[n]`` (>= 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    n = a.shape[1]
    active = np.zeros(n, dtype=bool)  # the terms allowed to be positive
    x = np.zeros(n)
    tol = 1e-10 * max(1.0, float(np.abs(a).max())) * max(a.shape)
    for _ in range(3 * n + 10):
        grad = a.T @ (b - a @ x)
        if active.all() or not (grad[~active] > tol).any():
            break
        active[int(np.argmax(np.where(active, -np.inf, grad)))] = True
        while True:
            z = np.zeros(n)
            z[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
            if (z[active] > tol).all():
                x = z
                break
            # step from x toward z until the first active term reaches 0, then drop it
            neg = active & (z <= tol)
            alpha = float(np.min(x[neg] / np.maximum(x[neg] - z[neg], 1e-300)))
            x = x + alpha * (z - x)
            active &= x > tol
            x[~active] = 0.0
    out: np.ndarray = x / scale
    return out


def curve_knots(records: Sequence[StepLike]) -> tuple[int, ...]:
    """Knots at every token count up to :data:`FREE_KNOTS`, then at powers of two and 1.5
    times them, up to the largest step's token count (itself a knot), keeping only those with a
    measured step since the previous knot: a segment without data would let the fit put its
    whole rise anywhere inside it."""
    sizes = sorted({sum(n for _, n in r.shapes) for r in records})
    top = sizes[-1]
    coarse = sorted({m << i for i in range(top.bit_length()) for m in (2, 3)})
    grid = list(range(1, FREE_KNOTS + 1)) + [k for k in coarse if k > FREE_KNOTS]
    grid = [k for k in grid if sizes[0] <= k < top] + [top]
    knots = [sizes[0]]
    for k in grid:
        if k > knots[-1] and any(knots[-1] < t <= k for t in sizes):
            knots.append(k)
    return tuple(knots) if len(knots) > 1 else (knots[0], knots[0] + 1)


def _falls(knots: tuple[int, ...]) -> list[int]:
    """Indices of the knots the curve may fall to (``2 <= knot <= FREE_KNOTS``)."""
    return [j for j in range(1, len(knots)) if knots[j] <= FREE_KNOTS]


def _curve_design(records: Sequence[StepLike], knots: tuple[int, ...], counting: str) -> np.ndarray:
    """Regressors float64 ``[m, len(knots) + len(_falls(knots)) + 5]``: the curve's rises at
    each step's token count, its falls, then decode sequences, attention and paged kpairs, the
    mixed flag and the cached ktokens.

    The curve is fitted as non-negative increments ``d`` (knot values ``cumsum(d)``), so above
    :data:`FREE_KNOTS` it never falls as the batch grows: a knot with few steps near it cannot
    swing to a value the neighbouring ones contradict (a relative fit otherwise put 11 s at
    1024 tokens, 4 s at 2048). Up to it, each knot has a non-negative fall too (the negated
    column). Column ``j`` of the increments is the sum of the knot weights from ``j`` on."""
    falls = _falls(knots)
    rows = []
    for r in records:
        f = step_features(r.shapes, counting)
        w = np.array(curve_weights(knots, f.prefill_tokens + f.decode_seqs))
        rise = np.cumsum(w[::-1])[::-1]
        rows.append(
            [
                *rise,
                *(-rise[falls]),
                f.decode_seqs,
                f.attention_kpairs,
                f.paged_kpairs,
                f.mixed,
                f.cached_ktokens,
            ]
        )
    return np.array(rows, dtype=np.float64)


def _design(records: Sequence[StepLike], counting: str = "padded") -> tuple[np.ndarray, np.ndarray]:
    """Regressors float64 ``[m, 7]`` (:data:`TERMS`) and measured milliseconds float64
    ``[m]``."""
    rows = [step_features(r.shapes, counting).row() for r in records]
    ms = np.array([float(r.seconds) * 1000.0 for r in records], dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(ms) & (ms > 0)))
    if bad.size:
        i = int(bad[0])
        raise InvalidArgumentError(
            f"step record {i}: expected a duration > 0 s, got {records[i].seconds!r}"
        )
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(TERMS)), ms


def relative_errors(model: LinearCostModel, records: Sequence[StepLike]) -> np.ndarray:
    """``|predicted - measured| / measured`` per record, float64 ``[m]``."""
    _, ms = _design(records)
    pred = np.array([model.step_ms_for(r.shapes) for r in records], dtype=np.float64)
    rel: np.ndarray = np.abs(pred - ms) / ms
    return rel


def error_stats(model: LinearCostModel, records: Sequence[StepLike]) -> ErrorStats:
    """How well ``model`` predicts ``records`` (e.g. steps held out of its fit)."""
    if not records:
        raise InvalidArgumentError("error_stats: expected at least one step record, got 0")
    rel = relative_errors(model, records)
    return ErrorStats(
        len(rel), float(rel.mean()), float(np.median(rel)), float(np.quantile(rel, 0.9))
    )


def fit_cost_model(
    records: Sequence[StepLike],
    *,
    relative: bool = False,
    curve: bool = False,
    counting: str = "padded",
) -> tuple[LinearCostModel, ErrorStats]:
    """Fit the terms to measured steps; returns the model and its error on ``records``.

    ``relative``: minimise squared *relative* errors instead of squared milliseconds, so a
    30 ms decode step weighs as much as a 3 s prefill (plain least squares fits the long steps
    and lets the short ones be off by a large fraction). ``curve``: fit a token curve
    (:func:`curve_knots`) with decode and attention terms in place of the base and prefill
    terms (what a CPU needs: small batches cost far less than linearly). ``counting``: how
    attention pairs are counted (:mod:`pagedkv.simulator.stepfeatures`), kept in the model."""
    check_counting(counting)
    records = list(records)
    if len(records) < len(TERMS):
        raise InvalidArgumentError(
            f"fit_cost_model: {len(TERMS)} terms need at least {len(TERMS)} step records, "
            f"got {len(records)}"
        )
    x, ms = _design(records, counting)
    w = 1.0 / ms if relative else np.ones_like(ms)
    if curve:
        knots = curve_knots(records)
        c = nnls_active_set(_curve_design(records, knots, counting) * w[:, None], ms * w)
        k, falls = len(knots), _falls(knots)
        steps = c[:k].copy()
        steps[falls] -= c[k : k + len(falls)]
        # a curve below 0 somewhere would be a fit gone wrong: no step costs nothing
        values = tuple(max(0.0, float(v)) for v in np.cumsum(steps))
        decode, attention, paged, mixed, cached = (float(v) for v in c[k + len(falls) :])
        model = LinearCostModel(
            0.0,
            0.0,
            decode,
            attention,
            paged,
            mixed,
            cached,
            token_knots=knots,
            token_ms=values,
            attention_counting=counting,
        )
        return model, error_stats(model, records)
    coef = nnls(x * w[:, None], ms * w)
    if not coef.any():  # every step took ~0 ms: nothing to charge
        raise InvalidArgumentError("fit_cost_model: the fit charges nothing (all terms 0)")
    base, prefill, decode, attention, paged, mixed, cached = (float(c) for c in coef)
    model = LinearCostModel(
        base, prefill, decode, attention, paged, mixed, cached, attention_counting=counting
    )
    return model, error_stats(model, records)
