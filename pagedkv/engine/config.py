"""``EngineConfig``: every engine option by its vLLM name, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass

from pagedkv.core import CacheConfig
from pagedkv.errors import ConfigError

DEFAULT_KV_CACHE_MEMORY = 256 << 20  # bytes of KV when neither num_blocks nor a budget is given


@dataclass
class EngineConfig:
    """Engine options.

    KV memory: ``num_blocks`` (usable blocks, the null block excluded) or ``kv_cache_memory``
    (bytes; the blocks it pays for); default 256 MiB. ``max_num_batched_tokens`` is the per-step
    token budget (decodes + prompt chunks). Without chunked prefill a prompt runs whole in one
    step, so the budget must be at least ``max_model_len`` (it is raised to that if left None).
    ``preemption_mode``: ``"recompute"`` frees a preempted sequence and recomputes it later
    (its committed prefix usually comes back from the prefix cache); ``"swap"`` copies its KV
    to ``num_host_blocks`` host blocks and back. ``scheduling_policy``: ``"fcfs"`` or
    ``"priority"`` (lower value first, then arrival). The preempted sequence is the last in
    that order unless ``preemption_policy`` names one of the manager's preemption policies
    (``lru``, ``longest``, ``newest``, ``priority`` or a registered one), which then picks among
    the sequences not yet scheduled in the step.

    ``enable_partial_block_hits``: after a prefix hit, a prompt also reuses the first tokens of
    the cached block that follows it when they are its own next tokens (their K/V rows are
    copied into the prompt's block; SGLang's radix cache reuses at token granularity too);
    off, only whole blocks are reused, as in vLLM. Not for blocks the KV tiers load.

    KV tiers (see ``docs/tiers.md``): ``kv_host_bytes`` of host memory, a ``kv_disk_path``
    folder of at most ``kv_disk_bytes``, and ``kv_remote`` (``"embedded"`` starts a local
    Valkey; or ``redis://host:port`` / ``valkey://host:port``) shared by every process that
    serves the same model. ``kv_tier_write="through"`` writes a block as soon as its KV is
    computed (others see it at once); ``"evict"`` only when the device evicts it."""

    @property
    def uses_tiers(self) -> bool:
        return bool(self.kv_host_bytes or self.kv_disk_path or self.kv_remote)

    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    preemption_mode: str = "recompute"
    preemption_policy: str | None = None
    num_host_blocks: int = 0
    eviction_policy: str = "lru"
    enable_prefix_caching: bool = True
    enable_partial_block_hits: bool = True
    scheduling_policy: str = "fcfs"
    backend: str = "auto"
    watermark: float = 0.01
    max_model_len: int | None = None
    seed: int = 0
    kv_host_bytes: int = 0
    kv_disk_path: str | None = None
    kv_disk_bytes: int = 64 << 30
    kv_remote: str | None = None
    kv_tier_write: str = "through"

    def __post_init__(self) -> None:
        def positive(name: str, value: object, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name}: expected a positive int, got {value!r}")

        positive("block_size", self.block_size)
        positive("num_blocks", self.num_blocks, allow_none=True)
        positive("kv_cache_memory", self.kv_cache_memory, allow_none=True)
        positive("max_num_seqs", self.max_num_seqs)
        positive("max_num_batched_tokens", self.max_num_batched_tokens, allow_none=True)
        positive("max_model_len", self.max_model_len, allow_none=True)
        if self.num_blocks is not None and self.kv_cache_memory is not None:
            raise ConfigError("give num_blocks or kv_cache_memory, not both")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ConfigError(
                f"preemption_mode: expected 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        if self.preemption_policy is not None:
            from pagedkv.core.preemption import PREEMPTION_POLICIES

            if self.preemption_policy not in PREEMPTION_POLICIES:
                raise ConfigError(
                    f"preemption_policy: expected one of "
                    f"{sorted(PREEMPTION_POLICIES)}, got {self.preemption_policy!r}"
                )
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ConfigError(
                f"scheduling_policy: expected 'fcfs' or 'priority', got {self.scheduling_policy!r}"
            )
        if (
            isinstance(self.num_host_blocks, bool)
            or not isinstance(self.num_host_blocks, int)
            or self.num_host_blocks < 0
        ):
            raise ConfigError(
                f"num_host_blocks: expected an int >= 0, got {self.num_host_blocks!r}"
            )
        if self.preemption_mode == "swap" and self.num_host_blocks == 0:
            raise ConfigError("preemption_mode='swap' needs num_host_blocks > 0")
        for name in ("kv_host_bytes", "kv_disk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: expected an int >= 0, got {value!r}")
        if self.kv_remote is not None:
            from pagedkv.tiers.embedded import check_kv_remote

            check_kv_remote(self.kv_remote)
        if self.kv_tier_write not in ("through", "evict"):
            raise ConfigError(
                f"kv_tier_write: expected 'through' or 'evict', got {self.kv_tier_write!r}"
            )
        for name in ("enable_prefix_caching", "enable_partial_block_hits"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if not 0.0 <= self.watermark < 1.0:
            raise ConfigError(f"watermark: expected a fraction in [0, 1), got {self.watermark}")

    def usable_blocks(self, bytes_per_block: int | None) -> int:
        """Usable KV blocks: ``num_blocks``, else as many as ``kv_cache_memory`` (default 256
        MiB) pays for at ``bytes_per_block``, at least one."""
        if self.num_blocks is not None:
            return self.num_blocks
        if not bytes_per_block:
            raise ConfigError(
                f"num_blocks is not set and the bytes a block costs are unknown "
                f"(kv_cache_memory={self.kv_cache_memory}, bytes_per_block={bytes_per_block})"
            )
        return max(1, (self.kv_cache_memory or DEFAULT_KV_CACHE_MEMORY) // bytes_per_block)

    def cache_config(self, usable_blocks: int) -> CacheConfig:
        """The block manager's config: ``usable_blocks`` plus the null block (as
        ``CacheConfig.from_memory_budget`` sizes a budget), with this engine's cache options."""
        return CacheConfig(
            block_size=self.block_size,
            num_blocks=usable_blocks + 1,
            enable_prefix_caching=self.enable_prefix_caching,
            eviction_policy=self.eviction_policy,
            num_host_blocks=self.num_host_blocks,
            watermark=self.watermark,
        )

    def watermark_blocks(self, num_usable_blocks: int) -> int:
        """Blocks admission keeps free for running sequences to grow into (the one place the
        watermark becomes a block count)."""
        return int(self.watermark * num_usable_blocks)

    def token_budget(self, max_model_len: int) -> int:
        """The per-step token budget for a model of ``max_model_len`` tokens."""
        if self.max_num_batched_tokens is None:
            return 2048 if self.enable_chunked_prefill else max(2048, max_model_len)
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < max_model_len:
            raise ConfigError(
                f"max_num_batched_tokens: expected >= max_model_len ({max_model_len}) without "
                f"chunked prefill (a prompt runs whole in one step), got "
                f"{self.max_num_batched_tokens}"
            )
        return self.max_num_batched_tokens
