"""Hugging Face ``transformers`` attention function that reads/writes pagedkv storage.

Why ``AttentionInterface.register`` (not a ``Cache`` subclass): every decoder model in
transformers 5.x calls ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k, v,
mask, scaling=..., sliding_window=..., **kwargs)`` after RoPE, forwarding the model call's extra
keyword arguments. So a packed varlen batch (``input_ids [1, T]``) plus one ``pagedkv_step``
keyword argument is enough to run any such model over the paged cache without touching model code.
An implementation name that has no mask function registered also makes the model skip building
its 4-D causal mask (our metadata carries the masking).

Exactness: each layer's window comes from what the model's own *mask* applies (recorded per
attention module by :func:`pagedkv.integrations.hf_support.check_model_supported`), not only
from the ``sliding_window=`` argument, which some models never pass. ``softcap`` and learned
sinks (``s_aux``/``sinks``) are applied; any other unknown keyword argument, a mask passed by the
model, or a layer that does not run exactly once per forward raises
:class:`UnsupportedModelError` instead of producing different tokens.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pagedkv.attention import AttentionBackend, AttentionMetadata
from pagedkv.errors import InvalidArgumentError, ShapeError, UnsupportedModelError
from pagedkv.storage import KVStorage

ATTN_IMPLEMENTATION = "pagedkv"
STEP_KWARG = "pagedkv_step"
# Keyword arguments transformers forwards to attention that change nothing for us.
HARMLESS_KWARGS = frozenset(
    {
        "position_ids",
        "use_cache",
        "output_router_logits",
        "output_hidden_states",
        "return_dict",
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
        "cache_position",
    }
)
SINK_KWARGS = ("s_aux", "sinks")  # learned per-head sink logits (GPT-OSS style)
_HANDLED_KWARGS = frozenset({"softcap", "is_causal", "output_attentions", *SINK_KWARGS})


@dataclass
class PagedStep:
    """What one forward pass needs, passed to the model as ``pagedkv_step=...``.

    ``metadata`` describes the packed tokens (``T = metadata.num_tokens``); ``storage`` is the
    cache every layer writes its new K/V into before attending (write-then-attend).
    ``layer_calls`` (int64 ``[num_layers]``) counts the paged attention calls of each layer."""

    storage: KVStorage
    metadata: AttentionMetadata
    backend: AttentionBackend
    layer_calls: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.layer_calls = np.zeros(self.storage.num_layers, dtype=np.int64)

    def check_all_layers_ran(self) -> None:
        """Raise :class:`UnsupportedModelError` unless every layer attended exactly once."""
        bad = np.flatnonzero(self.layer_calls != 1)
        if bad.size:
            raise UnsupportedModelError(
                f"attention of layers {bad.tolist()} did not go through pagedkv (ALiBi / custom "
                f"attention?): paged attention calls per layer {self.layer_calls.tolist()}"
            )


@dataclass(frozen=True)
class LayerAttention:
    """One decoder layer's attention as pagedkv computes it.

    ``window``: keys with ``q_pos - k_pos >= window`` are masked (the window the layer's mask
    applies in eager/sdpa), or ``None`` for full causal attention."""

    layer_idx: int
    window: int | None


_LAYERS: weakref.WeakKeyDictionary[torch.nn.Module, LayerAttention] = weakref.WeakKeyDictionary()


def register_layer(module: torch.nn.Module, spec: LayerAttention) -> None:
    """Record the checked spec of an attention module (weakly: dies with the model)."""
    _LAYERS[module] = spec


def layer_attention(module: torch.nn.Module) -> LayerAttention | None:
    """The checked spec of an attention module, or ``None`` if its model was never checked."""
    return _LAYERS.get(module)


@dataclass(frozen=True)
class AttentionExtras:
    """Per-call options read from the attention function's keyword arguments."""

    softcap: float | None = None
    sink_logits: torch.Tensor | None = None  # float [num_heads]


def attention_extras(kwargs: Mapping[str, Any], num_heads: int) -> AttentionExtras:
    """Validate the keyword arguments a model passes to the attention function.

    Supported: ``softcap`` (float > 0), ``s_aux``/``sinks`` (float ``[num_heads]`` sink logits),
    ``is_causal`` (not ``False``), ``output_attentions`` (not true) and
    :data:`HARMLESS_KWARGS`. Raises :class:`UnsupportedModelError` naming anything else."""
    unknown = sorted(k for k in kwargs if k not in HARMLESS_KWARGS and k not in _HANDLED_KWARGS)
    if unknown:
        raise UnsupportedModelError(
            f"attention keyword arguments {unknown} are not implemented by pagedkv (e.g. "
            "position_bias: relative or ALiBi biases); refusing rather than ignoring them"
        )
    if kwargs.get("is_causal") is False:
        raise UnsupportedModelError("non-causal attention (is_causal=False)")
    if kwargs.get("output_attentions"):
        raise UnsupportedModelError("output_attentions=True: pagedkv returns no attention weights")
    softcap = kwargs.get("softcap")
    if softcap is not None and (
        isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap > 0
    ):
        raise UnsupportedModelError(f"attention softcap={softcap!r}: expected a float > 0")
    sinks = [kwargs[k] for k in SINK_KWARGS if kwargs.get(k) is not None]
    if len(sinks) > 1:
        raise UnsupportedModelError("both s_aux and sinks passed to attention")
    sink = sinks[0] if sinks else None
    if sink is not None and (
        not isinstance(sink, torch.Tensor)
        or not sink.is_floating_point()
        or sink.shape != (num_heads,)
    ):
        got = list(sink.shape) if isinstance(sink, torch.Tensor) else type(sink).__name__
        raise UnsupportedModelError(
            f"learned attention sinks of shape {got}: expected one float logit per head "
            f"[{num_heads}]"
        )
    return AttentionExtras(None if softcap is None else float(softcap), sink)


