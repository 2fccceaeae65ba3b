"""The support probe: one short forward that records every attention call of a model.

The probe runs ``PROBE_TOKENS`` tokens through the unmodified model with a recording attention
function registered as ``PROBE_IMPLEMENTATION``, and the config's ``sliding_window`` temporarily
``PROBE_WINDOW`` tokens. transformers builds each layer's mask for the probe as it does for sdpa
(always materialised), so :func:`pagedkv.integrations.hf_support.check_model_supported` reads
from the recorded calls (:class:`ProbeCall`) which layers are windowed, including models that
apply their window only through the mask (Qwen2-MoE, PhiMoE, Doge). A keyword marker passed to
the model shows which layers forward the model's keyword arguments to attention.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from pagedkv.errors import UnsupportedModelError

PROBE_IMPLEMENTATION = "pagedkv_probe"
PROBE_TOKENS = 8
PROBE_WINDOW = 3
_MARKER = "pagedkv_probe_marker"


@dataclass
class ProbeCall:
    """One attention call seen by the probe. Shapes are ``[B, heads, T, head_dim]``; ``mask`` is
    bool ``[heads or 1, T, T]`` (``True`` = attend) or ``None`` if the model passed none."""

    module: torch.nn.Module
    layer_idx: int  # -1 when the module has no int layer_idx
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # query, key, value
    mask: torch.Tensor | None
    sliding_window: object
    kwargs: dict[str, Any]
    got_marker: bool


_LOCAL = threading.local()


def _probe_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Recording attention function: returns zeros ``[B, T, Hq, Dv]``."""
    got_marker = kwargs.pop(_MARKER, None) is True
    for k in ("dropout", "scaling"):
        kwargs.pop(k, None)
    layer = getattr(module, "layer_idx", None)
    mask = None
    if attention_mask is not None:
        mask = attention_mask[0] if attention_mask.dtype == torch.bool else attention_mask[0] == 0
    if getattr(module, "is_causal", True) is False:
        kwargs["is_causal"] = False
    _LOCAL.calls.append(
        ProbeCall(
            module=module,
            layer_idx=layer if type(layer) is int else -1,
            shapes=(tuple(query.shape), tuple(key.shape), tuple(value.shape)),
            mask=mask,
            sliding_window=kwargs.pop("sliding_window", None),
            kwargs=kwargs,
            got_marker=got_marker,
        )
    )
    out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
    return out, None


def _probe_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' sdpa mask, always materialised (never skipped for ``is_causal``)."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    out: torch.Tensor | None = sdpa_mask(*args, **kwargs)
    return out


def run_probe(model: torch.nn.Module, probe_window: int | None) -> list[ProbeCall]:
    """Run one ``PROBE_TOKENS``-token forward recording every attention call, with
    ``config.sliding_window`` set to ``probe_window`` (if not None) for the call only."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PROBE_IMPLEMENTATION, _probe_attention)
    AttentionMaskInterface.register(PROBE_IMPLEMENTATION, _probe_mask)
    cfg: Any = model.config
    previous, real = cfg._attn_implementation, getattr(cfg, "sliding_window", None)
    device = next(model.parameters()).device
    ids = torch.arange(1, PROBE_TOKENS + 1, device=device) % int(getattr(cfg, "vocab_size", 2))
    calls: list[ProbeCall] = []
    _LOCAL.calls = calls
    try:
        cfg._attn_implementation = PROBE_IMPLEMENTATION
        if probe_window is not None:
            cfg.sliding_window = probe_window
        with torch.inference_mode():
            model(
                input_ids=ids[None],
                position_ids=torch.arange(PROBE_TOKENS, device=device)[None],
                use_cache=False,
                **{_MARKER: True},
            )
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(model).__name__}: probing its attention failed ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        cfg._attn_implementation = previous
        if probe_window is not None:
            cfg.sliding_window = real
        _LOCAL.calls = None
    return calls
