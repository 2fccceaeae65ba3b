"""Typed errors of :mod:`pagedkv.models`.

All derive from :class:`pagedkv.errors.InvalidArgumentError` (hence ``ValueError``): a model that
cannot be found or loaded is a bad ``model=`` argument from the caller's point of view, and an
engine or CLI can catch one class and print the message, which always says what to do next.
"""

from __future__ import annotations

from pagedkv.errors import InvalidArgumentError


class ModelLoadError(InvalidArgumentError):
    """A model could not be located or loaded."""


class ModelNotFoundError(ModelLoadError):
    """The model folder or ``.gguf`` file does not exist (nothing is ever downloaded)."""


class NotAModelError(ModelLoadError):
    """The path exists but is not a transformers model folder or a loadable ``.gguf`` file."""


class ModelDependencyError(ModelLoadError):
    """A package needed to load the model is not installed; the message names the install."""
