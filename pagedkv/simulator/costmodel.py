"""How long one engine step takes, so a serving replay can turn scheduling into latencies.

The simulator has no GPU; it charges each continuous-batching step a time from a model: a fixed
launch / sampling overhead, a prefill term proportional to the prompt tokens computed in the
step, a decode term proportional to the sequences decoding one token each, two attention terms
proportional to the query-key pairs the step's kernels score (prompt rows; the paged path),
which grow with the context, and a fixed charge for a *mixed* step, one that runs both
attention paths in every layer, and a term proportional to the cached tokens that prompt
chunks copy out of the pool before they attend (a follow-up turn's chunk after a long cached
history). Which pairs each kernel scores depends on the attention backend: the model's
``attention_counting`` says how they are counted (:mod:`pagedkv.simulator.stepfeatures`;
``pagedkv profile`` sets it from the engine)::

    step_ms = base_ms + prefill_ms_per_token * prefill_tokens + decode_ms_per_seq * decode_seqs
              + attention_ms_per_kpair * attention_pairs / 1000
              + paged_attention_ms_per_kpair * paged_pairs / 1000
              + mixed_step_ms * mixed
              + cached_prefix_ms_per_ktoken * cached_tokens / 1000 + curve(tokens)

``curve`` (a non-decreasing piecewise-linear function of the step's token count, empty by
default) is what ``pagedkv profile`` fits in place of the base and prefill terms: the linear
layers' time is far from linear in the rows at small batches on a CPU. The defaults (5 ms,
0.1 ms/token, 0.2 ms/sequence, no attention term, no curve) are in the range of a 7B model on
one A100-class GPU; ``pagedkv profile`` measures a real engine and writes its model as JSON
(:meth:`LinearCostModel.save`). Absolute latencies scale with the terms, while memory results
(utilisation, preemptions, paging vs. contiguous) depend only on the scheduling order.

Imports neither numpy nor torch: the simulator uses it without the engine.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.stepfeatures import (
    PAIR_COUNTINGS,
    StepFeatures,
    check_counting,
    curve_weights,
    step_features,
)

SCHEMA = "pagedkv-costmodel"
SCHEMA_VERSION = 1
TERMS = (
    "base_ms",
    "prefill_ms_per_token",
    "decode_ms_per_seq",
    "attention_ms_per_kpair",
    "paged_attention_ms_per_kpair",
    "mixed_step_ms",
    "cached_prefix_ms_per_ktoken",
)
#: terms a JSON file may omit (0): files written before the term existed
OPTIONAL_TERMS = ("mixed_step_ms", "cached_prefix_ms_per_ktoken")
TERMS_STATS = ("mean", "median", "p90")


@dataclass(frozen=True)
class ErrorStats:
    """Absolute relative error ``|predicted - measured| / measured`` over ``records`` steps
    (fractions: 0.1 = 10 %)."""

    records: int
    mean: float
    median: float
    p90: float


@dataclass(frozen=True)
class CostModelInfo:
    """Where a fitted model came from: its coefficients hold for this model, dtype and thread
    count only (``date``: ISO 8601, UTC)."""

    model: str
    dtype: str
    threads: int
    date: str
    fit_error: ErrorStats | None = None
    held_out_error: ErrorStats | None = None


@dataclass(frozen=True)
class LinearCostModel:
    base_ms: float = 5.0
    prefill_ms_per_token: float = 0.1
    decode_ms_per_seq: float = 0.2
    attention_ms_per_kpair: float = 0.0
    paged_attention_ms_per_kpair: float = 0.0
    mixed_step_ms: float = 0.0
    cached_prefix_ms_per_ktoken: float = 0.0
    # The batch-size curve: ``token_ms[i]`` ms for a step of ``token_knots[i]`` tokens,
    # linear in between and past the last knot (GEMM time is not linear in the rows at small
    # batches: a CPU decode of 2 sequences costs far less than twice one). Empty: no curve.
    token_knots: tuple[int, ...] = ()
    token_ms: tuple[float, ...] = ()
    # how a step's attention pairs are counted: "padded" (the torch backend; files written
    # before the field) or "exact" (the compiled CPU kernels), see stepfeatures
    attention_counting: str = PAIR_COUNTINGS[0]
    info: CostModelInfo | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_counting(self.attention_counting)
        for name in TERMS:
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise InvalidArgumentError(f"cost model {name} must be >= 0, got {value}")
        knots, values = self.token_knots, self.token_ms
        if len(knots) != len(values) or len(knots) == 1:
            raise InvalidArgumentError(
                f"cost model token curve: expected as many values as knots (none, or at least "
                f"2), got {len(knots)} knots and {len(values)} values"
            )
        if any(b <= a for a, b in itertools.pairwise(knots)) or (knots and knots[0] < 1):
            raise InvalidArgumentError(
                f"cost model token curve: knots must increase from >= 1, got {list(knots)}"
            )
        if not all(v >= 0.0 and math.isfinite(v) for v in values):
            raise InvalidArgumentError(f"cost model token curve: values must be >= 0, got {values}")
        if not any(getattr(self, name) for name in TERMS) and not any(values):
            raise InvalidArgumentError("cost model must charge something per step (all terms 0)")

    def step_ms(self, prefill_tokens: int, decode_seqs: int) -> float:
        """A step's time from its token counts alone (no attention term: the counts do not
        say how long the contexts are; :meth:`step_ms_for` does)."""
        return (
            self.base_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_ms_per_seq * decode_seqs
            + self.curve_ms(prefill_tokens + decode_seqs)
        )

    def curve_ms(self, tokens: int) -> float:
        """The token curve at ``tokens`` (0 without a curve)."""
        return sum(
            w * v
            for w, v in zip(curve_weights(self.token_knots, tokens), self.token_ms, strict=True)
        )

    def features_ms(self, f: StepFeatures) -> float:
        return (
            self.step_ms(f.prefill_tokens, f.decode_seqs)
            + self.attention_ms_per_kpair * f.attention_kpairs
            + self.paged_attention_ms_per_kpair * f.paged_kpairs
            + self.mixed_step_ms * f.mixed
            + self.cached_prefix_ms_per_ktoken * f.cached_ktokens
        )

    def step_ms_for(self, shapes: Iterable[tuple[int, int]]) -> float:
        """A step's time from its ``(start, num_tokens)`` per scheduled sequence (a
        ``SchedulerOutput.shapes`` or ``StepRecord.shapes``), every term charged."""
        return self.features_ms(step_features(shapes, self.attention_counting))

    @classmethod
    def parse(cls, text: str) -> LinearCostModel:
        """``"BASE,PER_PREFILL_TOKEN,PER_DECODE_SEQ"`` (milliseconds), or the path of a
        ``.json`` file written by ``pagedkv profile`` (:meth:`save`)."""
        if text.strip().lower().endswith(".json"):
            return cls.load(text.strip())
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise InvalidArgumentError(
                f"cost model needs 3 comma-separated numbers (base_ms, prefill_ms_per_token, "
                f"decode_ms_per_seq) or a .json file from `pagedkv profile`, got {len(parts)} "
                f"in {text!r}"
            )
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise InvalidArgumentError(f"cost model {text!r}: {exc}") from exc
        return cls(values[0], values[1], values[2])

    def describe(self) -> str:
        text = (
            f"step_ms = {self.base_ms:g} + {self.prefill_ms_per_token:g}*prefill_tokens"
            f" + {self.decode_ms_per_seq:g}*decode_seqs"
        )
        if self.attention_ms_per_kpair:
            text += f" + {self.attention_ms_per_kpair:g}*attention_kpairs"
        if self.paged_attention_ms_per_kpair:
            text += f" + {self.paged_attention_ms_per_kpair:g}*paged_kpairs"
        if self.mixed_step_ms:
            text += f" + {self.mixed_step_ms:g}*mixed"
        if self.cached_prefix_ms_per_ktoken:
            text += f" + {self.cached_prefix_ms_per_ktoken:g}*cached_ktokens"
        if self.token_knots:
            pts = ", ".join(
                f"{k}:{v:.3g}" for k, v in zip(self.token_knots, self.token_ms, strict=True)
            )
            text += f" + curve(tokens) [{pts}]"
        if self.attention_counting != PAIR_COUNTINGS[0]:
            text += f"; pairs counted {self.attention_counting}"
        return text

    # ------------------------------------------------------------------------------ JSON
    # The file format lives in :mod:`pagedkv.simulator.costmodel_json` (imported when called:
    # it imports this module).
    def to_json(self) -> dict[str, Any]:
        from pagedkv.simulator.costmodel_json import model_to_json

        return model_to_json(self)

    @classmethod
    def from_json(cls, data: object, source: str = "cost model") -> LinearCostModel:
        """The model :meth:`to_json` wrote; anything else raises ``InvalidArgumentError``
        naming ``source`` and the field (an unknown key too: a misspelt term would otherwise
        be a silent 0)."""
        from pagedkv.simulator.costmodel_json import model_from_json

        return model_from_json(data, source)

    def save(self, path: str | Path) -> None:
        from pagedkv.simulator.costmodel_json import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path: str | Path) -> LinearCostModel:
        from pagedkv.simulator.costmodel_json import load_model

        return load_model(path)
