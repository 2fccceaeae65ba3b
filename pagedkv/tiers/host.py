"""Host tier: an in-process LRU of encoded blocks with a byte budget.

Why in-process: it is the cheapest tier to hit (no syscalls, no copies on read) and absorbs
re-reads of blocks the device pool evicted. With CUDA present each value lives in its own pinned
(page-locked) buffer from torch's caching host allocator, so a later host->device copy can run
as DMA; values are never written after they are stored, so handing out zero-copy views is safe
even while the LRU evicts (an evicted buffer lives on until its last view is dropped).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from pagedkv.tiers.base import TIERS, LocalTier, Value


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the engine
        return False
    return bool(torch.cuda.is_available())


def _pinned_copy(value: Value) -> memoryview:
    """A read-only view of a pinned uint8 copy of ``value`` (keeps the buffer alive)."""
    import numpy as np
    import torch

    src = np.frombuffer(value, dtype=np.uint8)
    buf = torch.empty(len(src), dtype=torch.uint8, pin_memory=True).numpy()
    buf[:] = src
    view: memoryview = memoryview(buf).toreadonly()  # type: ignore[arg-type]
    return view


@TIERS.register("host")
class HostTier(LocalTier):
    """LRU of ``key -> value`` in this process, at most ``capacity_bytes`` of values.

    Args:
        capacity_bytes: budget for values (keys are not counted); values larger than it are
            dropped (counted in ``dropped_writes``).
        pin_memory: keep values in pinned buffers; default: when CUDA is available.
    """

    name = "host"

    def __init__(self, capacity_bytes: int = 4 << 30, *, pin_memory: bool | None = None) -> None:
        super().__init__(capacity_bytes)
        self.pin_memory = _cuda_available() if pin_memory is None else bool(pin_memory)
        self._lock = threading.Lock()
        self._values: OrderedDict[bytes, Value] = OrderedDict()

    def __len__(self) -> int:
        return len(self._values)

    def _contains_prefix(self, keys: Sequence[bytes]) -> int:
        with self._lock:
            for i, key in enumerate(keys):
                if key not in self._values:
                    return i
        return len(keys)

    def _get_many(self, keys: Sequence[bytes], max_bytes: int | None) -> list[Value | None]:
        out: list[Value | None] = []
        with self._lock:
            for key in keys:
                value = self._values.get(key)
                if value is not None:
                    self._values.move_to_end(key)
                out.append(value)
        return out

    def _put_many(self, items: Sequence[tuple[bytes, Value]]) -> list[int]:
        written: list[int] = []
        freed = 0
        for i, (key, value) in enumerate(items):
            if len(value) > self._capacity:
                continue
            stored = _pinned_copy(value) if self.pin_memory else value
            with self._lock:
                old = self._values.pop(key, None)
                self._used += len(stored) - (len(old) if old is not None else 0)
                self._values[key] = stored
                freed += self._evict_locked(self._used - self._capacity)
            written.append(i)
        self._count(evicted_bytes=freed)
        return written

    def _evict(self, nbytes: int) -> int:
        with self._lock:
            return self._evict_locked(nbytes)

    def _evict_locked(self, nbytes: int) -> int:
        freed = 0
        while freed < nbytes and self._values:
            _, value = self._values.popitem(last=False)
            freed += len(value)
        self._used -= freed
        return freed

    def _clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._used = 0
