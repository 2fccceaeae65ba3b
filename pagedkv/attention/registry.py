"""Attention backend registry (mini-sglang style).

Why: the pure-torch reference runs everywhere (and is the default); ``"cpu"`` is a compiled
decode kernel for CPU (opt-in, built on first selection); a GPU kernel (FlashInfer,
Triton, FlashAttention) can be added later by registering a class under a new name without
touching callers, which look backends up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch

from pagedkv.attention.metadata import AttentionMetadata
from pagedkv.errors import InvalidArgumentError


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

_BACKENDS: dict[str, type] = {}


def register_attention_backend(*names: str) -> Callable[[B], B]:
    """Class decorator registering a backend under one or more names (first wins on conflict
    only if it is the same class; re-registering a name with another class raises)."""
    if not names:
        raise InvalidArgumentError("register_attention_backend: expected at least one name")

    def deco(cls: B) -> B:
        for n in names:
            old = _BACKENDS.get(n)
            if old is not None and old is not cls:
                raise InvalidArgumentError(
                    f"attention backend {n!r}: already registered to {old.__name__}, "
                    f"got {cls.__name__}"
                )
        for n in names:
            _BACKENDS[n] = cls
        return cls

    return deco


_INSTANCES: dict[str, AttentionBackend] = {}


def get_attention_backend(name: str = "torch") -> AttentionBackend:
    """The (cached) backend instance registered as ``name``; raises
    :class:`InvalidArgumentError` listing the available names otherwise."""
    # Import for the registration side effect: "torch"/"reference" are always present; "cpu"
    # (compiled decode kernel) is registered too but only built when instantiated.
    import pagedkv.attention.cpu_kernel
    import pagedkv.attention.reference  # noqa: F401

    if name not in _BACKENDS:
        raise InvalidArgumentError(
            f"attention backend: expected one of {sorted(_BACKENDS)}, got {name!r}"
        )
    if name not in _INSTANCES:
        _INSTANCES[name] = _BACKENDS[name]()
    return _INSTANCES[name]


def list_attention_backends() -> list[str]:
    """Names of all registered backends (``"cpu"`` is listed even if it cannot be built; see
    :func:`pagedkv.attention.cpu_kernel.kernel_available`)."""
    import pagedkv.attention.cpu_kernel
    import pagedkv.attention.reference  # noqa: F401

    return sorted(_BACKENDS)
