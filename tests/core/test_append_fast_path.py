"""``append``'s per-call fast path (a plain int, or a short list of plain ints, checked with int
comparisons and given slots computed without numpy) must behave exactly like its general path.

Differential test: the same random operations drive two managers; one appends plain ints and
lists (the fast path), the other the same tokens as ``np.int64`` scalars, ``array('q')`` and
numpy arrays (``as_token_array``). After every step both must be in the same state, raise the
same errors and have returned the same slots, which must equal ``export.slot_mapping`` of the
block table. Bad token ids (the fast path's checks fail, the general path raises) are mixed in.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import pytest
from core_helpers import KINDS, apply, run_lockstep, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedkv.core import BlockManager, CacheConfig, export
from pagedkv.core.tokens import MAX_TOKEN_ID
from pagedkv.errors import InvalidArgumentError

BAD_TOKENS: tuple[Any, ...] = (
    -1,
    MAX_TOKEN_ID + 1,
    True,
    [1, -1],
    [1, MAX_TOKEN_ID + 1],
    [1, True],
    [1.0],
    "a",
)
OPS = st.tuples(
    st.sampled_from((*KINDS, "step", "step", "one", "long", "bad")),
    st.integers(0, 9),
    st.integers(0, 12),
    st.lists(st.integers(0, 2), max_size=7),
    st.booleans(),
)


class Recording(BlockManager):
    """Appends through ``BlockManager.append``, optionally converting plain ints and lists to
    the general path's inputs first, and records the slots returned."""

    def __init__(self, config: CacheConfig, general: bool) -> None:
        super().__init__(config)
        self.general = general
        self.returned: list[list[int]] = []

    def append(self, seq_id: Any, token_ids: Any) -> np.ndarray:
        n = self.num_tokens(seq_id) if seq_id in self.seq_ids else 0
        if self.general and type(token_ids) is int and 0 <= token_ids <= MAX_TOKEN_ID:
            token_ids = np.int64(token_ids)
        elif (
            self.general
            and type(token_ids) is list
            and all(type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in token_ids)
        ):
            token_ids = (
                array("q", token_ids) if len(token_ids) % 2 else np.array(token_ids, dtype=np.int64)
            )
        slots = super().append(seq_id, token_ids)
        assert slots.dtype == np.int64
        expected = export.slot_mapping(self.block_table(seq_id), self.block_size, n, n + len(slots))
        assert slots.tolist() == expected.tolist()
        self.returned.append(slots.tolist())
        return slots


def apply_op(mgr: BlockManager, op: tuple[Any, ...], pins: list[Any], next_id: list[int]) -> None:
    ids = mgr.seq_ids
    kind, a, b, tokens, flag = op
    if kind == "step" and ids:  # an engine's decode step through the per-sequence API
        for sid in ids:
            mgr.append(sid, (a + b) % 3)
        mgr.commit(ids)
    elif kind == "one" and ids:
        mgr.append(ids[a % len(ids)], b % 3)
        if flag:
            mgr.commit([ids[a % len(ids)]])
    elif kind == "long" and ids:  # past the fast path's length limit
        mgr.append(ids[a % len(ids)], tokens + [b % 3] * 9)
    elif kind == "bad" and ids:
        mgr.append(ids[a % len(ids)], BAD_TOKENS[b % len(BAD_TOKENS)])
    else:
        apply(mgr, op, pins, next_id)


def comparable(mgr: BlockManager) -> dict[str, Any]:
    assert isinstance(mgr, Recording)
    return {**snapshot(mgr), "returned": mgr.returned}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=20, max_size=60),
    num_blocks=st.integers(4, 12),
    block_size=st.sampled_from([1, 2, 3, 4]),
    policy=st.sampled_from(["lru", "s3fifo"]),
)
def test_append_fast_path_matches_the_general_path(
    ops: list[tuple[Any, ...]], num_blocks: int, block_size: int, policy: str
) -> None:
    cfg = CacheConfig(block_size=block_size, num_blocks=num_blocks, eviction_policy=policy)
    run_lockstep(
        Recording(cfg, general=False), Recording(cfg, general=True), ops, comparable, apply_op
    )


def test_bad_tokens_raise_and_change_nothing() -> None:
    mgr = BlockManager(CacheConfig(block_size=4, num_blocks=8))
    mgr.admit("a", [1, 2, 3])
    before = snapshot(mgr)
    for bad in BAD_TOKENS:
        with pytest.raises(InvalidArgumentError, match="token ids must be ints"):
            mgr.append("a", bad)
        assert snapshot(mgr) == before
    assert mgr.append("a", 5).tolist() == [7]  # block 1, offset 3
    assert mgr.append("a", [6, 7]).tolist() == [8, 9]
    assert mgr.append("a", []).tolist() == []
