"""Hugging Face ``transformers`` attention function that reads/writes pagedkv storage.

Why ``AttentionInterface.register`` (not a ``Cache`` subclass): every decoder model in
transformers 5.x calls ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k, v,
mask, scaling=..., sliding_window=..., **kwargs)`` after RoPE, forwarding the model call's extra
keyword arguments. So a packed varlen batch (``input_ids [1, T]``) plus one ``pagedkv_step``
keyword argument is enough to run any such model over the paged cache without touching model code.
An implementation name that has no mask function registered also makes the model skip building
its 4-D causal mask (our metadata carries the masking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pagedkv.attention import AttentionBackend, AttentionMetadata
from pagedkv.errors import InvalidArgumentError, ShapeError
from pagedkv.storage import KVStorage

ATTN_IMPLEMENTATION = "pagedkv"
STEP_KWARG = "pagedkv_step"


@dataclass
class PagedStep:
    """What one forward pass needs, passed to the model as ``pagedkv_step=...``.

    ``metadata`` describes the packed tokens (``T = metadata.num_tokens``); ``storage`` is the
    cache every layer writes its new K/V into before attending (write-then-attend)."""

    storage: KVStorage
    metadata: AttentionMetadata
    backend: AttentionBackend


def pagedkv_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Paged attention with the transformers attention-function signature.

    Args:
        module: the attention module (its ``layer_idx`` selects the cache layer).
        query: ``[1, Hq, T, D]``; key/value: ``[1, Hkv, T, D]`` (post-RoPE, packed batch).
        attention_mask: ignored (must be None: masking comes from the step metadata).
        sliding_window: the layer's window (keys with ``q_pos - k_pos >= window`` are masked).
        kwargs: must contain ``pagedkv_step`` (:class:`PagedStep`).
    Returns:
        ``([1, T, Hq, D], None)``.
    """
    step = kwargs.get(STEP_KWARG)
    if not isinstance(step, PagedStep):
        raise InvalidArgumentError(
            f"{ATTN_IMPLEMENTATION} attention: expected a PagedStep in the "
            f"'{STEP_KWARG}' model kwarg, got {type(step).__name__}; run the model through "
            "pagedkv.integrations.PagedModelRunner")
    if dropout:
        raise InvalidArgumentError(f"dropout: expected 0.0 (inference only), got {dropout}")
    if query.dim() != 4 or query.shape[0] != 1 or key.shape[0] != 1:
        raise ShapeError(
            f"query/key: expected packed batch [1, heads, T, head_dim], got {list(query.shape)} "
            f"and {list(key.shape)}")
    layer = getattr(module, "layer_idx", None)
    if not isinstance(layer, int):
        raise InvalidArgumentError(
            f"module.layer_idx: expected int, got {layer!r} ({type(module).__name__})")
    meta, storage = step.metadata, step.storage
    k = key[0].transpose(0, 1)  # [T, Hkv, D]
    v = value[0].transpose(0, 1)
    if k.shape[1:] != (storage.num_kv_heads, storage.head_dim) or k.shape[0] != meta.num_tokens:
        raise ShapeError(
            f"key: expected [{meta.num_tokens}, {storage.num_kv_heads}, {storage.head_dim}], "
            f"got {list(k.shape)}")
    if meta.write_index is not None:
        k, v = k.index_select(0, meta.write_index), v.index_select(0, meta.write_index)
    storage.write_rows(layer, meta.kv_rows, k.to(storage.dtype), v.to(storage.dtype))
    out = step.backend.forward(
        query[0].transpose(0, 1),
        storage.layer(layer),
        meta,
        scale=scaling,
        sliding_window=sliding_window,
    )
    return out[None], None


def register_pagedkv_attention() -> str:
    """Register :func:`pagedkv_attention_forward` as ``"pagedkv"`` in transformers'
    ``AttentionInterface`` (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, pagedkv_attention_forward)
    return ATTN_IMPLEMENTATION
