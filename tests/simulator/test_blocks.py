from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pagedkv.simulator.blocks import build_block_stream, next_use, parents
from pagedkv.simulator.oracle import infinite_cache
from pagedkv.simulator.trace import Request, Trace


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    neq = np.nonzero(a[:n] != b[:n])[0]
    return int(neq[0]) if len(neq) else n


def test_split_weights_and_counts() -> None:
    tr = Trace([Request(0, 1100, 1, (7, 8, 9))], 512)
    s = build_block_stream(tr, 16)
    assert s.num_refs == 69  # ceil(1100 / 16)
    assert s.weights.sum() == 1100
    assert s.weights[-1] == 1100 - 16 * 68 == 12
    s512 = build_block_stream(tr, 512)
    assert s512.weights.tolist() == [512, 512, 76]


def test_512_keys_follow_the_hash_ids() -> None:
    tr = Trace(
        [Request(0, 1024, 1, (0, 1)), Request(0, 1024, 1, (0, 2)), Request(0, 1024, 1, (0, 1))], 512
    )
    k = build_block_stream(tr, 512).keys.reshape(3, 2)
    assert k[0, 0] == k[1, 0] == k[2, 0]
    assert k[0, 1] != k[1, 1]
    assert k[0, 1] == k[2, 1]


def test_same_id_under_different_parent_is_a_different_block() -> None:
    tr = Trace([Request(0, 8, 1, (1, 5)), Request(0, 8, 1, (2, 5))], 4)
    k = build_block_stream(tr, 4).keys
    assert k[1] != k[3]  # chained: id 5 after 1 is not id 5 after 2


paths = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(paths, st.data())
def test_512_to_16_split_preserves_identity(ps: list[list[int]], data: st.DataObject) -> None:
    # hash ids as a prefix tree: request prompts share a prefix iff they share leading ids
    reqs = []
    for p in ps:
        tail = data.draw(st.integers(1, 512))
        reqs.append(Request(0, 512 * (len(p) - 1) + tail, 1, tuple(p)))
    tr = Trace(reqs, 512)
    s16, s512 = build_block_stream(tr, 16), build_block_stream(tr, 512)
    for a in range(len(reqs)):
        for b in range(len(reqs)):
            ka, kb = s16.request_keys(a), s16.request_keys(b)
            pa, pb = ps[a], ps[b]
            same_atoms = _common_prefix(np.array(pa), np.array(pb))
            shared = _common_prefix(ka, kb)
            if same_atoms == min(len(pa), len(pb)) and reqs[a].input_len == reqs[b].input_len:
                assert shared == len(ka)  # identical prompts: every sub-block matches
            else:
                full_atoms = min(same_atoms, len(pa) - 1, len(pb) - 1)
                assert shared >= 32 * full_atoms  # each shared full 512-block is 32 sub-blocks
                # never shares more than the common hash-id prefix covers
                assert shared * 16 <= 512 * same_atoms
            assert _common_prefix(s512.request_keys(a), s512.request_keys(b)) * 512 >= min(
                shared * 16 // 512 * 512, 512 * same_atoms
            )
    # infinite-cache hit tokens are the same at both granularities when prompts are 512-aligned
    aligned = Trace([Request(0, 512 * len(p), 1, tuple(p)) for p in ps], 512)
    h16 = infinite_cache(build_block_stream(aligned, 16), 0.0)
    h512 = infinite_cache(build_block_stream(aligned, 512), 0.0)
    assert h16.hit_tokens == h512.hit_tokens


def test_next_use_and_parents() -> None:
    tr = Trace([Request(0, 8, 1, (1, 2)), Request(0, 4, 1, (3,)), Request(0, 8, 1, (1, 2))], 4)
    s = build_block_stream(tr, 4)
    ids, nxt, n = next_use(s)
    assert n == 3
    assert nxt.tolist() == [2, 2, 3, 3, 3]  # 3 = never again
    par = parents(s, ids, n)
    assert par[ids[1]] == ids[0]
    assert par[ids[0]] == -1
    assert par[ids[2]] == -1


def test_prefixless_requests_never_share() -> None:
    tr = Trace([Request(0, 40, 1), Request(0, 40, 1)], None)
    s = build_block_stream(tr, 16)
    assert len(np.unique(s.keys)) == s.num_refs == 6
