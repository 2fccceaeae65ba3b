"""The tier interface (``KVTier``), per-tier statistics and the tier registry.

A tier is a content-addressed key -> bytes store: keys name one KV block (see ``format.py``), values
are self-validating encoded blocks. Tiers know nothing about KV, tensors or the engine; the
connector (``connector.py``) validates every value it reads, so a tier may lose, truncate or
corrupt values and the worst outcome is a miss.

Why a template method: every tier gets the same statistics (lookups, bytes and seconds each way,
errors) and the same fault barrier for free. Subclasses implement the ``_contains_prefix``,
``_get_many``, ``_put_many`` and ``_evict``/``_clear`` hooks; the public methods time them, count
bytes, and turn any exception into a counted, logged-once error plus a miss (reads) or a dropped
write (writes), because a cache fault must never fail a request.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from pagedkv.errors import InvalidArgumentError, PagedKVError, UnknownNameError
from pagedkv.registry import Registry

log = logging.getLogger("pagedkv.tiers")

#: What a tier stores and returns: immutable once stored. ``bytearray``/``memoryview`` let tiers
#: hand back buffers without a copy (a socket read target, a pinned host slab).
Value = bytes | bytearray | memoryview


class TierError(PagedKVError):
    """A tier cannot be created or configured (bad URL, unknown tier name, unusable folder).

    Faults at run time (store down, slow, full, corrupt values) are never raised: they are
    counted in ``TierStats.errors``/``rejected`` and answered with misses."""


class TierConfigError(TierError, InvalidArgumentError):
    """A tier argument is out of range or inconsistent."""


# URL schemes a remote (Valkey/Redis) tier accepts.
REMOTE_SCHEMES = ("redis://", "rediss://", "valkey://", "valkeys://", "unix://")


@dataclass
class TierStats:
    """Counters of one tier. ``hit_*``/``rejected`` are recorded by the connector (it validates);
    the rest by the tier's public methods. Seconds are wall time inside the tier calls."""

    lookups: int = 0  # contains_prefix calls
    lookup_keys: int = 0  # keys asked about
    hit_blocks: int = 0  # blocks loaded from this tier (validated)
    hit_tokens: int = 0
    blocks_stored: int = 0
    bytes_loaded: int = 0  # bytes read out of the tier (values found by get_many)
    bytes_stored: int = 0  # bytes written into the tier
    load_seconds: float = 0.0
    store_seconds: float = 0.0
    rejected: int = 0  # values that failed validation or were oversized (never used as KV)
    errors: int = 0  # faults: store down/slow/full, I/O errors
    dropped_writes: int = 0  # values not written (fault, over capacity, queue full)
    evicted_bytes: int = 0

    @property
    def load_gbps(self) -> float:
        """Read throughput while inside ``get_many`` (GB/s, 1e9 bytes)."""
        return self.bytes_loaded / self.load_seconds / 1e9 if self.load_seconds else 0.0

    @property
    def store_gbps(self) -> float:
        """Write throughput while inside ``put_many`` (GB/s)."""
        return self.bytes_stored / self.store_seconds / 1e9 if self.store_seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        """All counters plus the derived GB/s, for logs and metrics exporters."""
        out: dict[str, float] = dict(asdict(self))
        out["load_gbps"] = self.load_gbps
        out["store_gbps"] = self.store_gbps
        return out


def value_len(values: Sequence[Value | None]) -> int:
    """Total bytes of the non-missing values."""
    return sum(len(v) for v in values if v is not None)


