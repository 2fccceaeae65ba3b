"""What pagedkv reads from a transformers decoder config: the KV cache layout and the window.

Shared by the runner (sizes :class:`KVStorage`, picks the :class:`SlidingWindow` the manager may
release blocks behind), the support check (compares the probed layers against both) and the
engine (sizes the KV pool from a memory budget).
"""

from __future__ import annotations

from typing import Any


def model_kv_dims(model_config: Any) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` of a transformers decoder config."""
    layers = int(model_config.num_hidden_layers)
    heads = int(model_config.num_attention_heads)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return layers, kv_heads, int(head_dim)


def model_sliding_window(model_config: Any) -> int | None:
    """The attention window if *every* layer is sliding-window attention, else None.

    Only then may the manager release blocks behind the window: one full-attention layer (e.g.
    Qwen2's ``max_window_layers``, Gemma's alternating layers) still reads the whole sequence."""
    window = getattr(model_config, "sliding_window", None)
    if not window or getattr(model_config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(model_config, "layer_types", None)
    if layer_types is not None and any(t != "sliding_attention" for t in layer_types):
        return None
    return int(window)
