"""``hash_prompt`` / ``HashedPrompt``: a prompt hashed once serves lookup, admission and the
blocks a chunked prefill fills later, with exactly the keys a token prompt gets."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from core_helpers import busy, fails_atomically

from pagedkv.core import BlockManager, CacheConfig, HashedPrompt, register_hash_function
from pagedkv.errors import InvalidArgumentError

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]  # 2 full blocks of 4, then 2 tokens


def counted(mgr: BlockManager) -> list[bytes]:
    calls: list[bytes] = []
    real = mgr.prefix_cache.hasher.hash_fn

    def fn(data: bytes) -> bytes:
        calls.append(data)
        return real(data)

    mgr.prefix_cache.hasher.hash_fn = fn
    return calls


def test_hashed_prompt_admits_exactly_like_its_tokens(make_mgr):
    a, b = make_mgr(num_blocks=16), make_mgr(num_blocks=16)
    for mgr in (a, b):
        mgr.admit("warm", PROMPT, cache_salt="t")
        mgr.commit(["warm"])
    hashed = a.hash_prompt(PROMPT, cache_salt="t")
    assert len(hashed) == 10
    assert len(hashed.hashes) == 2
    assert a.lookup_prefix(hashed) == b.lookup_prefix(PROMPT, cache_salt="t") == 8
    assert a.admit("x", hashed) == b.admit("x", PROMPT, cache_salt="t") == 8
    assert a.seq("x").block_hashes == b.seq("x").block_hashes == list(hashed.hashes)
    assert a.block_table("x") == b.block_table("x")
    a.append("x", [1, 2])  # the sequence owns a copy of the tokens
    assert list(hashed.token_array()) == PROMPT
    a.check_integrity()


def test_admitting_a_prefix_then_growing_into_the_prompt_hashes_nothing_again(make_mgr):
    mgr = make_mgr(num_blocks=16)
    hashed = mgr.hash_prompt(PROMPT)
    calls = counted(mgr)
    mgr.admit("x", hashed.prefix(3))  # a first chunk of 3 tokens
    mgr.append("x", PROMPT[3:6])  # the next chunk fills block 0
    mgr.append("x", PROMPT[6:])  # ... and block 1
    assert calls == []
    assert mgr.seq("x").block_hashes == list(hashed.hashes)
    mgr.commit(["x"])
    mgr.check_integrity()


def test_growing_with_other_tokens_hashes_them(make_mgr):
    """A block whose tokens differ from the prompt's, or whose parent does, gets its own hash."""
    mgr = make_mgr(num_blocks=16)
    hashed = mgr.hash_prompt(PROMPT)
    ref = make_mgr(num_blocks=16)
    mgr.admit("x", hashed.prefix(2))
    mgr.append("x", [99, 8])  # block 0 differs from the prompt's
    mgr.append("x", PROMPT[4:8])  # block 1 has the prompt's tokens but another parent
    ref.admit("x", [5, 6, 99, 8, *PROMPT[4:8]])
    assert mgr.seq("x").block_hashes == ref.seq("x").block_hashes
    assert mgr.seq("x").block_hashes[1] != hashed.hashes[1]


def test_lookup_and_admission_hash_once(make_mgr):
    mgr = make_mgr(num_blocks=16)
    calls = counted(mgr)
    hashed = mgr.hash_prompt(PROMPT, cache_salt="s")
    assert len(calls) == 2 + 1  # two full blocks and the root
    mgr.lookup_prefix(hashed)
    mgr.admit("x", hashed)
    mgr.pin_prefix(hashed)
    assert len(calls) == 3


def test_a_prompt_hashed_for_another_manager_is_refused(make_mgr):
    register_hash_function("test-md5", lambda d: hashlib.md5(d).digest(), replace=True)
    other_algo = make_mgr(block_size=2, num_blocks=16, hash_algo="test-md5").hash_prompt(PROMPT)
    other_size = make_mgr(block_size=4, num_blocks=16).hash_prompt(PROMPT)
    mgr = busy()  # block_size 2, sha256
    for prompt, named in ((other_algo, "'test-md5'"), (other_size, "block_size 4")):
        err = fails_atomically(mgr, InvalidArgumentError, mgr.admit, "x", prompt)
        assert named in str(err)
        fails_atomically(mgr, InvalidArgumentError, mgr.lookup_prefix, prompt)


def test_a_hashed_prompt_refuses_a_second_salt():
    mgr = busy()
    hashed = mgr.hash_prompt(PROMPT, cache_salt="a")
    err = fails_atomically(mgr, InvalidArgumentError, mgr.admit, "x", hashed, cache_salt="b")
    assert "hash_prompt" in str(err)
    fails_atomically(mgr, InvalidArgumentError, mgr.hash_prompt, PROMPT, cache_salt=3)


def test_hashed_prompt_with_caching_off_admits_without_keys():
    mgr = BlockManager(CacheConfig(block_size=4, num_blocks=16, enable_prefix_caching=False))
    hashed = mgr.hash_prompt(PROMPT)
    assert isinstance(hashed, HashedPrompt)
    assert len(hashed.hashes) == 2
    assert mgr.admit("x", hashed) == 0
    assert mgr.seq("x").block_hashes == []
    assert not mgr.seq("x").caching
    mgr.check_integrity()


@pytest.mark.parametrize("n", [0, 4, 9])
def test_prefix_keeps_the_hashes_of_its_full_blocks(n, make_mgr):
    hashed = make_mgr(num_blocks=16).hash_prompt(PROMPT)
    part = hashed.prefix(n)
    assert list(part.token_array()) == PROMPT[:n]
    assert part.hashes == hashed.hashes[: n // 4]
    assert part.whole is hashed
    assert part.prefix(len(part)).whole is hashed


def test_a_hand_built_or_replaced_hashed_prompt_is_refused(make_mgr):
    """Hashes that do not belong to their tokens would serve another prompt's KV."""
    mgr = busy()
    a, b = mgr.hash_prompt([7] * 10), mgr.hash_prompt(PROMPT)
    forged = dataclasses.replace(b, data=a.data)  # b's hashes, a's tokens
    built = HashedPrompt(a.data, b.hashes, b.root, b.hash_algo, b.block_size)
    for prompt in (forged, built):
        for call in (mgr.admit, mgr.pin_prefix):
            args = ("x", prompt) if call == mgr.admit else (prompt,)
            err = fails_atomically(mgr, InvalidArgumentError, call, *args)
            assert "hash_prompt" in str(err)
        fails_atomically(mgr, InvalidArgumentError, mgr.lookup_prefix, prompt)
    assert mgr.admit("ok", a.prefix(6)) >= 0  # what the manager made is accepted
    mgr.check_integrity()


@pytest.mark.parametrize("n", [-1, 11, 2.0, True])
def test_prefix_refuses_a_length_outside_the_prompt(n, make_mgr):
    hashed = make_mgr(num_blocks=16).hash_prompt(PROMPT)
    with pytest.raises(InvalidArgumentError, match=r"num_tokens: expected an int in \[0, 10\]"):
        hashed.prefix(n)
