"""KV tiers below the device pool: host memory, local disk and a Valkey/Redis server.

``TieredKVCache`` (connector) loads and stores KV blocks of a ``KVStorage`` through a list of
``KVTier``s, keyed by chained block hashes plus a fingerprint of the model and cache geometry;
every value read is validated before use. See ``docs/tiers.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pagedkv.registry import Registry
from pagedkv.tiers.base import (
    TIERS,
    KVTier,
    TierConfigError,
    TierError,
    TierStats,
    create_tier,
)
from pagedkv.tiers.disk import DiskTier
from pagedkv.tiers.embedded import EmbeddedValkey, embedded_valkey
from pagedkv.tiers.format import (
    DecodedBlock,
    Rejection,
    RejectReason,
    block_key,
    decode_block,
    encode_block,
    fingerprint_for,
)
from pagedkv.tiers.host import HostTier

if TYPE_CHECKING:
    from pagedkv.tiers.connector import TieredKVCache
    from pagedkv.tiers.remote import RemoteTier


@TIERS.register("remote")
def _remote_tier(**kwargs: Any) -> KVTier:
    """Imported on first use: the ``valkey`` client is only needed with a remote tier."""
    from pagedkv.tiers.remote import RemoteTier

    return RemoteTier(**kwargs)


def __getattr__(name: str) -> Any:
    # Lazy: RemoteTier pulls in the valkey client, TieredKVCache pulls in torch.
    if name == "RemoteTier":
        from pagedkv.tiers.remote import RemoteTier

        return RemoteTier
    if name == "TieredKVCache":
        from pagedkv.tiers.connector import TieredKVCache

        return TieredKVCache
    raise AttributeError(name)


__all__ = [
    "TIERS",
    "DecodedBlock",
    "DiskTier",
    "EmbeddedValkey",
    "HostTier",
    "KVTier",
    "Registry",
    "RejectReason",
    "Rejection",
    "RemoteTier",
    "TierConfigError",
    "TierError",
    "TierStats",
    "TieredKVCache",
    "block_key",
    "create_tier",
    "decode_block",
    "embedded_valkey",
    "encode_block",
    "fingerprint_for",
]
