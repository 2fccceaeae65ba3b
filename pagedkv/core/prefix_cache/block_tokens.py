"""The token ids of cached blocks, for partial-block prefix hits.

Why: a prefix lookup matches whole blocks by their chained hash, so a prompt that agrees with
a cached block on its first ``j < block_size`` tokens computes those ``j`` tokens again: a
shared system prompt that ends mid-block, or a repeated prompt whose last block is recomputed
for its logits (~5% of the prompt tokens of ``benchmarks/peers``' chat workload). The K/V of
those rows depends only on the tokens up to them, which the parent's hash chain and the ``j``
equal tokens fix, so they can be copied from the cached block instead (SGLang's radix cache
matches at token granularity for the same reason). A hash map cannot find a block by part of
its tokens, so this keeps each cached block's tokens, recorded when a token-keyed sequence
registers it, and compares them with a prompt's among the cached children of its last hit.

A record is ``(hash, tokens)`` and counts only while its block is cached under that hash: a
block that left the cache (and perhaps came back under another key, or a caller's key with no
tokens) has a stale record that is ignored, so no path that uncaches a block must clear it.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence

from pagedkv.core.prefix_cache.forest import Children, kids_of

TOKEN_BYTES = 8  # per token id (native int64, as token arrays and HashedPrompt.data hold them)


def common_tokens(a: bytes, b: bytes) -> int:
    """Leading token ids (int64, 8 bytes each) that ``a`` and ``b`` have in common."""
    w, n = TOKEN_BYTES, min(len(a), len(b)) // TOKEN_BYTES
    i = 0
    while i < n and a[i * w : (i + 1) * w] == b[i * w : (i + 1) * w]:
        i += 1
    return i


class BlockTokens:
    """``(hash, token bytes)`` of each block registered from a token-keyed sequence."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.records: list[tuple[Hashable, bytes] | None] = [None] * num_blocks
        self.block_size = block_size

    def record_chain(
        self,
        block_ids: Sequence[int],
        hashes: Sequence[Hashable],
        start: int,
        end: int,
        tokens: array[int],
        block_hash: Sequence[Hashable | None],
    ) -> None:
        """Record blocks ``start..end-1`` of a table just registered, those cached as
        themselves (``block_hash``, the cache's map; a duplicate of a block cached earlier
        stays private and gets no record). ``tokens``: the sequence's token ids."""
        bs = self.block_size
        for i in range(start, end):
            b = block_ids[i]
            if block_hash[b] == hashes[i]:
                self.records[b] = (hashes[i], tokens[i * bs : (i + 1) * bs].tobytes())

    def best_child(
        self, children: Children, block_hash: Sequence[Hashable | None], want: bytes
    ) -> tuple[int, int]:
        """The cached block among ``children`` whose first tokens agree longest with ``want``
        (int64 token bytes, at most a block's) and how many agree: ``(block, n)``, or
        ``(-1, 0)`` when none agrees on its first token. ``block_hash``: the cache's map."""
        best, best_n = -1, 0
        for c in kids_of(children):
            rec = self.records[c]
            if rec is None or rec[0] != block_hash[c]:
                continue
            n = common_tokens(rec[1], want)
            if n > best_n:
                best, best_n = c, n
        return best, best_n
