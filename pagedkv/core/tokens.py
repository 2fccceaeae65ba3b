"""Token-id inputs: what the manager accepts, how it validates them, and how it stores them.

Token ids must be integers in ``[0, 2**31)``: no real vocabulary is larger, every kernel takes
int32 ids, and bounding them keeps chosen-collision attacks on the fast ``xxh128`` block hash out
of reach of crafted out-of-range ids (see ``hashing.py``). Accepted containers: an int, a
list/tuple/range/``array`` of ints, a 1-D integer numpy array (or anything with
``__array__``, e.g. a CPU torch tensor). ``bytes``, ``str``, dicts, sets, floats, bools and
``None`` are refused: each would otherwise be silently read as something else. Validation is
one vectorised pass per call (one numpy reduction for arrays), so batch calls stay cheap.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from pagedkv.core.validate import is_int
from pagedkv.errors import InvalidArgumentError

TokenIds = int | Sequence[int] | np.ndarray
MAX_TOKEN_ID = 2**31 - 1
_bit_or = np.bitwise_or.reduce
_INT64 = np.dtype(np.int64)
_EXPECTED = (
    f"token ids must be ints in [0, {MAX_TOKEN_ID}] (the int32 range; hashed as int64) "
    f"given as an int, a list/tuple/range/array of ints or a 1-D integer numpy array"
)


def _bad(detail: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{_EXPECTED}; got {detail}")


def _check_array(arr: np.ndarray) -> None:
    """Dtype, rank and range of an id array in one reduction: every id is in ``[0, 2**31)``
    iff the bitwise OR of all of them has no bit from 31 up (a negative id sets the sign bit;
    a uint64 that would wrap around to a negative int64 sets bit 63)."""
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _bad(f"an array of shape {arr.shape} dtype {arr.dtype}")
    if int(_bit_or(arr)) >> 31:
        i = next(i for i, t in enumerate(arr.tolist()) if not 0 <= t <= MAX_TOKEN_ID)
        raise _bad(f"id {arr[i]} at index {i}")


def _check_list(ids: Sequence[Any]) -> None:
    """Element types in one pass over the distinct types, then the range."""
    types = set(map(type, ids))
    if types - {int}:
        for t in types:
            if not (issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_))):
                bad = next(x for x in ids if type(x) is t)
                raise _bad(f"{bad!r} ({t.__name__})")
    if ids:
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi > MAX_TOKEN_ID:
            raise _bad(f"id {lo if lo < 0 else hi}")


def _as_array_like(token_ids: object) -> np.ndarray | None:
    """Array inputs (numpy, ``array.array``, torch) as a numpy view, else None."""
    if isinstance(token_ids, np.ndarray):
        return token_ids
    if isinstance(token_ids, array):
        if token_ids.typecode not in "bBhHiIlLqQ":
            raise _bad(f"an array of typecode {token_ids.typecode!r}")
        return np.frombuffer(token_ids, dtype=token_ids.typecode)
    if hasattr(token_ids, "__array__") and not isinstance(token_ids, (list, tuple)):
        return np.asarray(token_ids)
    return None


def _as_list(token_ids: object) -> Sequence[Any]:
    """The ids of a non-array input as a sequence, refusing containers that would be misread."""
    if type(token_ids) in (list, tuple, range):
        return token_ids  # type: ignore[return-value]  # exact type checked
    if isinstance(token_ids, (str, bytes, bytearray, memoryview)) or not isinstance(
        token_ids, Sequence
    ):
        raise _bad(f"{type(token_ids).__name__} {token_ids!r:.60}")
    return list(token_ids)


def as_token_array(token_ids: object) -> array[int]:
    """Validated token ids as ``array('q')`` (what a sequence stores)."""
    out = array("q")
    if (
        type(token_ids) is np.ndarray
        and token_ids.dtype == _INT64
        and token_ids.ndim == 1
        and not int(_bit_or(token_ids)) >> 31
    ):  # the common case, one reduction
        out.frombytes(token_ids.tobytes())
        return out
    if is_int(token_ids):
        ids: Sequence[Any] = [int(token_ids)]
    else:
        arr = _as_array_like(token_ids)
        if arr is not None:
            _check_array(arr)
            out.frombytes(arr.astype(np.int64, copy=False).tobytes())
            return out
        ids = _as_list(token_ids)
    _check_list(ids)
    return array("q", ids)


def few_plain_tokens(token_ids: object, limit: int) -> list[int] | None:
    """``token_ids`` itself if it is a ``list`` of at most ``limit`` plain ``int``s in range,
    else None (then validate with ``as_token_array``): the per-call decode path, checked with
    int comparisons only. Anything else, valid or not, takes the general path."""
    if type(token_ids) is not list or len(token_ids) > limit:
        return None
    for t in token_ids:
        if type(t) is not int or not 0 <= t <= MAX_TOKEN_ID:
            return None
    return token_ids


def batch_token_list(token_ids: object, batch: int) -> list[int]:
    """One validated token id per sequence of a batch (``append_batch``), as Python ints."""
    if (
        type(token_ids) is np.ndarray
        and token_ids.ndim == 1
        and token_ids.dtype.kind in "iu"
        and not int(_bit_or(token_ids)) >> 31
        and len(token_ids) == batch
    ):
        return token_ids.tolist()  # type: ignore[no-any-return]  # the decode hot path
    arr = _as_array_like(token_ids)
    if arr is not None:
        _check_array(arr)
        toks: list[int] = arr.tolist()
    else:
        ids = _as_list(token_ids)
        _check_list(ids)
        toks = [int(t) for t in ids] if type(ids) is not list else ids
    if len(toks) != batch:
        raise InvalidArgumentError(f"{batch} sequences but {len(toks)} token ids")
    return toks
