"""Refusals by name: what a transformers config declares that pagedkv cannot compute exactly.

The first half of :func:`pagedkv.integrations.hf_support.check_model_supported`, run before the
model is called: MLA (``kv_lora_rank``), chunked attention (``attention_chunk_size``), ALiBi,
encoder-decoder / cross-attention, bidirectional attention, cross-layer KV sharing, Llama-4
attention temperature tuning, non-attention layer types (linear/recurrent hybrids) and window or
chunk sizes in attributes pagedkv does not interpret. Each refusal is an
:class:`UnsupportedModelError` naming the feature.
"""

from __future__ import annotations

import re
from typing import Any

from pagedkv.errors import UnsupportedModelError

# Config attributes named like a window/chunk size that the probe accounts for.
_KNOWN_WINDOW_KEYS = frozenset(
    {
        "sliding_window",
        "use_sliding_window",
        "max_window_layers",
        "sliding_window_pattern",
        "_sliding_window_pattern",
        "prefix_dense_sliding_window_pattern",
        "chunk_size_feed_forward",
    }
)
_NAMED_FEATURES = (
    ("kv_lora_rank", "multi-head latent attention (MLA, config.kv_lora_rank)"),
    ("attention_chunk_size", "chunked attention (config.attention_chunk_size)"),
    ("alibi", "ALiBi position biases (config.alibi)"),
    ("use_alibi", "ALiBi position biases (config.use_alibi)"),
    ("is_encoder_decoder", "an encoder-decoder model (cross-attention)"),
    ("add_cross_attention", "cross-attention (config.add_cross_attention)"),
    ("cross_attention_layers", "cross-attention layers (config.cross_attention_layers)"),
    ("use_bidirectional_attention", "bidirectional attention (config.use_bidirectional_attention)"),
    ("num_kv_shared_layers", "cross-layer KV sharing (config.num_kv_shared_layers)"),
    ("dual_chunk_attention_config", "dual chunk attention (config.dual_chunk_attention_config)"),
    (
        "attn_temperature_tuning",
        "Llama-4 attention temperature tuning (config.attn_temperature_tuning; transformers "
        "takes its positions from the cache length, not position_ids)",
    ),
)


def check_config_supported(cfg: Any) -> None:
    """Refuse by name what a transformers config declares (no model call)."""
    name = getattr(cfg, "model_type", None) or type(cfg).__name__

    def refuse(feature: str) -> None:
        raise UnsupportedModelError(f"{name}: {feature} is not supported by pagedkv")

    for key, feature in _NAMED_FEATURES:
        if getattr(cfg, key, None):
            refuse(feature)
    if (
        name in ("bloom", "mpt")
        or getattr(cfg, "position_embedding_type", None) == "alibi"
        or (getattr(getattr(cfg, "attn_config", None), "alibi", False))
    ):
        refuse("ALiBi position biases")
    odd = sorted(
        {
            t
            for t in getattr(cfg, "layer_types", None) or []
            if t not in ("full_attention", "sliding_attention")
        }
    )
    if odd:
        refuse(f"layer types {odd} (only full and sliding-window attention layers are)")
    for key, value in cfg.to_dict().items():
        if (
            re.search("window|chunk", key)
            and key not in _KNOWN_WINDOW_KEYS
            and value
            and not isinstance(value, dict)
        ):
            refuse(f"config.{key}={value!r} (a window or chunk size pagedkv does not apply)")
