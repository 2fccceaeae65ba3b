"""The support probe: two short forwards that record every attention call of a model.

The probe makes the runner's own model call (:func:`pagedkv.integrations.hf_call.call_model`:
one packed row, ``position_ids``, ``logits_to_keep``, no HF cache) with a recording attention
function registered as ``PROBE_IMPLEMENTATION`` and the config's ``sliding_window`` temporarily
``PROBE_WINDOW`` tokens, twice:

- a *plain* row of ``PROBE_TOKENS`` tokens at positions ``0..T-1``. transformers builds each
  layer's mask as it does for sdpa (always materialised), so
  :func:`pagedkv.integrations.hf_support.check_model_supported` reads from these calls
  (:class:`ProbeCall`) which layers are windowed, including models that apply their window only
  through the mask (Qwen2-MoE, PhiMoE, Doge). A keyword marker passed to the model shows which
  layers forward the model's keyword arguments to attention.
- a *packed* row: the same tokens cut in two and swapped (``PACKED_ROWS``), each token at the
  position it had in the plain row, as the runner packs requests. The recording attention returns
  zeros, so a layer's query/key/value for a token can only depend on the token and its
  ``position_ids``; :mod:`pagedkv.integrations.hf_positions` checks that they equal the plain
  row's. A model that takes positions from the cache length or the row index (Bart-style
  ``ForCausalLM`` decoders) fails that check; with ``arange`` positions alone it cannot be seen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations.hf_call import call_model

PROBE_IMPLEMENTATION = "pagedkv_probe"
PROBE_TOKENS = 8
PROBE_WINDOW = 3
_SPLIT = 3  # the packed row is plain rows [_SPLIT, T) followed by [0, _SPLIT)
PACKED_ROWS = (*range(_SPLIT, PROBE_TOKENS), *range(_SPLIT))
_MARKER = "pagedkv_probe_marker"


@dataclass
class ProbeCall:
    """One attention call seen by the probe. ``qkv`` are the query, key and value
    ``[B, heads, T, head_dim]``; ``mask`` is bool ``[heads or 1, T, T]`` (``True`` = attend) or
    ``None`` if the model passed none."""

    module: torch.nn.Module
    layer_idx: int  # -1 when the module has no int layer_idx
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None
    sliding_window: object
    kwargs: dict[str, Any]
    got_marker: bool

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the query, key and value."""
        return tuple(tuple(t.shape) for t in self.qkv)


@dataclass(frozen=True)
class Probe:
    """The calls of the plain and of the packed forward, in call order."""

    plain: list[ProbeCall]
    packed: list[ProbeCall]


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
            qkv=(query.detach().clone(), key.detach().clone(), value.detach().clone()),
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


def _record(
    model: torch.nn.Module, ids: torch.Tensor, pos: torch.Tensor, last: list[int]
) -> list[ProbeCall]:
    """One :func:`call_model` through the recording attention (ids/pos int64 ``[T]``)."""
    calls: list[ProbeCall] = []
    _LOCAL.calls = calls
    try:
        with torch.inference_mode():
            call_model(
                model,
                PROBE_IMPLEMENTATION,
                ids[None],
                pos[None],
                torch.tensor(last, device=ids.device),
                **{_MARKER: True},
            )
    finally:
        _LOCAL.calls = None
    return calls


def run_probe(model: torch.nn.Module, probe_window: int | None) -> Probe:
    """Run the plain and the packed probe forward recording every attention call, with
    ``config.sliding_window`` set to ``probe_window`` (if not None) for the calls only."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PROBE_IMPLEMENTATION, _probe_attention)
    AttentionMaskInterface.register(PROBE_IMPLEMENTATION, _probe_mask)
    cfg: Any = model.config
    real = getattr(cfg, "sliding_window", None)
    device = next(model.parameters()).device
    pos = torch.arange(PROBE_TOKENS, device=device)
    ids = (pos + 1) % int(getattr(cfg, "vocab_size", 2))
    rows = torch.tensor(PACKED_ROWS, device=device)
    try:
        if probe_window is not None:
            cfg.sliding_window = probe_window
        plain = _record(model, ids, pos, [PROBE_TOKENS - 1])
        packed = _record(model, ids[rows], rows, [PROBE_TOKENS - _SPLIT - 1, PROBE_TOKENS - 1])
    except Exception as exc:
        raise UnsupportedModelError(
            "the model call pagedkv makes (one packed row with position_ids, logits_to_keep, "
            f"use_cache=False) failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if probe_window is not None:
            cfg.sliding_window = real
    return Probe(plain, packed)
