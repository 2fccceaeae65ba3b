"""``SamplingParams``: how one request's tokens are chosen and when it stops (vLLM's names).

Validated once, at construction: a request that reaches the engine has sane values, so the hot
path (the sampler) never re-checks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pagedkv.errors import InvalidArgumentError

# Below this temperature sampling is greedy: the limit of sampling as the temperature falls,
# and dividing float32 logits by less could overflow to inf (1e-40 did). vLLM's rule too.
GREEDY_TEMPERATURE = 1e-5
# The smallest repetition penalty: dividing logits by less could overflow float32.
MIN_REPETITION_PENALTY = 0.01


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name}: expected an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidArgumentError(f"{name}: expected {bound}, got {value}")
    return value


def _check_float(
    name: str, value: object, low: float, high: float, *, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if math.isnan(v) or v < low or v > high or (low_open and v == low):
        bracket = "(" if low_open else "["
        raise InvalidArgumentError(f"{name}: expected a value in {bracket}{low}, {high}], got {v}")
    return v


@dataclass
class SamplingParams:
    """Per-request sampling and stopping.

    ``temperature`` below ``GREEDY_TEMPERATURE`` (1e-5; 0 included) is greedy; the most likely
    token always survives ``top_p``. ``seed`` makes sampling reproducible whatever else is in the
    batch and across preemption: each output position draws from its own generator seeded by
    ``(seed, sample index, position)``. ``stop`` strings end the output before the string (it
    may span tokens); ``stop_token_ids`` and the model's EOS end it after the token (EOS is not
    shown in the text). ``logprobs=k`` returns the sampled token's log-probability and the top
    ``k`` of the model's raw distribution per position."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)  # a single str is accepted too
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        _check_int("n", self.n, 1, 64)
        self.temperature = _check_float("temperature", self.temperature, 0.0, 100.0)
        self.top_p = _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        if isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k == -1:
            self.top_k = 0  # vLLM spells "no top-k" as -1
        _check_int("top_k", self.top_k, 0)
        self.min_p = _check_float("min_p", self.min_p, 0.0, 1.0)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("min_tokens", self.min_tokens, 0, self.max_tokens)
        given: object = self.stop
        stops = [given] if isinstance(given, str) else given
        if not isinstance(stops, list | tuple) or not all(isinstance(s, str) and s for s in stops):
            raise InvalidArgumentError(f"stop: expected non-empty strings, got {self.stop!r}")
        self.stop = list(stops)
        if not isinstance(self.stop_token_ids, list | tuple):
            raise InvalidArgumentError(
                f"stop_token_ids: expected a list of ints, got {self.stop_token_ids!r}"
            )
        for t in self.stop_token_ids:
            _check_int("stop_token_ids[i]", t, 0, 2**31 - 1)
        self.stop_token_ids = list(self.stop_token_ids)
        self.repetition_penalty = _check_float(
            "repetition_penalty", self.repetition_penalty, MIN_REPETITION_PENALTY, 10.0
        )
        self.presence_penalty = _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0)
        self.frequency_penalty = _check_float(
            "frequency_penalty", self.frequency_penalty, -2.0, 2.0
        )
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, 20)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )
