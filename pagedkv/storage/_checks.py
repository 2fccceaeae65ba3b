"""Argument validation shared by storage and attention: typed errors naming expected vs got.

Kept separate so every public entry point validates the same way before touching any state
(a failed call changes nothing). Arrays are checked once per call, vectorised (dtype, then one
min/max), never element by element: floats are rejected, not rounded; bools, strings, None and
objects are rejected, not coerced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pagedkv.errors import ConfigError, InvalidArgumentError, ShapeError

IndexLike = torch.Tensor | np.ndarray | Sequence[int]
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT64_MAX = int(np.iinfo(np.int64).max)


def check_int(value: object, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int; :class:`InvalidArgumentError` unless it is an integer (numpy
    integers included; bool, float, str and None are not) with ``low <= value < high``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v >= high):
        if high is None:
            want = f"{name} >= {low}"
        else:
            want = f"{name} < {high}" if low is None else f"{low} <= {name} < {high}"
        raise InvalidArgumentError(f"{name}: expected {want}, got {v}")
    return v


def check_dtype(dtype: object) -> torch.dtype:
    """``dtype`` if it is a storage dtype (``SUPPORTED_DTYPES``), else ``InvalidArgumentError``."""
    if not isinstance(dtype, torch.dtype) or dtype not in SUPPORTED_DTYPES:
        raise InvalidArgumentError(f"dtype: expected one of {SUPPORTED_DTYPES}, got {dtype}")
    return dtype


def check_budget_geometry(
    bytes_per_token: int, num_layers: object, num_kv_heads: object, head_dim: object, dtype: object
) -> None:
    """A config sized by a memory budget (``CacheConfig.from_memory_budget``) paid for
    ``bytes_per_token``; storage of another dtype or shape would allocate a different amount
    (an fp16 budget in fp32 storage: twice the budget). Raises ``ConfigError`` naming both."""
    layers, heads, dim = (
        check_int(value, name, 1)
        for value, name in (
            (num_layers, "num_layers"),
            (num_kv_heads, "num_kv_heads"),
            (head_dim, "head_dim"),
        )
    )
    elem = check_dtype(dtype).itemsize
    per_token = 2 * layers * heads * dim * elem
    if per_token != bytes_per_token:
        raise ConfigError(
            f"the config's budget was sized for {bytes_per_token} KV bytes per token, but "
            f"{dtype} storage of {layers} layers x {heads} KV heads x head_dim {dim} "
            f"takes {per_token} ({elem}-byte elements): pass the dtype and dimensions the "
            f"budget was computed with"
        )


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


def int_array(x: object, name: str, ndim: int) -> np.ndarray:
    """``x`` (list, tuple, numpy array) as an int64 numpy array of ``ndim`` dimensions.

    Raises :class:`ShapeError` for strings/None/ragged input, the wrong number of dimensions or a
    non-integer dtype (float, bool, str, object), and for unsigned values past int64 (they would
    wrap to negative ids)."""
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise ShapeError(f"{name}: expected a {ndim}-D integer array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ShapeError(
            f"{name}: expected a {ndim}-D integer array, got ragged or mixed input ({e})"
        ) from None
    if arr.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-D index, got shape {list(arr.shape)}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ShapeError(f"{name}: expected an integer dtype, got {arr.dtype}")
    if arr.dtype == np.uint64 and int(arr.max()) > _INT64_MAX:
        raise InvalidArgumentError(f"{name}: expected values <= {_INT64_MAX}, got {int(arr.max())}")
    return arr.astype(np.int64, copy=False)


def as_index_tensor(x: IndexLike, name: str, device: torch.device) -> torch.Tensor:
    """Convert an integer index array (tensor, numpy or list) to an int64 1-D tensor on
    ``device``. Raises :class:`ShapeError` for non-integer or non-1-D input, and for a tensor
    on neither the CPU nor ``device`` (a ``meta`` tensor has no values to read; another
    accelerator would be an implicit cross-device copy)."""
    if isinstance(x, torch.Tensor):
        t = x
        if t.device.type != "cpu" and not same_device(t.device, device):
            want = "cpu" if device.type == "cpu" else f"cpu or {device}"
            raise ShapeError(f"{name}: expected a tensor on {want}, got {t.device}")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ShapeError(f"{name}: expected an integer dtype, got {t.dtype}")
        if t.dtype == torch.uint64:
            raise ShapeError(f"{name}: expected a signed integer dtype, got {t.dtype}")
        if t.dim() != 1:
            raise ShapeError(f"{name}: expected a 1-D index, got shape {list(t.shape)}")
    else:
        t = torch.from_numpy(np.ascontiguousarray(int_array(x, name, 1)))
    return t.to(device=device, dtype=torch.int64)


def block_pairs(
    pairs: object, n_src: int, n_dst: int, what: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(src, dst)`` int64 block ids of ``[(src, dst), ...]`` pairs, or None when empty.

    Sources must lie in ``[0, n_src)``, destinations in ``[0, n_dst)`` and be distinct (a batched
    copy into one block twice is order-dependent). Raises :class:`ShapeError` /
    :class:`InvalidArgumentError`; one vectorised check per call."""
    if isinstance(pairs, (list, tuple, np.ndarray)) and len(pairs) == 0:
        return None
    arr = int_array(pairs, f"{what} pairs", 2)
    if arr.shape[0] == 0:
        return None
    if arr.shape[1] != 2:
        raise ShapeError(f"{what} pairs: expected shape [n, 2], got {list(arr.shape)}")
    src, dst = arr[:, 0], arr[:, 1]
    for name, ids, bound in (("source", src, n_src), ("destination", dst, n_dst)):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= bound:
            raise InvalidArgumentError(
                f"{what} {name} blocks: expected ids in [0, {bound}), got [{lo}, {hi}]"
            )
    if len(np.unique(dst)) != len(dst):
        raise InvalidArgumentError(f"{what}: expected distinct destination blocks")
    return src, dst
