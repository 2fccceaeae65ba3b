"""The one model call pagedkv makes, shared by the runner and the support probe.

Why shared: a model is supported only if the exact call the runner makes works. The probe once
called the model without ``logits_to_keep`` and so accepted ``WhisperForCausalLM``, whose every
request then failed on that argument; now both go through :func:`call_model`.
"""

from __future__ import annotations

from typing import Any

import torch


def call_model(
    model: torch.nn.Module,
    implementation: str,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    last: torch.Tensor,
    **kwargs: Any,
) -> Any:
    """Run ``model`` on one packed row with ``config._attn_implementation = implementation`` for
    the call only (no HF cache; pagedkv's attention function or the probe's holds the K/V).

    Args:
        input_ids, position_ids: int64 ``[1, T]`` (positions restart per packed sequence).
        last: int64 ``[B]``, the rows whose logits are kept (``logits_to_keep``).
        kwargs: extra model keyword arguments forwarded to attention (e.g. ``pagedkv_step``).
    Returns:
        the model's output; ``.logits`` is float ``[1, B, vocab]``.
    """
    cfg: Any = model.config
    previous = cfg._attn_implementation
    cfg._attn_implementation = implementation
    try:
        return model(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=last,
            **kwargs,
        )
    finally:
        cfg._attn_implementation = previous
