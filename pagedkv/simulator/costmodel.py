"""How long one engine step takes, so a serving replay can turn scheduling into latencies.

The simulator has no GPU; it charges each continuous-batching step a time from a model. The
default is linear because that is what engine steps look like to first order: a fixed launch /
sampling overhead, a prefill term proportional to the prompt tokens computed in the step
(compute-bound), and a decode term proportional to the sequences decoding one token each
(memory-bound: every sequence's weights-and-KV read)::

    step_ms = base_ms + prefill_ms_per_token * prefill_tokens + decode_ms_per_seq * decode_seqs

The defaults (5 ms, 0.1 ms/token ≈ 10k prefill tokens/s, 0.2 ms/sequence) are in the range of a
7B model on one A100-class GPU. Calibrate them against your own engine's step timings; absolute
latencies scale with them, while memory results (utilisation, preemptions, paging vs.
contiguous) depend only on the scheduling order they induce.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagedkv.errors import InvalidArgumentError


@dataclass(frozen=True)
class LinearCostModel:
    base_ms: float = 5.0
    prefill_ms_per_token: float = 0.1
    decode_ms_per_seq: float = 0.2

    def __post_init__(self) -> None:
        for name in ("base_ms", "prefill_ms_per_token", "decode_ms_per_seq"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise InvalidArgumentError(f"cost model {name} must be >= 0, got {value}")
        if self.base_ms == 0 and self.prefill_ms_per_token == 0 and self.decode_ms_per_seq == 0:
            raise InvalidArgumentError("cost model must charge something per step (all terms 0)")

    def step_ms(self, prefill_tokens: int, decode_seqs: int) -> float:
        return (
            self.base_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_ms_per_seq * decode_seqs
        )

    @classmethod
    def parse(cls, text: str) -> LinearCostModel:
        """Parse ``"BASE,PER_PREFILL_TOKEN,PER_DECODE_SEQ"`` (milliseconds)."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise InvalidArgumentError(
                f"cost model needs 3 comma-separated numbers (base_ms, prefill_ms_per_token, "
                f"decode_ms_per_seq), got {len(parts)} in {text!r}"
            )
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise InvalidArgumentError(f"cost model {text!r}: {exc}") from exc
        return cls(*values)

    def describe(self) -> str:
        return (
            f"step_ms = {self.base_ms:g} + {self.prefill_ms_per_token:g}*prefill_tokens"
            f" + {self.decode_ms_per_seq:g}*decode_seqs"
        )
