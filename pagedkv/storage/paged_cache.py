"""``PagedKVCache``: block manager + storage in one object, for single users and simple loops.

Why: most users do not run a scheduler; they want "append this token's K/V to sequence s, give
me the sequence back". This object keeps the manager's metadata and the tensors in step
(executes copy-on-write copies before writes, swaps bytes when the manager swaps blocks) so the
caller never touches slots or block ids.

Shapes: ``L = num_layers``, ``H = num_kv_heads``, ``D = head_dim``.

Sliding windows (``sliding_window=``): positions whose blocks the window released have no KV any
more. Reading or writing them (``read_kv``, ``get``, ``materialize``, ``write_kv``) raises
:class:`InvalidArgumentError` naming the released positions; nothing is returned for them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from pagedkv.core import BlockManager, CacheConfig, SlidingWindow
from pagedkv.errors import InvalidArgumentError, PagedKVError, ShapeError
from pagedkv.storage._checks import check_int, check_kv_tensor, int_array
from pagedkv.storage.kv_storage import KVStorage


class PagedKVCache:
    """Many sequences' K/V for all layers in one paged pool."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        config: CacheConfig | None = None,
        block_size: int = 16,
        num_blocks: int = 256,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        sliding_window: SlidingWindow | None = None,
    ) -> None:
        """``sliding_window`` applies to every sequence this cache creates (blocks wholly behind
        the window of the first token of an append are released)."""
        if sliding_window is not None and not isinstance(sliding_window, SlidingWindow):
            raise InvalidArgumentError(
                f"sliding_window: expected a SlidingWindow or None, got "
                f"{type(sliding_window).__name__} {sliding_window!r}"
            )
        self.sliding_window = sliding_window
        if config is None:
            config = CacheConfig(
                block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=False
            )
        self.config = config
        self.manager = BlockManager(config)
        self.storage = KVStorage.from_config(
            config,
            num_layers=num_layers,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )

    # ------------------------------------------------------------- writes
    def append(
        self,
        seq_id: Hashable,
        key: torch.Tensor,
        value: torch.Tensor,
        token_ids: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Append tokens' K/V to a sequence (created on first use).

        Args:
            key, value: one token ``[L, H, D]`` or ``n`` tokens ``[L, n, H, D]``.
            token_ids: ``n`` ids; needed for prefix caching (a new sequence whose leading blocks
                are cached reuses them and only the rest is written). Without ids the sequence
                never enters the prefix cache. Blocks become findable by other sequences once
                their KV is written (``BlockManager.commit`` at the end of the call).
        Returns:
            int64 ``[n]`` slots the tokens were written to.
        """
        st = self.storage
        if isinstance(key, torch.Tensor) and key.dim() == 3:
            key, value = key[:, None], value[:, None]
        n = int(key.shape[1]) if isinstance(key, torch.Tensor) and key.dim() == 4 else -1
        shape = (st.num_layers, n, st.num_kv_heads, st.head_dim)
        check_kv_tensor(key, "key", shape, st.dtype, st.device)
        check_kv_tensor(value, "value", shape, st.dtype, st.device)
        ids = None if token_ids is None else int_array(token_ids, "token_ids", 1)
        if ids is not None and len(ids) != n:
            raise ShapeError(f"token_ids: expected {n} ids, got {len(ids)}")
        mgr = self.manager
        if seq_id not in mgr:
            if ids is None:
                hit = mgr.admit(seq_id, num_tokens=n, sliding_window=self.sliding_window)
            else:
                hit = mgr.admit(seq_id, ids, sliding_window=self.sliding_window)
            slots = mgr.slot_mapping(seq_id, 0, n)
            write_from = hit
        else:
            if token_ids is None and mgr.seq(seq_id).tokens is not None:
                raise InvalidArgumentError(
                    f"token_ids: expected {n} ids for sequence {seq_id!r} (it was created with "
                    "token ids), got None"
                )
            slots = mgr.append(seq_id, np.zeros(n, np.int64) if ids is None else ids)
            write_from = 0
        st.copy_blocks(mgr.take_copies())
        for layer in range(st.num_layers):
            st.write(layer, key[layer, write_from:], value[layer, write_from:], slots[write_from:])
        mgr.commit([seq_id])  # KV written: its full blocks may now serve prefix hits
        return slots

    def write_kv(
        self, seq_id: Hashable, layer: int, start: int, key: torch.Tensor, value: torch.Tensor
    ) -> None:
        """Overwrite one layer's K/V at existing positions ``[start, start + n)``.

        Args:
            key, value: ``[n, H, D]``. Raises if a touched block is shared with another sequence
            or cached (writing it would change their KV too).
        """
        mgr, st = self.manager, self.storage
        start = check_int(start, "start")
        end = start + (int(key.shape[0]) if isinstance(key, torch.Tensor) and key.dim() else 0)
        slots = self._live_slots(seq_id, start, end)
        blocks = np.unique(slots // st.block_size)
        if not all(mgr.is_block_writable(b) for b in blocks.tolist()):
            raise InvalidArgumentError(
                f"write_kv: expected positions [{start}, {end}) in private blocks of "
                f"{seq_id!r}, got shared or cached blocks"
            )
        st.write(layer, key, value, slots)

    # -------------------------------------------------------------- reads
    def read_kv(
        self, seq_id: Hashable, layer: int, start: int = 0, end: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's K/V at positions ``[start, end)`` as contiguous ``[n, H, D]`` each."""
        slots = self._live_slots(seq_id, start, end)
        return self.storage.gather_slots(layer, slots)

    def get(self, seq_id: Hashable, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the token at ``position`` (negative counts from the end), ``[L, H, D]`` each."""
        n = self.manager.num_tokens(seq_id)
        position = check_int(position, "position")
        if not -n <= position < n:
            raise InvalidArgumentError(f"position: expected in [{-n}, {n}), got {position}")
        k, v = self.materialize(seq_id, position % n, position % n + 1)
        return k[:, 0], v[:, 0]

    def materialize(
        self, seq_id: Hashable, start: int = 0, end: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sequence's K/V for positions ``[start, end)``, contiguous ``[L, n, H, D]`` each
        (one gather over all layers)."""
        st = self.storage
        slots = torch.from_numpy(self._live_slots(seq_id, start, end)).to(st.device)
        rows = st.slot_rows(slots)
        flat = st.kv_cache.view(st.num_layers, -1, st.num_kv_heads, st.head_dim)
        return flat.index_select(1, rows), flat.index_select(1, rows + st.block_size)

    def _live_slots(self, seq_id: Hashable, start: int, end: int | None) -> np.ndarray:
        """Slots of positions ``[start, end)``; raises if the sliding window released any."""
        start = check_int(start, "start")
        end = None if end is None else check_int(end, "end")
        slots = self.manager.slot_mapping(seq_id, start, end)
        dead = np.flatnonzero(slots < 0)
        if dead.size:
            pos = dead + start
            cuts = np.flatnonzero(np.diff(pos) != 1) + 1
            runs = ", ".join(f"[{int(r[0])}, {int(r[-1]) + 1})" for r in np.split(pos, cuts))
            raise InvalidArgumentError(
                f"positions of sequence {seq_id!r}: expected positions with KV, got {runs} "
                "released by the sliding window"
            )
        return slots

    def num_tokens(self, seq_id: Hashable) -> int:
        """Tokens stored for ``seq_id``."""
        return self.manager.num_tokens(seq_id)

    # ----------------------------------------------------------- lifecycle
    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Share the parent's blocks with a new sequence (copy-on-write on the next append)."""
        self.manager.fork(parent_id, child_id)

    def swap_out(self, seq_id: Hashable) -> None:
        """Move a sequence's blocks to the host pool (``config.num_host_blocks``)."""
        self.storage.swap_out(self.manager.swap_out(seq_id))

    def swap_in(self, seq_id: Hashable) -> None:
        """Bring a swapped-out sequence's blocks back to the device."""
        self.storage.swap_in(self.manager.swap_in(seq_id))

    def clear(self, seq_id: Hashable | None = None) -> None:
        """Free one sequence, or every sequence when ``seq_id`` is None."""
        mgr = self.manager
        for s in [seq_id] if seq_id is not None else mgr.seq_ids:
            mgr.free(s)

    def check_integrity(self) -> None:
        """Check the manager's bookkeeping and the storage tensors."""
        self.manager.check_integrity()
        self.storage.check_integrity()
        if self.manager.num_pending_copies:
            raise PagedKVError(
                f"{self.manager.num_pending_copies} copy-on-write copies were left unexecuted"
            )
