"""Which transformers models pagedkv computes exactly, and what each layer's attention needs.

pagedkv runs a model only if every layer's attention is exactly what the paged backends compute:
causal softmax attention over the layer's own K/V, optionally with a sliding window, logit
soft-capping and learned per-head sink logits. Anything else is refused with
:class:`UnsupportedModelError` naming the feature, never run with different tokens.

:func:`check_model_supported` (called by ``PagedModelRunner.__init__`` before anything is
allocated, unless the caller passes the result it already has, as ``LLMEngine`` does: the probe
costs two forwards, so it runs once per runner):

1. refuses by name what the config declares (:mod:`pagedkv.integrations.hf_refusals`): MLA
   (``kv_lora_rank``), chunked attention (``attention_chunk_size``), ALiBi, encoder-decoder /
   cross-attention, bidirectional attention, cross-layer KV sharing, Llama-4 temperature tuning,
   non-attention layer types (linear/recurrent hybrids) and window or chunk sizes in attributes
   pagedkv does not interpret;
2. probes the model (:mod:`pagedkv.integrations.hf_probe`) with the runner's own model call
   through a recording attention function, with the config's ``sliding_window`` temporarily 3
   tokens: once as a plain 8-token row, once packed as two sequences. transformers builds each
   layer's mask for the plain row as it does for sdpa, so the probe *observes* which layers are
   windowed, including models that apply their window only through the mask (Qwen2-MoE, PhiMoE,
   Doge). Every layer must call attention once, with the model's keyword arguments, a causal
   (optionally windowed) mask, the cache's K/V layout and only known arguments
   (:func:`attention_extras`); the functions below check the recorded calls, and
   :mod:`pagedkv.integrations.hf_positions` checks that packing changes no token's attention
   inputs and finds RoPE that is exact only up to a sequence length.

Every config read happens inside this one guarded check: whatever a model or its config raises
becomes an :class:`UnsupportedModelError` that starts with the model's class name, and the
runner takes the cache layout, vocabulary and window from the returned :class:`ModelAttention`.

The per-layer result is registered per attention module for
:func:`pagedkv.integrations.hf_attention.pagedkv_attention_forward`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from pagedkv.errors import PagedKVError, UnsupportedModelError
from pagedkv.integrations.hf_attention import (
    LayerAttention,
    attention_extras,
    register_layer,
    resolve_window,
)
from pagedkv.integrations.hf_config import model_kv_dims, model_sliding_window
from pagedkv.integrations.hf_positions import (
    PositionLimit,
    check_packed_positions,
    rope_position_limit,
)
from pagedkv.integrations.hf_probe import PROBE_TOKENS, PROBE_WINDOW, ProbeCall, run_probe
from pagedkv.integrations.hf_refusals import check_config_supported


@dataclass(frozen=True)
class ModelAttention:
    """What :func:`check_model_supported` found: one spec per layer, in layer order, and the
    facts the runner reads from the config (read once, inside the guarded check)."""

    layers: tuple[LayerAttention, ...]
    kv_dims: tuple[int, int, int]  # (num_layers, num_kv_heads, head_dim) of the cache
    vocab_size: int  # token ids are checked against it
    released_window: int | None  # the manager may free blocks behind it (every layer slides)
    position_limit: PositionLimit | None  # longest exact sequence (batch-dependent RoPE)
    checked: weakref.ReferenceType[torch.nn.Module] = field(repr=False, compare=False)

    def is_for(self, model: torch.nn.Module) -> bool:
        """Whether this is the result of checking ``model`` itself (not another model)."""
        return self.checked() is model

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Each layer's window (``None`` = full attention)."""
        return tuple(layer.window for layer in self.layers)

    @property
    def uniform_window(self) -> int | None:
        """The window if every layer has the same one (only then may blocks behind it be
        released), else ``None``."""
        ws = set(self.windows)
        return next(iter(ws)) if len(ws) == 1 else None


