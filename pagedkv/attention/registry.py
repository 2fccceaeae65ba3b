"""Attention backend registry (mini-sglang style).

Why: the pure-torch reference runs everywhere (and is the default); ``"cpu"`` is a compiled
decode kernel for CPU (opt-in, built on first selection); a GPU kernel (FlashInfer,
Triton, FlashAttention) can be added later by registering a class under a new name without
touching callers, which look backends up by name.

This module imports no backend (no import cycle): a backend registers itself when its module
is imported, and the package ``pagedkv/attention/__init__.py`` imports the built-in ones
(``reference``, ``cpu_kernel``), which Python runs before any ``pagedkv.attention.*`` module,
so every importer sees them registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from pagedkv.attention.metadata import AttentionMetadata
from pagedkv.errors import InvalidArgumentError
from pagedkv.registry import Registry


class AttentionBackend(Protocol):
    """What a backend implements: paged attention over one layer's cache."""

    name: str

    def forward(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        *,
        scale: float | None = None,
        sliding_window: int | None = None,
        sink_tokens: int = 0,
        softcap: float | None = None,
        sink_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention of packed queries over the paged cache.

        Args:
            query: ``[T, num_heads, head_dim]`` packed by ``metadata.cu_seqlens_q``.
            kv_cache: ``[num_blocks, 2, block_size, num_kv_heads, head_dim]`` (one layer).
            sliding_window, sink_tokens: key ``j`` is visible from position ``p`` iff
                ``j <= p`` and (``p - j < sliding_window`` or ``j < sink_tokens``).
            softcap: logit soft-capping ``softcap * tanh(logits / softcap)`` (Gemma2).
            sink_logits: float ``[num_heads]`` learned sink logit per head, an extra term of
                the softmax denominator (GPT-OSS). Callers pass ``softcap``/``sink_logits``
                only when set, so a backend without them fails loudly, never silently.
        Returns:
            ``[T, num_heads, head_dim]``, dtype of ``query``.
        """
        ...


B = TypeVar("B", bound=type)

_BACKENDS: Registry[type] = Registry("attention backend")
_INSTANCES: dict[str, AttentionBackend] = {}


def register_attention_backend(*names: str, replace: bool = False) -> Callable[[B], B]:
    """Class decorator registering a backend under one or more names, all or nothing: a taken
    name raises ``RegistryError`` (an ``InvalidArgumentError``) unless ``replace=True``, and
    then none is registered. A replaced backend is instantiated anew on its next lookup."""
    if not names:
        raise InvalidArgumentError("register_attention_backend: expected at least one name")
    for n in names:
        _BACKENDS.check_available(n, replace=replace)

    def deco(cls: B) -> B:
        for n in names:  # checked again: another backend may have taken a name meanwhile
            _BACKENDS.check_available(n, replace=replace)
        for n in names:
            _BACKENDS.register(n, cls, replace=replace)
            _INSTANCES.pop(n, None)
        return cls

    return deco


def get_attention_backend(name: str = "torch") -> AttentionBackend:
    """The (cached) backend instance registered as ``name``; raises ``UnknownNameError`` (an
    ``InvalidArgumentError``) listing the registered names otherwise. ``"torch"``/
    ``"reference"`` are always present; ``"cpu"`` (compiled decode kernel) is registered too
    but only built when instantiated."""
    cls = _BACKENDS[name]
    instance = _INSTANCES.get(name)
    if instance is None:
        instance = _INSTANCES[name] = cls()
    return instance


def list_attention_backends() -> list[str]:
    """Names of all registered backends, sorted (``"cpu"`` is listed even if it cannot be
    built; see :func:`pagedkv.attention.cpu_kernel.kernel_available`)."""
    return _BACKENDS.names()
