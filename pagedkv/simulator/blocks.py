"""Turn a trace into the stream of prompt-block references a cache of block size ``B`` sees.

The manager keys its prefix cache by one identity per block, chained so that equal identities
mean equal *prefixes*. Traces name content at their own granularity ``g`` (Mooncake: 512
tokens). To replay at any block size we first intern every trace atom into a prefix trie node
(``(parent node, hash id) -> node``, so identities are chained even if a trace reused an id
under different parents), then name block ``i`` of a prompt by where it *ends*: the trie node of
the atom holding its last token plus the number of that atom's tokens it includes. That key is
the paper's "(hash id, sub-index) chained to the parent" — the node carries the parent chain and
the offset is the sub-index — and it works for any ``B`` (smaller than, equal to or larger than
``g``). Keys are plain ``int`` (node * (g + 1) + offset) so the manager pays no hashing cost.

The last block of a prompt usually holds a remainder (``input_len - B * (n - 1)`` tokens); its
token weight is that remainder, which is how hit rates are token-weighted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.trace import Trace

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BlockStream:
    """All prompt-block references of a trace at one block size, in request (file) order.

    Request ``r`` owns ``keys[starts[r]:starts[r+1]]`` and ``weights`` (tokens per block). Keys
    are chained prefix identities: equal key ⇔ equal prompt prefix through the end of that block.
    """

    block_size: int
    keys: IntArray
    weights: IntArray
    starts: IntArray
    input_lens: IntArray

    @property
    def num_requests(self) -> int:
        return len(self.starts) - 1

    @property
    def num_refs(self) -> int:
        return len(self.keys)

    def request_keys(self, r: int) -> IntArray:
        return self.keys[self.starts[r] : self.starts[r + 1]]

    def dense_ids(self) -> tuple[IntArray, int]:
        """Keys renumbered ``0..U-1`` (in first-use order is not guaranteed) and ``U``."""
        uniq, inverse = np.unique(self.keys, return_inverse=True)
        return inverse.astype(np.int64), len(uniq)


def _intern_atoms(trace: Trace) -> tuple[IntArray, IntArray, int]:
    """Trie-intern each request's hash ids. Returns (atom nodes, per-request atom starts, g).

    Node 0 is the root; requests without hash ids get fresh nodes (unique content).
    """
    g = trace.hash_block_size or 1 << 30
    edges: dict[tuple[int, int], int] = {}
    nodes: list[int] = []
    atom_starts = [0]
    next_node = 1
    for r in trace.requests:
        ids = r.hash_ids
        if ids is None or trace.hash_block_size is None:
            n = -(-r.input_len // g)
            nodes.extend(range(next_node, next_node + n))
            next_node += n
        else:
            parent = 0
            for h in ids:
                key = (parent, h)
                node = edges.get(key)
                if node is None:
                    node = next_node
                    next_node += 1
                    edges[key] = node
                nodes.append(node)
                parent = node
        atom_starts.append(len(nodes))
    return np.asarray(nodes, dtype=np.int64), np.asarray(atom_starts, dtype=np.int64), g


def build_block_stream(trace: Trace, block_size: int) -> BlockStream:
    """Split every prompt of ``trace`` into ``block_size``-token blocks with chained keys."""
    if block_size <= 0:
        raise InvalidArgumentError(f"block_size must be positive, got {block_size}")
    if len(trace) == 0:
        raise InvalidArgumentError("trace has no requests")
    nodes, atom_starts, g = _intern_atoms(trace)
    lens = np.fromiter((r.input_len for r in trace.requests), dtype=np.int64, count=len(trace))
    nblocks = -(-lens // block_size)
    starts = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(nblocks, out=starts[1:])
    total = int(starts[-1])
    req = np.repeat(np.arange(len(lens), dtype=np.int64), nblocks)
    idx = np.arange(total, dtype=np.int64) - starts[req]
    end = np.minimum((idx + 1) * block_size, lens[req])
    atom = (end - 1) // g
    offset = end - atom * g
    node = nodes[atom_starts[req] + atom]
    keys = node * (g + 1) + offset if g < 1 << 30 else node * (1 << 31) + offset
    weights = end - idx * block_size
    return BlockStream(block_size, keys.astype(np.int64), weights, starts, lens)


def next_use(stream: BlockStream) -> tuple[IntArray, IntArray, int]:
    """For each reference: dense block id and the index of the *next request* that uses the
    same block (``num_requests`` = never again). Needed by the offline (Belady) oracle."""
    ids, n_unique = stream.dense_ids()
    nreq = stream.num_requests
    req = np.repeat(np.arange(nreq, dtype=np.int64), np.diff(stream.starts))
    order = np.lexsort((np.arange(len(ids)), ids))
    nxt = np.full(len(ids), nreq, dtype=np.int64)
    same = ids[order[1:]] == ids[order[:-1]]
    nxt[order[:-1][same]] = req[order[1:][same]]
    return ids, nxt, n_unique


def parents(stream: BlockStream, ids: IntArray, n_unique: int) -> IntArray:
    """Dense id of each block's parent (the previous block of the same prompt), ``-1`` for a
    first block. Well defined because keys are chained prefix identities."""
    par = np.full(n_unique, -1, dtype=np.int64)
    prev = np.empty_like(ids)
    prev[1:] = ids[:-1]
    prev[stream.starts[:-1][np.diff(stream.starts) > 0]] = -1
    par[ids] = prev
    return par
