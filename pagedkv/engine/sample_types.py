"""What the sampler reads about a row and what it returns, without torch (the engine core and
the simulated executor use them; :mod:`pagedkv.engine.sampler` does the sampling)."""

from __future__ import annotations

from dataclasses import dataclass

from pagedkv.engine.outputs import TokenLogprobs
from pagedkv.engine.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, index: int, position: int) -> int:
    """A 63-bit generator seed from three ints (splitmix64 finaliser: nearby inputs give
    unrelated seeds)."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + position + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


@dataclass
class SampleRow:
    """What the sampler needs to know about one row of logits."""

    params: SamplingParams
    seed: int
    index: int  # sample index within the request
    prompt_ids: list[int]
    output_ids: list[int]
    suppress_ids: list[int]  # EOS / stop tokens banned until min_tokens is reached


@dataclass
class Sampled:
    token: int
    logprob: float | None = None
    top_logprobs: TokenLogprobs | None = None