def check_model_supported(model: torch.nn.Module) -> ModelAttention:
    """Refuse (:class:`UnsupportedModelError`, message starting with the model's class name) a
    model pagedkv cannot run exactly; otherwise register and return each layer's attention spec
    (probe: two 8-token forwards). Any error reading the config or calling the model is turned
    into that refusal: nothing untyped escapes, and nothing is registered on a refusal."""
    name = type(model).__name__
    try:
        return _check_model(model)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{name}: {exc}") from exc
    except PagedKVError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"{name}: its config does not describe a decoder pagedkv can lay out "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _check_model(model: torch.nn.Module) -> ModelAttention:
    cfg: Any = model.config
    check_config_supported(cfg)
    real = getattr(cfg, "sliding_window", None)
    if isinstance(real, bool) or not isinstance(real, int) or real < 1:
        real = None
    probe_window = None if real is None else min(real, PROBE_WINDOW)
    probe = run_probe(model, probe_window)
    if not probe.plain:
        raise UnsupportedModelError(
            "no layer calls transformers' attention interface (a recurrent or linear model?)"
        )
    num_layers, kv_heads, head_dim = model_kv_dims(cfg)
    _check_layers_called(probe.plain, num_layers)
    specs = []
    for call in sorted(probe.plain, key=lambda c: c.layer_idx):
        _check_call(call, kv_heads, head_dim)
        spec = LayerAttention(call.layer_idx, _mask_window(call, probe_window, real))
        kw = call.sliding_window  # the model reads it from the config at forward or at init
        if kw is not None and (spec.window is None or kw not in (probe_window, real)):
            resolve_window(spec, kw)  # raises: it disagrees with the mask
        specs.append((call.module, spec))
    check_packed_positions(probe)
    released = model_sliding_window(cfg)  # the runner frees blocks behind this window
    found = ModelAttention(
        layers=tuple(spec for _, spec in specs),
        kv_dims=(num_layers, kv_heads, head_dim),
        vocab_size=int(cfg.vocab_size),
        released_window=released,
        position_limit=rope_position_limit(model),
        checked=weakref.ref(model),
    )
    if released is not None and found.uniform_window != released:
        raise UnsupportedModelError(
            f"config.sliding_window={released} but the layers' masks apply windows "
            f"{list(found.windows)}: releasing blocks behind the window would lose keys"
        )
    for module, spec in specs:
        register_layer(module, spec)
    return found


def _check_layers_called(calls: list[ProbeCall], num_layers: int) -> None:
    counts = [0] * num_layers
    for c in calls:
        if not 0 <= c.layer_idx < num_layers:
            raise UnsupportedModelError(
                f"{type(c.module).__name__}: attention module without a layer_idx in "
                f"[0, {num_layers})"
            )
        counts[c.layer_idx] += 1
    missing = [i for i, n in enumerate(counts) if n == 0]
    if missing:
        raise UnsupportedModelError(
            f"attention of layers {missing} does not go through transformers' attention "
            "interface (ALiBi, recurrent/linear layers or a custom attention class?)"
        )
    repeated = [i for i, n in enumerate(counts) if n > 1]
    if repeated:
        raise UnsupportedModelError(f"layers {repeated} call attention more than once")
    dropped = [c.layer_idx for c in calls if not c.got_marker]
    if dropped:
        raise UnsupportedModelError(
            f"layers {sorted(dropped)} do not forward the model's keyword arguments to "
            "attention, so pagedkv cannot pass them its step"
        )


def _check_call(call: ProbeCall, kv_heads: int, head_dim: int) -> None:
    (_, hq, _, dq), (_, hk, _, dk), (_, hv, _, dv) = call.shapes
    if hk != kv_heads or hv != kv_heads or hq % kv_heads or (dq, dk, dv) != (head_dim,) * 3:
        raise UnsupportedModelError(
            f"layer {call.layer_idx}: query/key/value heads ({hq}, {hk}, {hv}) and head dims "
            f"({dq}, {dk}, {dv}) do not match the cache layout ({kv_heads} KV heads of "
            f"{head_dim})"
        )
    attention_extras(call.kwargs, hq)


def _mask_window(call: ProbeCall, probe_window: int | None, real: int | None) -> int | None:
    """The real window behind a layer's observed probe mask; refuses any other pattern."""
    m = call.mask
    if m is None or m.shape[-2:] != (PROBE_TOKENS, PROBE_TOKENS):
        raise UnsupportedModelError(
            f"layer {call.layer_idx}: no [T, T] attention mask from transformers' masking "
            "utilities (the model masks attention its own way)"
        )
    pos = torch.arange(PROBE_TOKENS, device=m.device)
    dist = pos[:, None] - pos[None, :]  # [T, T] query position - key position
    if bool((m == (dist >= 0)).all()):
        return None
    for w in range(1, PROBE_TOKENS):
        if bool((m == ((dist >= 0) & (dist < w))).all()):
            if w == probe_window:
                return real
            raise UnsupportedModelError(
                f"layer {call.layer_idx}: a {w}-token attention window that does not come "
                "from config.sliding_window"
            )
    raise UnsupportedModelError(
        f"layer {call.layer_idx}: attention mask is neither causal nor a causal sliding window "
        "(chunked, bidirectional or custom masking)"
    )
