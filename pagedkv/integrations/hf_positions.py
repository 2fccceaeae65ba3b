"""What the packed batch needs from a model's positions, and where position-dependent RoPE stops
being exact.

pagedkv runs every step's tokens of all requests as one row, each token at its own
``position_ids`` (:mod:`pagedkv.integrations.step_builder`). That computes a model exactly only
if each layer's query/key/value for a token depends on nothing but the token and its
``position_ids`` (and, through attention, on the token's own sequence):

- :func:`check_packed_positions` compares the support probe's packed row with its plain row
  (:mod:`pagedkv.integrations.hf_probe`) and refuses a model that takes positions from the cache
  length or the row index (Bart, BlenderbotSmall, MBart, Marian, Pegasus, PLBart ``ForCausalLM``)
  or mixes tokens outside attention.
- :func:`rope_position_limit` finds RoPE that transformers rescales from the *largest position in
  the whole forward* (``dynamic``, ``longrope``). In a packed batch that largest position belongs
  to whichever request is longest, so pagedkv computes such a model exactly only while every
  sequence stays within the original context, where both use their unscaled frequencies; the
  runner refuses a sequence beyond it (:func:`check_sequence_length`). This is a design choice:
  the per-request alternative would need the frequencies per token, and HF's own ``generate``
  is path-dependent past the boundary (Phi-3 drops and recomputes its cache there, dynamic RoPE
  keeps keys rotated with older frequencies).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch

from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations.hf_probe import PACKED_ROWS, Probe


@dataclass(frozen=True)
class PositionLimit:
    """Sequences longer than ``tokens`` are refused: ``feature`` is exact only up to there."""

    tokens: int
    feature: str


def _tolerance(x: torch.Tensor) -> float:
    """Allowed packed-vs-plain difference of one probe tensor (round-off only)."""
    rel = 1e-3 if x.dtype in (torch.float32, torch.float64) else 3e-2
    return rel * float(x.abs().max()) + 1e-6


def check_packed_positions(probe: Probe) -> None:
    """Refuse (:class:`UnsupportedModelError`, naming ``position_ids``) a model whose attention
    inputs in the packed probe row differ from the plain row's for the same token and position."""
    plain, packed = probe.plain, probe.packed
    if [c.module for c in plain] != [c.module for c in packed]:
        raise UnsupportedModelError(
            "a packed row of sequences (restarting position_ids) calls attention in other layers "
            "than a single sequence"
        )
    for a, b in zip(plain, packed, strict=True):
        for name, x, y in zip(("query", "key", "value"), a.qkv, b.qkv, strict=True):
            want = x.index_select(2, torch.tensor(PACKED_ROWS, device=x.device))
            if want.shape != y.shape or float((want - y).abs().max()) > _tolerance(want):
                raise UnsupportedModelError(
                    f"layer {a.layer_idx}: a token's attention {name} changes when its sequence "
                    "is packed into one row with others at the same position_ids (the model "
                    "takes positions from the cache length or the row index instead of "
                    "position_ids, or mixes tokens outside attention)"
                )


def rope_position_limit(model: torch.nn.Module) -> PositionLimit | None:
    """The longest sequence the model's rotary embeddings compute exactly in a packed batch, or
    ``None`` if they do not depend on the batch (default, linear, llama3, yarn, ...)."""
    limits: list[PositionLimit] = []
    module: Any  # transformers' rotary embedding modules: rope_type, config, original_max_seq_len
    for module in model.modules():
        rope_type: Any = getattr(module, "rope_type", None)
        if isinstance(rope_type, str):
            items: list[tuple[str | None, Any]] = [(None, rope_type)]
        elif isinstance(rope_type, dict):
            items = list(rope_type.items())
        else:
            continue
        for layer_type, kind in items:
            if not isinstance(kind, str):
                continue
            if "dynamic" in kind:
                tokens = int(module.original_max_seq_len)
                limits.append(PositionLimit(tokens, f"dynamic RoPE beyond {tokens} positions"))
            elif kind == "longrope":
                params = module.config.rope_parameters
                if layer_type is not None:
                    params = params[layer_type]
                tokens = int(params["original_max_position_embeddings"])
                limits.append(PositionLimit(tokens, f"longrope's long factors (past {tokens})"))
    return min(limits, key=lambda lim: lim.tokens) if limits else None


def check_sequence_length(seq_id: Hashable, tokens: int, limit: PositionLimit | None) -> None:
    """Refuse growing sequence ``seq_id`` to ``tokens`` tokens past ``limit`` (nothing changed)."""
    if limit is not None and tokens > limit.tokens:
        raise UnsupportedModelError(
            f"sequence {seq_id!r}: {tokens} tokens; pagedkv computes this model exactly only up "
            f"to {limit.tokens} tokens: {limit.feature} is not supported (transformers picks "
            "the RoPE frequencies from the longest position of a whole forward, which a packed "
            "batch shares between requests)"
        )
