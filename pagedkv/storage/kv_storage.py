"""Physical KV-cache tensors: one allocation, fixed addresses, updated in place.

Why one tensor for all layers: copy-on-write copies and swaps must move the same blocks in every
layer, and with a single ``[num_layers, num_blocks, ...]`` tensor each of those is one batched
``index_copy_`` instead of a Python loop over layers. Why fixed addresses: CUDA graphs and
``torch.compile`` capture data pointers, so the cache is allocated once (gpt-fast style) and every
write is an in-place scatter.

Layout (FlashInfer "NHD", K and V combined per block)::

    kv_cache: [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]
    layer(l): [num_blocks, 2, block_size, num_kv_heads, head_dim]       (contiguous view)
    key_cache(l) / value_cache(l): [num_blocks, block_size, num_kv_heads, head_dim]
                                   (strided views, the vLLM / FlashAttention form)

A *slot* is ``block_id * block_size + offset``; block 0 is the core manager's null block (kept
zero so masked-out padding reads stay finite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pagedkv.core.config import CacheConfig
from pagedkv.errors import InvalidArgumentError
from pagedkv.storage._checks import (
    SUPPORTED_DTYPES,
    as_index_tensor,
    block_pairs,
    check_budget_geometry,
    check_dtype,
    check_int,
    check_kv_tensor,
)

__all__ = ["SUPPORTED_DTYPES", "KVStorage"]


class KVStorage:
    """Per-layer paged K/V tensors plus an optional host-memory swap pool.

    The manager (``pagedkv.core.BlockManager``) owns *which* blocks a sequence uses; this class
    only moves bytes: scatter new tokens by slot, gather a token range, copy blocks (CoW), swap
    blocks to/from host memory.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        num_host_blocks: int = 0,
    ) -> None:
        num_layers = check_int(num_layers, "num_layers", 1)
        num_blocks = check_int(num_blocks, "num_blocks", 1)
        block_size = check_int(block_size, "block_size", 1)
        num_kv_heads = check_int(num_kv_heads, "num_kv_heads", 1)
        head_dim = check_int(head_dim, "head_dim", 1)
        num_host_blocks = check_int(num_host_blocks, "num_host_blocks", 0)
        dtype = check_dtype(dtype)
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        # [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]; zeros so the null
        # block (and never-written padding) is finite: 0 * NaN would poison masked attention.
        self.kv_cache = torch.zeros(
            (num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim),
            dtype=dtype,
            device=self.device,
        )
        self.num_host_blocks = num_host_blocks
        pin = torch.cuda.is_available() and self.device.type == "cuda"
        # [num_layers, num_host_blocks, 2, block_size, num_kv_heads, head_dim] on the host.
        self.host_cache = torch.zeros(
            (num_layers, num_host_blocks, 2, block_size, num_kv_heads, head_dim),
            dtype=dtype,
            device="cpu",
            pin_memory=pin,
        )
        self._data_ptr = self.kv_cache.data_ptr()

    @classmethod
    def from_config(
        cls,
        config: CacheConfig,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVStorage:
        """Size the storage from a core ``CacheConfig`` (its ``num_blocks``, ``block_size`` and
        ``num_host_blocks``), e.g. one built by ``CacheConfig.from_memory_budget``. A config
        that carries ``bytes_per_token`` (a budget's) must agree with ``dtype`` and the
        dimensions: a mismatch raises ``ConfigError`` naming both, before anything is
        allocated (an fp16 budget with fp32 storage would take twice the budget)."""
        bytes_per_token = getattr(config, "bytes_per_token", None)
        if bytes_per_token is not None:
            check_budget_geometry(bytes_per_token, num_layers, num_kv_heads, head_dim, dtype)
        return cls(
            num_layers=num_layers,
            num_blocks=config.num_blocks,
            block_size=config.block_size,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
            num_host_blocks=getattr(config, "num_host_blocks", 0),
        )

    # ------------------------------------------------------------------ views
    @property
    def num_slots(self) -> int:
        """Number of token slots (``num_blocks * block_size``)."""
        return self.num_blocks * self.block_size

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block occupies across all layers (K and V)."""
        return (
            self.num_layers * 2 * self.block_size * self.num_kv_heads * self.head_dim
        ) * self.kv_cache.element_size()

    def layer(self, layer_idx: int) -> torch.Tensor:
        """Layer ``layer_idx``'s cache, ``[num_blocks, 2, block_size, num_kv_heads, head_dim]``
        (a contiguous view: FlashInfer's NHD paged-KV layout). No copy."""
        self._check_layer(layer_idx)
        return self.kv_cache[layer_idx]

    def key_cache(self, layer_idx: int) -> torch.Tensor:
        """Keys of a layer as ``[num_blocks, block_size, num_kv_heads, head_dim]`` (strided view,
        the FlashAttention ``k_cache`` / vLLM form). No copy."""
        return self.layer(layer_idx)[:, 0]

    def value_cache(self, layer_idx: int) -> torch.Tensor:
        """Values of a layer as ``[num_blocks, block_size, num_kv_heads, head_dim]`` (strided
        view). No copy."""
        return self.layer(layer_idx)[:, 1]

    # ----------------------------------------------------------------- writes
    def write(
        self,
        layer_idx: int,
        key: torch.Tensor,
        value: torch.Tensor,
        slot_mapping: torch.Tensor | np.ndarray | Sequence[int],
    ) -> None:
        """Scatter new tokens' K/V into their slots with one ``index_copy_``.

        Args:
            key, value: ``[num_tokens, num_kv_heads, head_dim]``, storage dtype and device.
            slot_mapping: int64 ``[num_tokens]``; ``-1`` entries are skipped (padding tokens).
        """
        self._check_layer(layer_idx)
        slots = as_index_tensor(slot_mapping, "slot_mapping", self.device)
        n = int(slots.shape[0])
        check_kv_tensor(key, "key", (n, self.num_kv_heads, self.head_dim), self.dtype, self.device)
        check_kv_tensor(
            value, "value", (n, self.num_kv_heads, self.head_dim), self.dtype, self.device
        )
        if n and int(slots.max()) >= self.num_slots:
            raise InvalidArgumentError(
                f"slot_mapping: expected slots < {self.num_slots}, got max {int(slots.max())}"
            )
        if n and int(slots.min()) < -1:
            raise InvalidArgumentError(f"slot_mapping: expected >= -1, got {int(slots.min())}")
        rows = self.slot_rows(slots)
        keep = slots >= 0
        if not bool(keep.all()):
            rows, key, value = rows[keep], key[keep], value[keep]
        self.write_rows(layer_idx, torch.cat([rows, rows + self.block_size]), key, value)

    def slot_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Map slots (int64 ``[n]``) to K rows of ``layer(l).view(-1, num_kv_heads, head_dim)``
        (int64 ``[n]``); the V row of a slot is its K row ``+ block_size``."""
        bs = self.block_size
        return torch.div(slots, bs, rounding_mode="floor") * (2 * bs) + slots.remainder(bs)

    def write_rows(
        self, layer_idx: int, kv_rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> None:
        """Unchecked fast path used by attention: ``kv_rows`` int64 ``[2n]`` (K rows then V rows,
        from :meth:`slot_rows`), key/value ``[n, num_kv_heads, head_dim]``. One ``index_copy_``."""
        flat = self.kv_cache[layer_idx].view(-1, self.num_kv_heads, self.head_dim)
        flat.index_copy_(0, kv_rows, torch.cat([key, value]))

    # ------------------------------------------------------------------ reads
    def gather(
        self,
        layer_idx: int,
        block_table: torch.Tensor | np.ndarray | Sequence[int],
        start: int,
        end: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous K and V of one sequence's token positions ``[start, end)``.

        Args:
            block_table: int ``[num_logical_blocks]``, logical block -> physical block id.
        Returns:
            key, value: ``[end - start, num_kv_heads, head_dim]`` (new tensors, storage dtype).
        """
        self._check_layer(layer_idx)
        table = as_index_tensor(block_table, "block_table", self.device)
        start, end = check_int(start, "start"), check_int(end, "end")
        if not 0 <= start <= end <= int(table.shape[0]) * self.block_size:
            raise InvalidArgumentError(
                f"token range: expected 0 <= start <= end <= "
                f"{int(table.shape[0]) * self.block_size}, got [{start}, {end})"
            )
        pos = torch.arange(start, end, device=self.device)
        slots = table[pos // self.block_size] * self.block_size + pos % self.block_size
        return self.gather_slots(layer_idx, slots)

    def gather_slots(
        self, layer_idx: int, slots: torch.Tensor | np.ndarray | Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at the given slots (int64 ``[n]``, all valid) as ``[n, num_kv_heads,
        head_dim]`` each."""
        self._check_layer(layer_idx)
        idx = as_index_tensor(slots, "slots", self.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_slots):
            raise InvalidArgumentError(
                f"slots: expected values in [0, {self.num_slots}), got "
                f"[{int(idx.min())}, {int(idx.max())}]"
            )
        flat = self.kv_cache[layer_idx].view(-1, self.num_kv_heads, self.head_dim)
        rows = self.slot_rows(idx)
        return flat.index_select(0, rows), flat.index_select(0, rows + self.block_size)

    # ------------------------------------------------------- block movement
    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Execute copy-on-write copies ``(src_block, dst_block)`` in every layer at once.

        Must run before the new tokens' K/V are written (the manager's ``take_copies()``)."""
        ids = block_pairs(pairs, self.num_blocks, self.num_blocks, "copy")
        if ids is None:
            return
        src, dst = (torch.from_numpy(a).to(self.device) for a in ids)
        # index_select first, so a dst that is also a src reads the pre-copy contents.
        self.kv_cache.index_copy_(1, dst, self.kv_cache.index_select(1, src))

    def swap_out(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy ``(device_block, host_block)`` pairs to the host pool, all layers batched."""
        ids = block_pairs(pairs, self.num_blocks, self.num_host_blocks, "swap_out")
        if ids is None:
            return
        dev, host = torch.from_numpy(ids[0]).to(self.device), torch.from_numpy(ids[1])
        moved = self.kv_cache.index_select(1, dev).to("cpu", non_blocking=False)
        self.host_cache.index_copy_(1, host, moved)

    def swap_in(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Copy ``(host_block, device_block)`` pairs back from the host pool, all layers."""
        ids = block_pairs(pairs, self.num_host_blocks, self.num_blocks, "swap_in")
        if ids is None:
            return
        host, dev = torch.from_numpy(ids[0]), torch.from_numpy(ids[1]).to(self.device)
        moved = self.host_cache.index_select(1, host).to(self.device)
        self.kv_cache.index_copy_(1, dev, moved)

    def zero_(self) -> None:
        """Zero every block in place (addresses unchanged)."""
        self.kv_cache.zero_()

    def check_integrity(self) -> None:
        """Assert the cache still has its original address, shape and dtype and the null
        block is finite."""
        expected = (
            self.num_layers,
            self.num_blocks,
            2,
            self.block_size,
            self.num_kv_heads,
            self.head_dim,
        )
        assert self.kv_cache.data_ptr() == self._data_ptr, "kv_cache was reallocated"
        assert tuple(self.kv_cache.shape) == expected, f"shape {tuple(self.kv_cache.shape)}"
        assert self.kv_cache.dtype == self.dtype
        assert self.host_cache.shape[1] == self.num_host_blocks
        assert bool(torch.isfinite(self.kv_cache[:, 0]).all()), "null block is not finite"

    # ---------------------------------------------------------------- helpers
    def _check_layer(self, layer_idx: int) -> None:
        check_int(layer_idx, "layer_idx", 0, self.num_layers)
