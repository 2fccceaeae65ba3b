"""The runner's pending tokens: per sequence, the token ids not yet run through the model.

:class:`PagedModelRunner` keeps a :data:`PendingTokens` map: ``admit`` puts the uncached prompt
suffix there, ``append``/``append_batch`` the sampled tokens, ``mark_loaded`` trims what a KV tier
loaded, and ``forward`` computes them and drops the entries. A sequence with pending tokens may
not be appended to or forked: the KV of its last blocks is not written yet. Token ids enter only
through :func:`token_id_array`, so the model never sees an id outside its vocabulary.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeAlias

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.storage._checks import int_array

# seq_id -> (first uncomputed position, token ids not yet run through the model)
PendingTokens: TypeAlias = dict[Hashable, tuple[int, list[int]]]


def token_id_array(tokens: Sequence[int] | np.ndarray, what: str, vocab_size: int) -> np.ndarray:
    """int64 ``[n]`` ids, ``n >= 1``, each in ``[0, vocab_size)`` (one vectorised check)."""
    ids = int_array(tokens, what, 1)
    if not len(ids):
        raise InvalidArgumentError(f"{what}: expected at least 1 token id, got none")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InvalidArgumentError(
            f"{what}: expected token ids in [0, {vocab_size}) (the model's vocabulary), got {bad}"
        )
    return ids


def check_not_pending(
    pending: Mapping[Hashable, tuple[int, list[int]]], seq_ids: Sequence[Hashable]
) -> None:
    """Refuse sequences whose pending tokens no :meth:`forward` has computed yet."""
    for s in seq_ids:
        if s in pending:
            raise InvalidArgumentError(
                f"sequence {s!r}: expected its pending tokens to be computed by forward() "
                "first, got uncomputed tokens"
            )


def without_loaded(entry: tuple[int, list[int]], num_tokens: int) -> tuple[int, list[int]]:
    """A pending entry after a KV tier loaded its first ``num_tokens`` tokens of the sequence.
    At least one pending token stays (its logits are needed)."""
    start, toks = entry
    if not start <= num_tokens < start + len(toks):
        raise InvalidArgumentError(
            f"num_tokens: expected in [{start}, {start + len(toks)}), got {num_tokens}"
        )
    return num_tokens, toks[num_tokens - start :]
