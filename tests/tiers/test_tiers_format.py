"""Value format: round trip, and every failed check is a typed rejection, never bytes."""

from __future__ import annotations

import os

import pytest
import torch

from pagedkv.tiers import DecodedBlock, Rejection, RejectReason, decode_block, encode_block
from pagedkv.tiers.format import DTYPE_CODES, KEY_PREFIX, block_key, dtype_code, fingerprint_for

FP = fingerprint_for("m", "rev", torch.float16, 16, 2, 2, 8)
HASH = bytes(range(32))
PAYLOAD = os.urandom(2 * 2 * 16 * 2 * 8 * 2)
F16 = DTYPE_CODES["float16"]


def decode(value: bytes | bytearray, **over: object) -> DecodedBlock | Rejection:
    kw: dict = {
        "fingerprint": FP,
        "chain_hash": HASH,
        "dtype": F16,
        "payload_len": len(PAYLOAD),
        "max_tokens": 16,
        **over,
    }
    return decode_block(value, **kw)


def test_round_trip_is_zero_copy_view_of_exact_payload() -> None:
    value = encode_block(FP, HASH, 16, PAYLOAD, F16)
    got = decode(value)
    assert isinstance(got, DecodedBlock)
    assert got.num_tokens == 16
    assert bytes(got.payload) == PAYLOAD
    partial = decode(encode_block(FP, HASH, 5, PAYLOAD, F16))
    assert isinstance(partial, DecodedBlock)
    assert partial.num_tokens == 5


def test_key_layout() -> None:
    key = block_key(FP, HASH)
    assert key == KEY_PREFIX + FP.hex().encode() + b":" + HASH.hex().encode()
    assert key.startswith(b"pagedkv:kv:v1:")
    assert len(FP) == 16


@pytest.mark.parametrize(
    "what", ["model", "revision", "dtype", "block_size", "layers", "heads", "head_dim", "layout"]
)
def test_fingerprint_separates_everything_that_changes_bytes(what: str) -> None:
    base = {
        "model_name": "m",
        "revision": "rev",
        "dtype": torch.float16,
        "block_size": 16,
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": 8,
    }
    change = {
        "model": ("model_name", "m2"),
        "revision": ("revision", "rev2"),
        "dtype": ("dtype", torch.bfloat16),
        "block_size": ("block_size", 32),
        "layers": ("num_layers", 3),
        "heads": ("num_kv_heads", 1),
        "head_dim": ("head_dim", 16),
        "layout": ("layout", "other"),
    }[what]
    other = fingerprint_for(**{**base, change[0]: change[1]})  # type: ignore[arg-type]
    assert other != fingerprint_for(**base)  # type: ignore[arg-type]
    assert fingerprint_for(**base) == FP  # type: ignore[arg-type]  (deterministic)
    assert fingerprint_for(**{**base, "dtype": "float16"}) == FP  # type: ignore[arg-type]


def corrupt_at(value: bytes, i: int) -> bytearray:
    out = bytearray(value)
    out[i] ^= 0x01
    return out


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda v: v[:-1], RejectReason.TRUNCATED),
        (lambda v: v[:10], RejectReason.TRUNCATED),
        (lambda v: b"", RejectReason.TRUNCATED),
        (lambda v: v + b"\0", RejectReason.LENGTH),
        (lambda v: b"XKV1" + v[4:], RejectReason.MAGIC),
        (lambda v: v[:4] + b"\x02\x00" + v[6:], RejectReason.VERSION),
        (lambda v: corrupt_at(v, 100), RejectReason.CHECKSUM),  # payload byte
        (lambda v: corrupt_at(v, len(v) - 1), RejectReason.CHECKSUM),  # checksum byte
        (lambda v: corrupt_at(v, 8), RejectReason.NUM_TOKENS),  # header: num_tokens
    ],
)
def test_damaged_values_are_rejected(mutate, reason: RejectReason) -> None:  # type: ignore[no-untyped-def]
    got = decode(mutate(encode_block(FP, HASH, 16, PAYLOAD, F16)))
    assert isinstance(got, Rejection)
    assert got.reason is reason


def test_flipping_any_header_or_payload_byte_never_decodes() -> None:
    value = encode_block(FP, HASH, 16, PAYLOAD, F16)
    for i in list(range(70)) + list(range(len(value) - 40, len(value))):
        assert isinstance(decode(corrupt_at(value, i)), Rejection), i


def test_foreign_values_are_rejected() -> None:
    other_fp = fingerprint_for("m2", "rev", torch.float16, 16, 2, 2, 8)
    cases = [
        (encode_block(other_fp, HASH, 16, PAYLOAD, F16), RejectReason.FINGERPRINT),
        (encode_block(FP, bytes(32), 16, PAYLOAD, F16), RejectReason.CHAIN_HASH),
        (encode_block(FP, HASH[:16], 16, PAYLOAD, F16), RejectReason.CHAIN_HASH),
        (encode_block(FP, HASH, 16, PAYLOAD, DTYPE_CODES["bfloat16"]), RejectReason.DTYPE),
        (encode_block(FP, HASH, 16, PAYLOAD + b"\0\0", F16), RejectReason.PAYLOAD_SIZE),
        (encode_block(FP, HASH, 17, PAYLOAD, F16), RejectReason.NUM_TOKENS),
        (encode_block(FP, HASH, 0, PAYLOAD, F16), RejectReason.NUM_TOKENS),
    ]
    for value, reason in cases:
        got = decode(value)
        assert isinstance(got, Rejection), reason
        assert got.reason is reason, (reason, got)
    got = decode(encode_block(FP, HASH, 16, PAYLOAD, F16), payload_len=len(PAYLOAD) - 2)
    assert isinstance(got, Rejection)
    assert got.reason is RejectReason.PAYLOAD_SIZE


def test_dtype_codes() -> None:
    assert dtype_code(torch.bfloat16) == dtype_code("bfloat16") == DTYPE_CODES["bfloat16"]
    with pytest.raises(Exception, match="dtype"):
        dtype_code(torch.int8)
