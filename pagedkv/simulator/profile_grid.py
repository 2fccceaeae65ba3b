"""The shapes ``pagedkv profile`` steps the engine through (:mod:`pagedkv.simulator.profile`
runs them): decode ladders, prompts joining them, prompts alone, the whole grid repeated.

Plain data, no engine: the runner shrinks or skips any point the engine's limits do not allow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ladder:
    """``batches[0]`` sequences of ``context`` prompt tokens decode ``steps`` steps, then the
    batch shrinks to each next size (by aborting). After the steps of each batch size in
    ``mix_at`` a ``mix_prompt``-token prompt joins and is computed beside the decodes; with
    ``mix_cached`` it starts with the first sequence's prompt (its full blocks are a
    prefix-cache hit, so the new tokens take the paged path, as a follow-up turn's do).
    ``ragged``: the prompts run from ``context`` tokens down to about half of it, as a serving
    batch's do (every default ladder: the paged kernel then masks, measured ~7 ms a decode
    dearer on CPU than in a batch of equal contexts, which serving rarely has)."""

    context: int
    batches: tuple[int, ...]
    steps: int
    mix_at: tuple[int, ...] = ()
    mix_prompt: int = 0
    ragged: bool = False
    mix_cached: bool = False


@dataclass(frozen=True)
class Prefills:
    """``count`` prompts of ``length`` tokens, one output token each (one step when they fit
    the token budget). With ``cached``, a prompt of that many tokens runs first and the
    ``count`` prompts start with it (its full blocks a prefix-cache hit): a chunk after cached
    KV, whose attention pairs grow with the prefix while its token count does not, which is
    what tells the pair cost apart from the token curve."""

    length: int
    count: int = 1
    cached: int = 0


@dataclass(frozen=True)
class ProfileGrid:
    """``ladders`` then ``prefills``, the whole run ``repeats`` times (every other time in
    reverse order): the machine's speed drifts by 10-25% over tens of seconds on a shared
    CPU, and a grid run once blames a slow phase on whichever shapes ran in it (one profile
    put a decode's cost per context token 4x another's). Measured on SmolLM2, 2 threads: five
    single profiles predicted the same real steps within 6-10% of each other, fits on three
    of them pooled within 2-4%."""

    ladders: tuple[Ladder, ...]
    prefills: tuple[Prefills, ...]
    warmup: Ladder = Ladder(32, (4,), 3)
    repeats: int = 1


DEFAULT_GRID = ProfileGrid(
    ladders=(
        # every batch size up to 16: a CPU's small GEMMs are not monotonic in the rows
        Ladder(16, (32, 24, *range(16, 0, -1)), 3, (12, 8, 5, 3, 2, 1), 48, ragged=True),
        # the same batch sizes at a longer context: separates the paged-attention term
        Ladder(112, tuple(range(16, 0, -1)), 3, (12, 8, 4, 2, 1), 160, True, mix_cached=True),
        # a chat follow-up: a short message after a cached history, beside running decodes
        # (the most common serving step; the mixes above all join with 48 or more tokens)
        Ladder(64, (8, 6, 4, 3, 2, 1), 3, (8, 6, 4, 3, 2, 1), 12, ragged=True, mix_cached=True),
        Ladder(256, tuple(range(12, 0, -1)), 3, (4,), 512, ragged=True),
        Ladder(512, (4, 3, 2), 4, ragged=True),
        Ladder(1000, (2, 1), 4, ragged=True),
    ),
    prefills=(
        # a lone prompt is what a request arriving at an idle engine costs (its TTFT): nine
        # lengths sampled once left the fit 11-14% under Azure's short ones
        *(
            Prefills(n)
            for n in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536)
        ),
        Prefills(16, 8),
        Prefills(64, 4),
        Prefills(256, 2),
        # short chunks after cached prefixes (a fresh prompt's pairs follow its tokens, so
        # without these the fit cannot tell the pairs' cost, or the cached prefix's, from the
        # tokens'); the first two are chat follow-ups arriving at an idle engine, steps the
        # fit under-predicted by a median 3-8% (four runs) with only the long prefixes below
        Prefills(12, cached=96),
        Prefills(40, cached=192),
        Prefills(64, cached=256),
        Prefills(32, cached=512),
        Prefills(128, cached=512),
        Prefills(16, cached=1024),
    ),
    repeats=3,
)
QUICK_GRID = ProfileGrid(
    ladders=(Ladder(16, (8, 4, 2, 1), 3, mix_at=(4,), mix_prompt=64), Ladder(128, (4, 2, 1), 3)),
    prefills=(Prefills(16), Prefills(64), Prefills(256), Prefills(32, 4)),
    warmup=Ladder(16, (2,), 2),
)
