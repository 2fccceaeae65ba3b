"""Argument validation shared by storage and attention: typed errors naming expected vs got.

Kept separate so every public entry point validates the same way before touching any state
(a failed call changes nothing)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pagedkv.errors import ShapeError

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


def check_kv_tensor(
    t: object,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Raise :class:`ShapeError` unless ``t`` is a tensor of exactly ``shape``/``dtype``/device."""
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ShapeError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.dtype != dtype:
        raise ShapeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if not same_device(t.device, device):
        raise ShapeError(f"{name}: expected device {device}, got {t.device}")


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` (current device) compare equal; otherwise exact match."""
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def as_index_tensor(x: IndexLike, name: str, device: torch.device) -> torch.Tensor:
    """Convert an integer index array (tensor, numpy or list) to an int64 1-D tensor on
    ``device``. Raises :class:`ShapeError` for non-integer or non-1-D input."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ShapeError(f"{name}: expected an integer dtype, got {t.dtype}")
    if t.dim() != 1:
        raise ShapeError(f"{name}: expected a 1-D index, got shape {list(t.shape)}")
    return t.to(device=device, dtype=torch.int64)
