"""Paged attention: per-step metadata, a backend registry and the pure-torch reference backend."""

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
    "TorchReferenceBackend",
    "get_attention_backend",
    "list_attention_backends",
    "paged_attention",
    "register_attention_backend",
]