def resolve_window(spec: LayerAttention, kwarg: object) -> int | None:
    """The window to apply: the mask's (``spec.window``). A ``sliding_window=`` argument passed
    by the model must agree with it (else its eager/sdpa and flash-attention paths differ)."""
    if kwarg is not None and kwarg != spec.window:
        raise UnsupportedModelError(
            f"layer {spec.layer_idx}: the model passes sliding_window={kwarg!r} to attention "
            f"but its mask applies window {spec.window}"
        )
    return spec.window


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
        attention_mask: must be None (masking comes from the step metadata and the layer spec).
        sliding_window: the layer's window if the model passes one (must match its mask's).
        kwargs: must contain ``pagedkv_step`` (:class:`PagedStep`); see
            :func:`attention_extras` for the others.
    Returns:
        ``([1, T, Hq, D], None)``, contiguous.
    """
    step = kwargs.pop(STEP_KWARG, None)
    if not isinstance(step, PagedStep):
        raise InvalidArgumentError(
            f"{ATTN_IMPLEMENTATION} attention: expected a PagedStep in the "
            f"'{STEP_KWARG}' model kwarg, got {type(step).__name__}; run the model through "
            "pagedkv.integrations.PagedModelRunner"
        )
    if dropout:
        raise InvalidArgumentError(f"dropout: expected 0.0 (inference only), got {dropout}")
    if query.dim() != 4 or query.shape[0] != 1 or key.shape[0] != 1:
        raise ShapeError(
            f"query/key: expected packed batch [1, heads, T, head_dim], got {list(query.shape)} "
            f"and {list(key.shape)}"
        )
    extras = attention_extras(kwargs, query.shape[1])
    spec = _layer_spec(module, step, attention_mask)
    window = resolve_window(spec, sliding_window)
    meta, storage, layer = step.metadata, step.storage, spec.layer_idx
    k = key[0].transpose(0, 1)  # [T, Hkv, D]
    v = value[0].transpose(0, 1)
    if k.shape[1:] != (storage.num_kv_heads, storage.head_dim) or k.shape[0] != meta.num_tokens:
        raise ShapeError(
            f"key: expected [{meta.num_tokens}, {storage.num_kv_heads}, {storage.head_dim}], "
            f"got {list(k.shape)}"
        )
    if meta.max_block_id >= storage.num_blocks:
        raise InvalidArgumentError(
            f"step metadata: expected block ids < {storage.num_blocks}, got {meta.max_block_id}"
        )
    if meta.write_index is not None:
        k, v = k.index_select(0, meta.write_index), v.index_select(0, meta.write_index)
    storage.write_rows(layer, meta.kv_rows, k.to(storage.dtype), v.to(storage.dtype))
    step.layer_calls[layer] += 1
    opts: dict[str, Any] = {}  # passed only when set: backends without them fail loudly
    if extras.softcap is not None:
        opts["softcap"] = extras.softcap
    if extras.sink_logits is not None:
        opts["sink_logits"] = extras.sink_logits
    out = step.backend.forward(
        query[0].transpose(0, 1),
        storage.layer(layer),
        meta,
        scale=scaling,
        sliding_window=window,
        **opts,
    )
    # Contiguous like transformers' own attention functions: models ``.view`` it (Afmoe), and a
    # single-sequence prefill from the reference backend is a transposed view.
    return out[None].contiguous(), None


def _layer_spec(
    module: torch.nn.Module, step: PagedStep, attention_mask: torch.Tensor | None
) -> LayerAttention:
    """The module's checked spec; refuses unchecked models and model-built masks."""
    layer = getattr(module, "layer_idx", None)
    if (
        isinstance(layer, bool)
        or not isinstance(layer, int)
        or not (0 <= layer < step.storage.num_layers)
    ):
        raise InvalidArgumentError(
            f"module.layer_idx: expected an int in [0, {step.storage.num_layers}), got "
            f"{layer!r} ({type(module).__name__})"
        )
    spec = layer_attention(module)
    if spec is None or spec.layer_idx != layer:
        raise UnsupportedModelError(
            f"{type(module).__name__} (layer {layer}) was not checked by "
            "pagedkv.integrations.hf_support.check_model_supported; run the model through "
            "PagedModelRunner"
        )
    if attention_mask is not None:
        raise UnsupportedModelError(
            f"layer {layer}: the model passes its own attention mask (custom masking); pagedkv "
            "builds the mask from its step metadata"
        )
    if getattr(module, "is_causal", True) is False:
        raise UnsupportedModelError(f"layer {layer}: non-causal attention (is_causal=False)")
    return spec


def register_pagedkv_attention() -> str:
    """Register :func:`pagedkv_attention_forward` as ``"pagedkv"`` in transformers'
    ``AttentionInterface`` (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, pagedkv_attention_forward)
    return ATTN_IMPLEMENTATION
