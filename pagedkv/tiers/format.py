"""Keys and the self-validating value format of KV blocks in tiers (version 1).

Why self-validating: tiers are shared by processes of different models/configurations and may
lose, truncate or corrupt data (eviction races, disk faults, a foreign writer). Users of other KV
tiers report those as silently wrong output. Here a value is only ever used as KV after every
check in :func:`decode_block` passed; anything else is a typed :class:`Rejection` (a miss).

Key::

    pagedkv:kv:v1:<fingerprint hex (32)>:<chain hash hex>

Value (little-endian)::

    header   magic "PKV1" | version u16 | dtype code u8 | chain-hash length u8 |
             num_tokens u32 | payload length u64 | fingerprint 16 B | chain hash (len B)
    payload  the block's K and V for all layers, raw bytes, C order
             [num_layers, 2 (K, V), block_size, num_kv_heads, head_dim] of the dtype
    checksum xxh3_128 digest (16 B) over header + payload

The fingerprint (:func:`fingerprint_for`) covers everything that makes the KV bytes of the same
tokens differ; the chain hash (``core/prefix_cache/hashing.py``) covers the tokens, their whole
prefix and the request's ``cache_salt``/adapter (through its root). This module has no torch
dependency.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass

import xxhash

from pagedkv.tiers.base import TierConfigError, Value

MAGIC = b"PKV1"
VERSION = 1
KEY_PREFIX = b"pagedkv:kv:v1:"
FINGERPRINT_BYTES = 16
CHECKSUM_BYTES = 16
MAX_HASH_BYTES = 64
#: Name of the payload layout (part of the fingerprint): one block, all layers, K then V.
LAYOUT_V1 = "pagedkv.block[L,2,T,H,D]"

# magic, version, dtype code, chain-hash length, num_tokens, payload length, fingerprint
_FIXED = struct.Struct("<4sHBBIQ16s")

#: Dtype name (``str(torch_dtype)`` without ``torch.``) -> code stored in the header.
DTYPE_CODES: dict[str, int] = {
    "float32": 1,
    "float16": 2,
    "bfloat16": 3,
    "float8_e4m3fn": 4,
    "float8_e5m2": 5,
}


class RejectReason(enum.Enum):
    """Why a stored value was not accepted as the KV of the block asked for."""

    TRUNCATED = "shorter than its header says"
    LENGTH = "length differs from header + payload + checksum"
    MAGIC = "bad magic"
    VERSION = "unsupported format version"
    FINGERPRINT = "written for another model/dtype/geometry"
    CHAIN_HASH = "holds another block than the key names"
    DTYPE = "dtype differs"
    PAYLOAD_SIZE = "payload size differs from this cache's block size"
    NUM_TOKENS = "token count out of range"
    CHECKSUM = "checksum mismatch (corrupted)"


@dataclass(frozen=True)
class Rejection:
    """A typed miss: the value failed ``reason``; it must not be used as KV."""

    reason: RejectReason
    detail: str = ""


@dataclass(frozen=True)
class DecodedBlock:
    """A value that passed every check. ``payload`` is a zero-copy view into the value."""

    num_tokens: int
    payload: memoryview


def dtype_name(dtype: object) -> str:
    """``torch.float16`` / ``"float16"`` / ``"torch.float16"`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def dtype_code(dtype: object) -> int:
    """Header code of a KV dtype (raises ``TierConfigError`` for dtypes tiers cannot store)."""
    name = dtype_name(dtype)
    if name not in DTYPE_CODES:
        raise TierConfigError(f"dtype: expected one of {sorted(DTYPE_CODES)}, got {name}")
    return DTYPE_CODES[name]


def fingerprint_for(
    model_name: str,
    revision: str | None,
    dtype: object,
    block_size: int,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    layout: str = LAYOUT_V1,
) -> bytes:
    """16 bytes naming a KV byte format: sha256 over a canonical JSON of every input.

    Two engines share blocks iff their fingerprints are equal, so include everything that
    changes KV bytes. ``revision`` should pin the weights (a commit, a file digest); with
    ``None`` two checkpoints of one name would share (wrong) blocks. The cache salt is not an
    input: it is per request and already inside every chain hash (its root).
    """
    ident = {
        "format": VERSION,
        "model": model_name,
        "revision": revision,
        "dtype": dtype_name(dtype),
        "block_size": int(block_size),
        "num_layers": int(num_layers),
        "num_kv_heads": int(num_kv_heads),
        "head_dim": int(head_dim),
        "layout": layout,
    }
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"pagedkv-fingerprint|" + blob).digest()[:FINGERPRINT_BYTES]


def block_key(fingerprint: bytes, chain_hash: bytes) -> bytes:
    """The tier key of one block: ``pagedkv:kv:v1:<fp hex>:<chain hash hex>`` (ASCII)."""
    return KEY_PREFIX + fingerprint.hex().encode() + b":" + chain_hash.hex().encode()


def value_size(chain_hash_len: int, payload_len: int) -> int:
    """Bytes of a value holding a ``payload_len`` payload under a chain hash of that length."""
    return _FIXED.size + chain_hash_len + payload_len + CHECKSUM_BYTES


def header_bytes(
    fingerprint: bytes, chain_hash: bytes, num_tokens: int, payload_len: int, dtype: int
) -> bytes:
    """The header of a value (see module docstring)."""
    if len(fingerprint) != FINGERPRINT_BYTES or not 0 < len(chain_hash) <= MAX_HASH_BYTES:
        raise TierConfigError(
            f"fingerprint must be {FINGERPRINT_BYTES} bytes and chain hash "
            f"1..{MAX_HASH_BYTES}; got {len(fingerprint)}, {len(chain_hash)}"
        )
    return (
        _FIXED.pack(MAGIC, VERSION, dtype, len(chain_hash), num_tokens, payload_len, fingerprint)
        + chain_hash
    )


def new_value(
    fingerprint: bytes, chain_hash: bytes, num_tokens: int, payload_len: int, dtype: int
) -> tuple[bytearray, memoryview]:
    """An unsealed value with its header written, and a view of its payload region to fill.

    Why: the store path copies a block out of storage straight into the value (one copy, no
    concatenation); :func:`seal` then appends the checksum, possibly on another thread."""
    header = header_bytes(fingerprint, chain_hash, num_tokens, payload_len, dtype)
    value = bytearray(len(header) + payload_len + CHECKSUM_BYTES)
    value[: len(header)] = header
    return value, memoryview(value)[len(header) : len(header) + payload_len]


def seal(value: bytearray) -> bytearray:
    """Write the checksum of header + payload into the last 16 bytes; returns ``value``."""
    body = memoryview(value)[:-CHECKSUM_BYTES]
    value[-CHECKSUM_BYTES:] = xxhash.xxh3_128_digest(body)
    body.release()
    return value


def encode_block(
    fingerprint: bytes, chain_hash: bytes, num_tokens: int, payload: Value, dtype: int
) -> bytearray:
    """header + payload + xxh3_128(header + payload). ``payload``: the block's raw KV bytes."""
    src = memoryview(payload).cast("B")
    value, region = new_value(fingerprint, chain_hash, num_tokens, len(src), dtype)
    region[:] = src
    region.release()
    return seal(value)


def decode_block(
    value: Value,
    *,
    fingerprint: bytes,
    chain_hash: bytes,
    dtype: int,
    payload_len: int,
    max_tokens: int,
) -> DecodedBlock | Rejection:
    """Validate ``value`` as the block ``chain_hash`` of format ``fingerprint``.

    Cheap structural and identity checks first, the checksum last. Never raises on bad data.
    """
    mv = memoryview(value).cast("B")
    if len(mv) < _FIXED.size:
        return Rejection(RejectReason.TRUNCATED, f"{len(mv)} bytes")
    magic, version, code, hash_len, ntok, plen, fp = _FIXED.unpack_from(mv)
    if magic != MAGIC:
        return Rejection(RejectReason.MAGIC, repr(bytes(magic)))
    if version != VERSION:
        return Rejection(RejectReason.VERSION, str(version))
    head = _FIXED.size + hash_len
    total = head + plen + CHECKSUM_BYTES
    if len(mv) != total:
        reason = RejectReason.TRUNCATED if len(mv) < total else RejectReason.LENGTH
        return Rejection(reason, f"{len(mv)} bytes, header says {total}")
    checks = (
        (fp == fingerprint, RejectReason.FINGERPRINT),
        (mv[_FIXED.size : head] == chain_hash, RejectReason.CHAIN_HASH),
        (code == dtype, RejectReason.DTYPE),
        (plen == payload_len, RejectReason.PAYLOAD_SIZE),
        (0 < ntok <= max_tokens, RejectReason.NUM_TOKENS),
    )
    for ok, reason in checks:
        if not ok:
            return Rejection(reason)
    if xxhash.xxh3_128_digest(mv[: head + plen]) != mv[head + plen :]:
        return Rejection(RejectReason.CHECKSUM)
    return DecodedBlock(num_tokens=ntok, payload=mv[head : head + plen])
