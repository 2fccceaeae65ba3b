"""Argument checks for the manager's public entry points.

Every public call validates its arguments here, once, before it changes any state, so a bad
argument raises ``InvalidArgumentError`` (naming what was expected and what came) instead of a
bare ``TypeError`` halfway through an update. Internal helpers then trust their inputs, which
keeps the hot paths free of repeated checks.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from numbers import Real
from typing import Any, TypeGuard

import numpy as np

from pagedkv.errors import InvalidArgumentError


def _got(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """A real integer: ``int`` or a numpy integer, never ``bool`` (``True`` is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value: object) -> int:
    """``value`` as an ``int`` (range checked by the caller, whose message names the bounds)."""
    if not is_int(value):
        raise InvalidArgumentError(f"{name} must be an int, got {_got(value)}")
    return int(value)


def count(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as an ``int >= minimum``; floats, strings, bools and NaN are refused."""
    if not is_int(value):
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {_got(value)}")
    n = int(value)
    if n < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {n}")
    return n


def optional_count(name: str, value: object, minimum: int = 0) -> int | None:
    return None if value is None else count(name, value, minimum)


def fraction(name: str, value: object, low: float = 0.0, high: float = 1.0) -> float:
    """A real number in ``[low, high]`` (not a bool, a string or NaN)."""
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise InvalidArgumentError(f"{name} must be a number in [{low}, {high}], got {_got(value)}")
    x = float(value)
    if not low <= x <= high:
        raise InvalidArgumentError(f"{name} must be in [{low}, {high}], got {value}")
    return x


def seq_id(value: object) -> Hashable:
    """Sequence ids key a dict: they must be hashable (a list or a dict is refused)."""
    try:
        hash(value)
    except TypeError:
        raise InvalidArgumentError(f"sequence ids must be hashable, got {_got(value)}") from None
    return value  # hash() succeeded


def seq_ids(values: object) -> list[Hashable]:
    """A batch of sequence ids (any iterable but a string) as a list."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidArgumentError(f"expected a list of sequence ids, got {_got(values)}")
    ids = list(values)  # has __iter__
    for v in ids:
        seq_id(v)
    return ids


def cache_key(name: str, value: object, kinds: tuple[type, ...]) -> Any:
    """``cache_salt`` / ``lora_id``: the root hash encodes them by ``repr``, which is stable
    across processes only for these types (a set's order follows the hash seed)."""
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
        return value
    names = " | ".join(k.__name__ for k in kinds)
    raise InvalidArgumentError(f"{name} must be {names} | None, got {_got(value)}")


def salt(value: object) -> str | bytes | None:
    return cache_key("cache_salt", value, (str, bytes))  # type: ignore[no-any-return]


def lora(value: object) -> int | str | None:
    return cache_key("lora_id", value, (int, str))  # type: ignore[no-any-return]


def priority(value: object) -> int:
    if not is_int(value):
        raise InvalidArgumentError(f"priority must be an int, got {_got(value)}")
    return int(value)


def block_hashes(values: object, num_full: int, num_tokens: int, block_size: int) -> list[Hashable]:
    """Caller-made block keys: one hashable key per full block (copied: the sequence owns
    its list)."""
    if type(values) is not list and (
        isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray))
    ):
        raise InvalidArgumentError(
            f"block_hashes must be a list of hashable keys, got {_got(values)}"
        )
    keys = list(values)
    if len(keys) != num_full:
        raise InvalidArgumentError(
            f"block_hashes has {len(keys)} entries; {num_tokens} tokens make {num_full} "
            f"full blocks of {block_size}"
        )
    try:
        hash(tuple(keys))  # hashes every key in C: one pass, no per-key Python call
    except TypeError:
        bad = next(k for k in keys if not _hashable(k))
        raise InvalidArgumentError(
            f"block_hashes entries must be hashable, got {_got(bad)}"
        ) from None
    return keys


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def only_keys(call: str, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse keyword arguments ``call`` does not take (naming them and the allowed ones)."""
    extra = sorted(set(kwargs) - set(allowed))
    if extra:
        raise InvalidArgumentError(f"{call} takes {sorted(allowed)}; got {extra}")


def instance(name: str, value: object, kind: type, *, optional: bool = False) -> Any:
    if (optional and value is None) or isinstance(value, kind):
        return value
    want = f"{kind.__name__}{' | None' if optional else ''}"
    raise InvalidArgumentError(f"{name} must be {want}, got {_got(value)}")