class KVTier(ABC):
    """A key -> encoded-block store. Thread-safe: the connector reads on the caller's thread and
    may write from a background thread.

    Contract: ``contains_prefix`` counts *leading* keys held (a chain stops at its first miss,
    so a result never implies a hole); ``get_many`` may still return ``None`` for a key
    ``contains_prefix`` reported (evicted in between) - callers stop at the first ``None``.
    """

    name: str = "tier"

    def __init__(self) -> None:
        self.stats = TierStats()
        self._stats_lock = threading.Lock()
        self._logged: set[str] = set()

    # ------------------------------------------------------------------ public API
    def contains_prefix(self, keys: Sequence[bytes]) -> int:
        """How many leading ``keys`` the tier holds (0 on any fault)."""
        self._count(lookups=1, lookup_keys=len(keys))
        if not keys:
            return 0
        try:
            return max(0, min(len(keys), self._contains_prefix(keys)))
        except Exception as exc:  # a cache fault never reaches the caller
            self.record_error("contains_prefix", exc)
            return 0

    def get_many(self, keys: Sequence[bytes], max_bytes: int | None = None) -> list[Value | None]:
        """The values of ``keys`` (``None`` = missing or fault), in order, as stored.

        ``max_bytes``: the longest value the caller can use (the connector passes the exact
        size of its blocks). A longer value is answered ``None`` and counted in ``rejected``;
        tiers check sizes before reading (a foreign writer to a shared store could plant
        values of any size)."""
        if not keys:
            return []
        t0 = time.perf_counter()
        try:
            values = self._get_many(keys, max_bytes)
        except Exception as exc:
            self.record_error("get_many", exc)
            return [None] * len(keys)
        self._count(bytes_loaded=value_len(values), load_seconds=time.perf_counter() - t0)
        if max_bytes is not None:
            values = [self._drop_oversized(v, max_bytes) for v in values]
        return values

    def _drop_oversized(self, value: Value | None, max_bytes: int) -> Value | None:
        """``value``, or ``None`` (counted) when it is longer than ``max_bytes``."""
        if value is None or len(value) <= max_bytes:
            return value
        self.reject_oversized(len(value), max_bytes)
        return None

    def reject_oversized(self, size: int, max_bytes: int) -> None:
        """Count in ``rejected`` (and log once) a value of ``size`` > ``max_bytes`` bytes; a
        tier calls it for a value it found too long before reading it, and answers ``None``."""
        self.record_rejected()
        if "oversized" not in self._logged:
            self._logged.add("oversized")
            log.warning(
                "kv tier %s: rejected a value of %d bytes (at most %d expected)",
                self.name,
                size,
                max_bytes,
            )

    def put_many(self, items: Sequence[tuple[bytes, Value]]) -> None:
        """Store ``(key, value)`` pairs. Idempotent per key (content-addressed); never raises.

        Tiers may keep the value objects without copying: do not modify them afterwards (a
        modified value would fail validation, never be used as KV)."""
        if not items:
            return
        t0 = time.perf_counter()
        try:
            written = self._put_many(items)
        except Exception as exc:
            self.record_error("put_many", exc)
            self._count(dropped_writes=len(items))
            return
        nbytes = sum(len(items[i][1]) for i in written)
        self._count(
            bytes_stored=nbytes,
            blocks_stored=len(written),
            dropped_writes=len(items) - len(written),
            store_seconds=time.perf_counter() - t0,
        )

    def evict(self, nbytes: int) -> int:
        """Free at least ``nbytes`` (least recently used first); returns bytes freed."""
        try:
            freed = self._evict(nbytes)
        except Exception as exc:
            self.record_error("evict", exc)
            return 0
        self._count(evicted_bytes=freed)
        return freed

    def clear(self) -> None:
        """Drop every value this tier holds (for the remote tier: every key under its prefix)."""
        try:
            self._clear()
        except Exception as exc:
            self.record_error("clear", exc)

    def close(self) -> None:  # noqa: B027 - optional hook, most tiers hold no handles
        """Release connections/handles. Values of persistent tiers stay."""

    @property
    @abstractmethod
    def capacity_bytes(self) -> int | None:
        """Byte budget, or ``None`` when unbounded/unknown."""

    @property
    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes currently held (best effort for shared stores)."""

    # ------------------------------------------------------------ accounting
    def record_error(self, op: str, exc: BaseException) -> None:
        """Count a fault; log it once per (operation, exception type) until ``clear_logged``."""
        self._count(errors=1)
        tag = f"{op}:{type(exc).__name__}"
        if tag not in self._logged:
            self._logged.add(tag)
            log.warning(
                "kv tier %s: %s failed (%s: %s); answering with misses",
                self.name,
                op,
                type(exc).__name__,
                exc,
            )

    def clear_logged(self) -> None:
        """Re-arm log-once after a recovery, so the next outage is logged again."""
        self._logged.clear()

    def record_hits(self, blocks: int, tokens: int) -> None:
        """Called by the connector for validated blocks it loaded from this tier."""
        self._count(hit_blocks=blocks, hit_tokens=tokens)

    def record_rejected(self, n: int = 1) -> None:
        """Called by the connector for values that failed validation (and by ``get_many`` for
        oversized ones)."""
        self._count(rejected=n)

    def _count(self, **deltas: float) -> None:
        with self._stats_lock:
            for field, delta in deltas.items():
                setattr(self.stats, field, getattr(self.stats, field) + delta)

    # ----------------------------------------------------------------- hooks
    @abstractmethod
    def _contains_prefix(self, keys: Sequence[bytes]) -> int: ...

    @abstractmethod
    def _get_many(self, keys: Sequence[bytes], max_bytes: int | None) -> list[Value | None]:
        """Values of ``keys``. A value longer than ``max_bytes`` should not be read: answer
        ``None`` and call ``reject_oversized`` (a longer value returned is rejected anyway)."""

    @abstractmethod
    def _put_many(self, items: Sequence[tuple[bytes, Value]]) -> list[int]:
        """Write; return the indices of the items actually written."""

    @abstractmethod
    def _evict(self, nbytes: int) -> int: ...

    @abstractmethod
    def _clear(self) -> None: ...


#: Tier factories by name (``@TIERS.register("host")``; a taken name raises ``RegistryError``
#: unless ``replace=True``).
TIERS: Registry[Callable[..., KVTier]] = Registry("kv tier")


def create_tier(name: str, **kwargs: object) -> KVTier:
    """Build a registered tier: ``create_tier("disk", path="/var/cache/pkv")``. An unknown name
    raises ``TierConfigError`` listing the registered ones."""
    try:
        factory = TIERS[name]
    except UnknownNameError as exc:
        raise TierConfigError(str(exc)) from None
    return factory(**kwargs)


class LocalTier(KVTier):
    """A tier in this machine's memory or disk, holding at most ``capacity_bytes`` of values
    (the host and disk tiers): the budget is checked once here and their ``used_bytes`` is the
    running total ``_used`` they keep under their own lock."""

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__()
        if int(capacity_bytes) <= 0:
            raise TierConfigError(f"capacity_bytes: expected > 0, got {capacity_bytes}")
        self._capacity = int(capacity_bytes)
        self._used = 0

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        return self._used
