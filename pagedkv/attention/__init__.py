"""Paged attention: per-step metadata, a backend registry, the pure-torch reference backend and
a compiled CPU decode backend (``"cpu"``); ``"auto"`` (:func:`resolve_backend`, the engine's
default) picks the compiled one for CPU models when it builds here.

Importing the backend modules below registers them (``registry.py`` imports no backend), so
every import of ``pagedkv.attention`` or one of its modules sees the built-in backends.
"""

from pagedkv.attention.cpu_kernel import (
    CpuDecodeBackend,
    CpuKernelUnavailableError,
    kernel_available,
    resolve_backend,
)
from pagedkv.attention.metadata import AttentionMetadata
from pagedkv.attention.reference import TorchReferenceBackend, paged_attention
from pagedkv.attention.registry import (
    AttentionBackend,
    get_attention_backend,
    list_attention_backends,
    register_attention_backend,
)

__all__ = [
    "AttentionBackend",
    "AttentionMetadata",
    "CpuDecodeBackend",
    "CpuKernelUnavailableError",
    "TorchReferenceBackend",
    "get_attention_backend",
    "kernel_available",
    "list_attention_backends",
    "paged_attention",
    "register_attention_backend",
    "resolve_backend",
]
