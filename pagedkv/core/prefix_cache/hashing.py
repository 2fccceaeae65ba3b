"""Chained block hashes for automatic prefix caching.

A full block is named by ``H(parent_hash || token_ids as little-endian int64)``; the first block's
parent is a *root* hash of the request's extra keys (``cache_salt``, adapter id), so two tenants
with different salts never produce equal hashes for any block. Hashes are bytes, deterministic
across processes and machines (never Python's salted ``hash()``).

``sha256`` is the default because a prefix cache keyed by a weak hash lets a crafted prompt
collide with another user's block and read its KV. ``xxh128`` is ~3x faster but is for trusted,
single-tenant use only: XXH3's secret is public, so anyone can construct two different blocks with
the same hash under any parent and be served the other block's KV (the int32 bound on token ids
that ``tokens.py`` enforces narrows that room but does not close it; ``cache_salt`` does not help
within one tenant). ``blake2b`` is a collision-resistant alternative to sha256.

``cache_salt`` must be ``str | bytes`` and ``lora_id`` ``int | str`` (checked at the manager's
boundary): they enter the root hash by ``repr``, which for other types (a set, an object) can
depend on the process's hash seed or memory addresses and would silently break sharing.
"""

from __future__ import annotations

import hashlib
import sys
import weakref
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from pagedkv.core.validate import is_int
from pagedkv.errors import InvalidArgumentError
from pagedkv.registry import Registry

HashFn = Callable[[bytes], bytes]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _blake2b(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


HASH_FUNCTIONS: Registry[HashFn] = Registry("hash function")
HASH_FUNCTIONS.register("sha256", _sha256)
HASH_FUNCTIONS.register("blake2b", _blake2b)
HASH_FUNCTIONS.register("xxh128", xxhash.xxh3_128_digest)

_BIG_ENDIAN = sys.byteorder == "big"


def register_hash_function(name: str, fn: HashFn, *, replace: bool = False) -> None:
    """Add a named block-hash function (bytes -> digest bytes) usable as ``hash_algo``. A taken
    name raises ``RegistryError`` unless ``replace=True`` (replacing a function changes every
    hash of managers created afterwards: caches keyed by the old one no longer match)."""
    HASH_FUNCTIONS.register(name, fn, replace=replace)


def token_bytes(tokens: array[int]) -> bytes:
    """Serialize an ``array('q')`` of token ids (validated to ``[0, 2**31)``) as little-endian
    int64 bytes (the width stays int64 so hashes match those of earlier versions)."""
    if _BIG_ENDIAN:  # pragma: no cover - all supported hosts are little-endian
        tokens = array("q", tokens)
        tokens.byteswap()
    return tokens.tobytes()


def root_hash(hash_fn: HashFn, cache_salt: str | bytes | None, lora_id: int | str | None) -> bytes:
    """The parent hash of a request's first block; encodes the request's extra keys."""
    return hash_fn(f"pagedkv-root|salt={cache_salt!r}|lora={lora_id!r}".encode())


def chain_hashes(
    hash_fn: HashFn, parent: bytes, data: bytes, block_bytes: int, num_blocks: int
) -> list[bytes]:
    """Hashes of ``num_blocks`` consecutive full blocks of serialized tokens ``data``.

    Args:
        parent: hash of the block before the first one (or the root hash).
        data: token bytes starting at the first block; at least ``num_blocks * block_bytes``.
        block_bytes: ``block_size * 8``.
    """
    out: list[bytes] = []
    append = out.append
    for start in range(0, num_blocks * block_bytes, block_bytes):
        parent = hash_fn(parent + data[start : start + block_bytes])
        append(parent)
    return out


class BlockHasher:
    """The prefix cache's hashing: one hash function and block size, and the last root."""

    def __init__(self, hash_fn: HashFn, block_size: int) -> None:
        self.hash_fn = hash_fn
        self.block_size = block_size
        self._last_root: tuple[object, bytes] = (None, b"")

    def root(self, cache_salt: str | bytes | None, lora_id: int | str | None) -> bytes:
        """The parent hash of a prompt's first block (keys the salt and adapter). The last one
        is remembered: consecutive prompts of one tenant (a batch) hash their root once."""
        key = (type(cache_salt), cache_salt, type(lora_id), lora_id)
        last = self._last_root  # read once: a concurrent call may replace it
        if key == last[0]:
            return last[1]
        root = root_hash(self.hash_fn, cache_salt, lora_id)
        self._last_root = (key, root)
        return root

    def hash_block(self, parent: bytes, block: array[int]) -> bytes:
        """The hash of one full block of tokens after ``parent`` (``hash_blocks`` of one)."""
        return self.hash_fn(parent + token_bytes(block))

    def hash_blocks(self, parent: bytes, tokens: array[int], num_blocks: int) -> list[bytes]:
        """Chained hashes of the first ``num_blocks`` full blocks of ``tokens``, after
        ``parent`` (the root, or the hash of the block before ``tokens[0]``)."""
        bs = self.block_size
        return chain_hashes(
            self.hash_fn, parent, token_bytes(tokens[: num_blocks * bs]), bs * 8, num_blocks
        )


@dataclass(frozen=True, eq=False)
class HashedPrompt:
    """A token prompt and the chained hash of each of its full blocks, made once per request by
    ``BlockManager.hash_prompt`` and then given to ``lookup_prefix``, ``admit`` and KV tiers in
    place of the token ids, so none of them hashes the prompt again (vLLM keeps
    ``block_hashes`` on its ``Request`` for the same reason).

    The hashes must belong to the tokens, or a prefix hit would serve another prompt's KV: a
    manager accepts only instances made by ``BlockManager.hash_prompt`` or ``prefix`` (it keeps
    a weak set of them), never one built with the constructor or ``dataclasses.replace``, and
    only for its own ``hash_algo`` and ``block_size``. Instances are immutable (the tokens are
    kept as bytes).
    """

    data: bytes  # the token ids as native int64 (validated ids, 8 bytes each)
    hashes: tuple[bytes, ...]  # one per full block of tokens
    root: bytes  # parent hash of block 0 (salt and adapter)
    hash_algo: str
    block_size: int
    whole: HashedPrompt | None = None  # the prompt this is a prefix of (its later blocks'
    # hashes are reused when the sequence grows into them)

    def __len__(self) -> int:
        return len(self.data) // 8

    def token_array(self) -> array[int]:
        """A new ``array('q')`` of the token ids."""
        out = array("q")
        out.frombytes(self.data)
        return out

    def prefix(self, num_tokens: int) -> HashedPrompt:
        """The first ``num_tokens`` tokens with their hashes (no hashing: a chunked prefill
        admits the first chunk of a prompt hashed whole)."""
        if not is_int(num_tokens) or not 0 <= num_tokens <= len(self):
            raise InvalidArgumentError(
                f"num_tokens: expected an int in [0, {len(self)}], got {num_tokens!r}"
            )
        return genuine(
            HashedPrompt(
                self.data[: num_tokens * 8],
                self.hashes[: num_tokens // self.block_size],
                self.root,
                self.hash_algo,
                self.block_size,
                self.whole or self,
            )
        )


_GENUINE: weakref.WeakSet[HashedPrompt] = weakref.WeakSet()


def genuine(prompt: HashedPrompt) -> HashedPrompt:
    """Mark ``prompt`` as made from its tokens by this module's callers (hashes verified by
    construction); ``is_genuine`` tells them apart from hand-built instances."""
    _GENUINE.add(prompt)
    return prompt


def is_genuine(prompt: HashedPrompt) -> bool:
    return prompt in _GENUINE
