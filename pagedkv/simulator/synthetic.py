"""Seeded synthetic workloads, so prefix reuse and capacity can be studied without any file.

Lengths follow log-normal distributions fitted to the two datasets the vLLM paper used:
ShareGPT (mean 161 input / 338 output tokens, long-tailed) and Alpaca (19 / 58, short).
Conversations arrive as a Poisson process; each has a geometric number of turns whose prompt is
the previous prompt plus the previous answer plus a new user message, so later turns share a
growing prefix with earlier ones. An optional shared system prompt prefixes every request.

Content identity is emitted as hash ids at ``granularity`` tokens (like Mooncake's 512) so the
same block-splitting code replays synthetic and real traces. An atom's id encodes which token
range of which content stream it covers (system prompt, or conversation ``c``) and its length,
so two atoms get equal ids exactly when their tokens are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.trace import Request, Trace


@dataclass(frozen=True)
class LengthDist:
    """Log-normal token-length distribution with the given mean and log-space spread."""

    mean: float
    sigma: float

    def sample(self, rng: np.random.Generator, n: int, max_len: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2  # E[lognormal] = exp(mu + sigma^2/2)
        x = rng.lognormal(mu, self.sigma, n)
        return np.clip(np.rint(x), 1, max_len).astype(np.int64)


#: name -> (input lengths, output lengths)
DATASETS: dict[str, tuple[LengthDist, LengthDist]] = {
    "sharegpt": (LengthDist(161.0, 1.0), LengthDist(338.0, 0.9)),
    "alpaca": (LengthDist(19.0, 0.5), LengthDist(58.0, 0.8)),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic workload (all documented in ``pagedkv simulate --help``)."""

    dataset: str = "sharegpt"
    num_requests: int = 2000
    rate: float = 10.0  # requests per second (Poisson)
    mean_turns: float = 1.0  # >= 1; 1 = single-turn
    think_time_s: float = 5.0  # mean gap between a conversation's turns
    system_prompt_tokens: int = 0
    max_len: int = 4096  # cap on prompt + output tokens of one request
    granularity: int = 16  # tokens per hash id
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (
                self.dataset in DATASETS,
                f"unknown dataset {self.dataset!r}; known: {sorted(DATASETS)}",
            ),
            (self.num_requests > 0, f"num_requests must be > 0, got {self.num_requests}"),
            (self.rate > 0, f"rate must be > 0 requests/s, got {self.rate}"),
            (self.mean_turns >= 1.0, f"mean_turns must be >= 1, got {self.mean_turns}"),
            (self.think_time_s >= 0, f"think_time_s must be >= 0, got {self.think_time_s}"),
            (
                self.system_prompt_tokens >= 0,
                f"system_prompt_tokens must be >= 0, got {self.system_prompt_tokens}",
            ),
            (
                self.max_len > self.system_prompt_tokens + 1,
                f"max_len {self.max_len} must exceed system prompt {self.system_prompt_tokens} + 1",
            ),
            (
                0 < self.granularity < 4096,
                f"granularity must be in [1, 4095], got {self.granularity}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidArgumentError(msg)


def _atom_ids(length: int, sys_len: int, conv: int, g: int) -> tuple[int, ...]:
    """Hash ids of a prompt of ``length`` tokens = system prompt + conversation ``conv``."""
    ids = []
    for j in range(-(-length // g)):
        lo, hi = j * g, min((j + 1) * g, length)
        if hi <= sys_len:  # entirely system prompt: shared by every request
            ids.append(((hi - lo) << 28) | j)
        else:  # conversation content (the prefix of one growing token stream)
            ids.append((((conv + 1) << 28 | j) << 12) | (hi - lo))
    return tuple(ids)


def generate(spec: SyntheticSpec) -> Trace:
    """Generate ``spec.num_requests`` requests in arrival order (seeded, reproducible)."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    in_dist, out_dist = DATASETS[spec.dataset]
    conv_rate = spec.rate / spec.mean_turns
    budget = spec.max_len - spec.system_prompt_tokens
    events: list[tuple[float, int, int, int]] = []  # (arrival ms, conv, input, output)
    t = 0.0
    conv = 0
    p_stop = 1.0 / spec.mean_turns
    cutoff = math.inf  # keep starting conversations until none can land before the n-th arrival
    while len(events) < spec.num_requests or t <= cutoff:
        if len(events) >= spec.num_requests and cutoff == math.inf:
            cutoff = sorted(e[0] for e in events)[spec.num_requests - 1]
            continue
        t += rng.exponential(1000.0 / conv_rate)
        turns = int(rng.geometric(p_stop))
        users = in_dist.sample(rng, turns, budget)
        answers = out_dist.sample(rng, turns, budget)
        history = 0
        arrival = t
        for k in range(turns):
            prompt = history + int(users[k])
            if prompt + 1 > budget:
                break
            out = int(min(answers[k], budget - prompt))
            events.append((arrival, conv, spec.system_prompt_tokens + prompt, out))
            history = prompt + out
            arrival += rng.exponential(spec.think_time_s * 1000.0) if spec.think_time_s else 0.0
        conv += 1
    events.sort(key=lambda e: (e[0], e[1]))
    events = events[: spec.num_requests]
    g = spec.granularity
    reqs = [
        Request(a, n_in, n_out, _atom_ids(n_in, spec.system_prompt_tokens, c, g))
        for a, c, n_in, n_out in events
    ]
    name = f"synthetic-{spec.dataset}"
    return Trace(reqs, g, name=name, meta={"spec": spec.__dict__.copy()})
