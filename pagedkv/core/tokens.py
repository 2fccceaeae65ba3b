"""Token-id inputs: what the manager accepts and how it stores them."""

from __future__ import annotations

from array import array
from collections.abc import Sequence as Seq

import numpy as np

from pagedkv.errors import InvalidArgumentError

TokenIds = int | Seq[int] | np.ndarray


def as_token_array(token_ids: TokenIds) -> array[int]:
    """Token ids (an int, a list or a 1-D integer array) as ``array('q')``."""
    if isinstance(token_ids, np.ndarray):
        if token_ids.ndim != 1 or token_ids.dtype.kind not in "iu":
            raise InvalidArgumentError(
                f"token ids must be a 1-D integer array, got shape {token_ids.shape} "
                f"dtype {token_ids.dtype}")
        out = array("q")
        out.frombytes(token_ids.astype(np.int64, copy=False).tobytes())
        return out
    try:
        return array("q", [token_ids] if isinstance(token_ids, int) else token_ids)
    except (TypeError, OverflowError) as exc:
        raise InvalidArgumentError(f"token ids must be int64 integers: {exc}") from None
