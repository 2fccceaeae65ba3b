"""The library's exception hierarchy: every error pagedkv raises derives from :class:`PagedKVError`.

Every operation that raises leaves the object it was called on exactly as it was before the call
(no partial allocation), so a caller can catch, back off, and retry.
"""

from __future__ import annotations

from collections.abc import Hashable


class PagedKVError(Exception):
    """Base class of all pagedkv errors."""


class InvalidArgumentError(PagedKVError, ValueError):
    """An argument or configuration value is out of range or inconsistent."""


class ConfigError(InvalidArgumentError):
    """A configuration value is invalid (e.g. ``block_size <= 0``)."""


class OutOfBlocksError(PagedKVError):
    """Not enough free (or evictable) blocks to satisfy a request.

    ``requested`` and ``available`` are block counts; ``available`` already excludes blocks held
    back by the admission watermark when the failing call was an admission.
    """

    def __init__(self, requested: int, available: int, what: str = "blocks") -> None:
        self.requested = requested
        self.available = available
        super().__init__(f"out of {what}: requested {requested}, available {available}")


class UnknownSequenceError(PagedKVError, KeyError):
    """The sequence id is not known to the manager."""

    def __init__(self, seq_id: Hashable) -> None:
        self.seq_id = seq_id
        super().__init__(f"unknown sequence {seq_id!r}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateSequenceError(PagedKVError, KeyError):
    """A sequence with this id already exists."""

    def __init__(self, seq_id: Hashable) -> None:
        self.seq_id = seq_id
        super().__init__(f"sequence {seq_id!r} already exists")

    def __str__(self) -> str:
        return str(self.args[0])


class SequenceStateError(PagedKVError):
    """The operation is not valid in the sequence's current state (e.g. appending to a swapped-out
    sequence)."""


class ShapeError(InvalidArgumentError):
    """A tensor's shape, dtype or device does not match what the call expects."""


class UnsupportedModelError(PagedKVError):
    """A model uses an attention feature pagedkv cannot compute exactly (the message names it);
    the model is refused rather than run with different outputs."""


class RegistryError(InvalidArgumentError):
    """A registry refused a name: already taken (``register`` without ``replace=True``) or not
    a non-empty ``str``. See :mod:`pagedkv.registry`."""


class UnknownNameError(RegistryError, KeyError):
    """Nothing is registered under the name; the message lists the names that are."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
