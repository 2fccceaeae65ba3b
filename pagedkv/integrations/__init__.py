"""Integrations with model libraries (Hugging Face ``transformers``)."""

from pagedkv.integrations.hf_attention import (
    ATTN_IMPLEMENTATION,
    PagedStep,
    pagedkv_attention_forward,
    register_pagedkv_attention,
)
from pagedkv.integrations.hf_config import model_kv_dims
from pagedkv.integrations.hf_runner import PagedModelRunner

__all__ = [
    "ATTN_IMPLEMENTATION",
    "PagedModelRunner",
    "PagedStep",
    "model_kv_dims",
    "pagedkv_attention_forward",
    "register_pagedkv_attention",
]
