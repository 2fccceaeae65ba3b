"""Cache configuration: block geometry, pool size, prefix-cache and eviction options.

``num_blocks`` counts every physical block *including* the reserved null block 0, so a storage
layer allocates exactly ``num_blocks`` rows and the manager can hand out ``num_blocks - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from numbers import Real
from typing import Any

from pagedkv.core.validate import is_int
from pagedkv.errors import ConfigError

_DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "bfloat16": 2,
    "bf16": 2,
    "float8": 1,
    "fp8": 1,
    "int8": 1,
}


def _is_real(value: object) -> bool:
    """A real, non-NaN number that is not a bool."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return False
    return not math.isnan(float(value))


def dtype_nbytes(dtype: object) -> int:
    """Bytes per element for a dtype given as a name (``"float16"``), a torch dtype or an int."""
    if is_int(dtype):
        if int(dtype) <= 0:
            raise ConfigError(f"dtype bytes must be > 0, got {dtype}")
        return int(dtype)
    itemsize = getattr(dtype, "itemsize", None)  # torch.dtype and numpy dtypes carry it
    if isinstance(itemsize, int):
        return itemsize
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}; known: {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclass(frozen=True)
class CacheConfig:
    """Everything the block manager needs to know; validated on construction.

    Attributes:
        block_size: tokens per block.
        num_blocks: physical device blocks, the null block 0 included.
        enable_prefix_caching: share full blocks between sequences by chained block hash.
        hash_algo: block-hash function (``HASH_FUNCTIONS``, ``prefix_cache/hashing.py``): ``sha256``
            (default, collision-resistant), ``blake2b``, or ``xxh128`` (fast, but its public
            secret lets anyone craft colliding blocks: for trusted single-tenant use only).
        eviction_policy: name in ``pagedkv.core.prefix_cache.eviction.EVICTION_POLICIES``.
        num_host_blocks: size of the host (CPU) pool used by swap-out; 0 disables swapping.
        watermark: fraction of usable blocks that admission keeps free for decode growth.
        min_cache_tokens: prompts shorter than this are not inserted into the prefix cache by
            ``commit`` (an explicit ``register_prefix`` still inserts them).
        max_cached_blocks: cap on blocks registered in the prefix cache (None = no cap).
        cache_visibility: must be ``"commit"``: a full block becomes findable by other
            sequences only once the caller reports its KV written (``commit`` or
            ``register_prefix``). The former ``"allocate"`` mode, which made a block findable
            before its KV existed, was removed (a sequence aborted before its write left stale
            KV in the cache); naming it raises ``ConfigError``.
        pressure_thresholds: usage fractions where pressure becomes medium, high, critical.
        bytes_per_token: KV bytes per token over all layers (set by ``from_memory_budget``).
    """

    block_size: int
    num_blocks: int
    enable_prefix_caching: bool = True
    hash_algo: str = "sha256"
    eviction_policy: str = "lru"
    num_host_blocks: int = 0
    watermark: float = 0.0
    min_cache_tokens: int = 0
    max_cached_blocks: int | None = None
    cache_visibility: str = "commit"
    pressure_thresholds: tuple[float, float, float] = field(default=(0.70, 0.85, 0.95))
    bytes_per_token: int | None = None

    def __post_init__(self) -> None:
        for checks in (self._type_checks, self._value_checks):
            for ok, message in checks():
                if not ok:
                    raise ConfigError(message)

    def _type_checks(self) -> list[tuple[bool, str]]:
        """Types first, so the range checks never compare a string or a float count."""

        def got(v: object) -> str:
            return f"{v!r} ({type(v).__name__})"

        checks = [
            (is_int(getattr(self, name)), f"{name} must be an int, got {got(getattr(self, name))}")
            for name in ("block_size", "num_blocks", "num_host_blocks", "min_cache_tokens")
        ]
        checks += [
            (v is None or is_int(v), f"{name} must be an int or None, got {got(v)}")
            for name, v in (
                ("max_cached_blocks", self.max_cached_blocks),
                ("bytes_per_token", self.bytes_per_token),
            )
        ]
        checks += [
            (isinstance(v, str), f"{name} must be a str, got {got(v)}")
            for name, v in (
                ("hash_algo", self.hash_algo),
                ("eviction_policy", self.eviction_policy),
                ("cache_visibility", self.cache_visibility),
            )
        ]
        th = self.pressure_thresholds
        checks += [
            (
                isinstance(self.enable_prefix_caching, bool),
                f"enable_prefix_caching must be a bool, got {got(self.enable_prefix_caching)}",
            ),
            (_is_real(self.watermark), f"watermark must be a number, got {got(self.watermark)}"),
            (
                isinstance(th, (tuple, list)) and all(_is_real(t) for t in th),
                f"pressure_thresholds must be 3 increasing fractions in (0, 1], got {th!r}",
            ),
        ]
        return checks

    def _value_checks(self) -> list[tuple[bool, str]]:
        from pagedkv.core.prefix_cache.eviction import EVICTION_POLICIES
        from pagedkv.core.prefix_cache.hashing import HASH_FUNCTIONS

        th = self.pressure_thresholds
        return [
            (self.block_size > 0, f"block_size must be > 0, got {self.block_size}"),
            (
                self.num_blocks > 1,
                f"num_blocks must be > 1 (block 0 is the reserved null block), got "
                f"{self.num_blocks}",
            ),
            (
                self.num_host_blocks >= 0,
                f"num_host_blocks must be >= 0, got {self.num_host_blocks}",
            ),
            (0.0 <= self.watermark < 1.0, f"watermark must be in [0, 1), got {self.watermark}"),
            (
                self.min_cache_tokens >= 0,
                f"min_cache_tokens must be >= 0, got {self.min_cache_tokens}",
            ),
            (
                self.max_cached_blocks is None or self.max_cached_blocks >= 0,
                f"max_cached_blocks must be >= 0 or None, got {self.max_cached_blocks}",
            ),
            (
                self.hash_algo in HASH_FUNCTIONS,
                f"unknown hash_algo {self.hash_algo!r}; known: {sorted(HASH_FUNCTIONS)}",
            ),
            (
                self.eviction_policy in EVICTION_POLICIES,
                f"unknown eviction_policy {self.eviction_policy!r}; "
                f"known: {sorted(EVICTION_POLICIES)}",
            ),
            (
                self.cache_visibility == "commit",
                f"cache_visibility must be 'commit' (blocks become findable once their KV is "
                f"reported written; 'allocate' was removed), got {self.cache_visibility!r}",
            ),
            (
                len(th) == 3 and 0.0 < th[0] <= th[1] <= th[2] <= 1.0,
                f"pressure_thresholds must be 3 increasing fractions in (0, 1], got {th}",
            ),
            (
                self.bytes_per_token is None or self.bytes_per_token > 0,
                f"bytes_per_token must be > 0, got {self.bytes_per_token}",
            ),
        ]

    @staticmethod
    def kv_bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: object = "float16"
    ) -> int:
        """``2 (K and V) x num_layers x num_kv_heads x head_dim x dtype bytes``."""
        for name, value in (
            ("num_layers", num_layers),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
        ):
            if not is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        return 2 * num_layers * num_kv_heads * head_dim * dtype_nbytes(dtype)

    @classmethod
    def from_memory_budget(
        cls,
        budget_bytes: int,
        *,
        block_size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: object = "float16",
        **kwargs: Any,
    ) -> CacheConfig:
        """Size the pool from a KV memory budget: the budget pays for the usable blocks,
        ``num_usable_blocks = budget // bytes_per_block``, and ``num_blocks`` is one more (the
        null block 0, which only pads and never holds KV, is the one block beyond the budget).
        The engine's ``kv_cache_memory`` means the same. ``kwargs`` are the other
        ``CacheConfig`` fields; ``num_blocks`` and ``bytes_per_token`` come from the budget and
        are refused by name (``ConfigError``), as are names that are not fields."""
        cls._check_budget_kwargs(kwargs)
        if not is_int(block_size) or block_size <= 0:
            raise ConfigError(f"block_size must be > 0, got {block_size!r}")
        if not is_int(budget_bytes) or budget_bytes < 0:
            raise ConfigError(f"budget_bytes must be an int >= 0, got {budget_bytes!r}")
        per_token = cls.kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        usable = budget_bytes // (block_size * per_token)
        if usable < 1:
            raise ConfigError(
                f"budget of {budget_bytes} bytes holds {usable} blocks of "
                f"{block_size * per_token} bytes; need at least 1"
            )
        return cls(
            block_size=block_size, num_blocks=int(usable) + 1, bytes_per_token=per_token, **kwargs
        )

    @classmethod
    def _check_budget_kwargs(cls, kwargs: dict[str, Any]) -> None:
        """``from_memory_budget``'s extra fields, checked before Python would raise a bare
        ``TypeError`` (a duplicate or unknown keyword)."""
        for name in ("num_blocks", "bytes_per_token"):
            if name in kwargs:
                raise ConfigError(
                    f"from_memory_budget computes {name} from the budget; got {name}="
                    f"{kwargs[name]!r} (give CacheConfig({name}=...) to set it directly)"
                )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"from_memory_budget got unknown arguments {unknown}; CacheConfig fields are "
                f"{sorted(known - {'block_size', 'num_blocks', 'bytes_per_token'})}"
            )

    @property
    def bytes_per_block(self) -> int | None:
        return None if self.bytes_per_token is None else self.bytes_per_token * self.block_size

    @property
    def total_bytes(self) -> int | None:
        """Bytes of the whole device pool (null block included), when known."""
        per_block = self.bytes_per_block
        return None if per_block is None else per_block * self.num_blocks

    @property
    def num_usable_blocks(self) -> int:
        """Blocks the manager can hand out: ``num_blocks`` less the null block."""
        return self.num_blocks - 1
