"""Which transformers models pagedkv computes exactly, and what each layer's attention needs.

pagedkv runs a model only if every layer's attention is exactly what the paged backends compute:
causal softmax attention over the layer's own K/V, optionally with a sliding window, logit
soft-capping and learned per-head sink logits. Anything else is refused with
:class:`UnsupportedModelError` naming the feature, never run with different tokens.

:func:`check_model_supported` (called by ``PagedModelRunner.__init__`` before anything is
allocated):

1. refuses by name what the config declares: MLA (``kv_lora_rank``), chunked attention
   (``attention_chunk_size``), ALiBi, encoder-decoder / cross-attention, bidirectional
   attention, cross-layer KV sharing, non-attention layer types (linear/recurrent hybrids) and
   window or chunk sizes in attributes pagedkv does not interpret;
2. probes the model with one 8-token forward through a recording attention function, with the
   config's ``sliding_window`` temporarily 3 tokens. transformers builds each layer's mask for the
   probe as it does for sdpa, so the probe *observes* which layers are windowed, including models
   that apply their window only through the mask (Qwen2-MoE, PhiMoE, Doge). Every layer must
   call attention once, with the model's keyword arguments, a causal (optionally windowed) mask,
   the cache's K/V layout and only known arguments (:func:`attention_extras`).

The per-layer result is registered per attention module for
:func:`pagedkv.integrations.hf_attention.pagedkv_attention_forward`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import torch

from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations.hf_attention import (
    LayerAttention,
    attention_extras,
    register_layer,
    resolve_window,
)

PROBE_IMPLEMENTATION = "pagedkv_probe"
PROBE_TOKENS = 8
PROBE_WINDOW = 3
_MARKER = "pagedkv_probe_marker"
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
)


@dataclass(frozen=True)
class ModelAttention:
    """What :func:`check_model_supported` found: one spec per layer, in layer order."""

    layers: tuple[LayerAttention, ...]

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


def check_model_supported(model: torch.nn.Module) -> ModelAttention:
    """Refuse (:class:`UnsupportedModelError`) a model pagedkv cannot run exactly; otherwise
    register and return each layer's attention spec (probe: one 8-token forward)."""
    cfg: Any = model.config
    check_config_supported(cfg)
    from pagedkv.integrations.hf_runner import model_kv_dims, model_sliding_window

    num_layers, kv_heads, head_dim = model_kv_dims(cfg)
    real = getattr(cfg, "sliding_window", None)
    if isinstance(real, bool) or not isinstance(real, int) or real < 1:
        real = None
    probe_window = None if real is None else min(real, PROBE_WINDOW)
    calls = run_probe(model, probe_window)
    _check_layers_called(calls, num_layers)
    specs = []
    for call in sorted(calls, key=lambda c: c.layer_idx):
        _check_call(call, kv_heads, head_dim)
        spec = LayerAttention(call.layer_idx, _mask_window(call, probe_window, real))
        kw = call.sliding_window  # the model reads it from the config at forward or at init
        if kw is not None and (spec.window is None or kw not in (probe_window, real)):
            resolve_window(spec, kw)  # raises: it disagrees with the mask
        specs.append((call.module, spec))
    found = ModelAttention(tuple(spec for _, spec in specs))
    released = model_sliding_window(cfg)  # the runner frees blocks behind this window
    if released is not None and found.uniform_window != released:
        raise UnsupportedModelError(
            f"config.sliding_window={released} but the layers' masks apply windows "
            f"{list(found.windows)}: releasing blocks behind the window would lose keys"
        )
    for module, spec in specs:
        register_layer(module, spec)
    return found


# ------------------------------------------------------------------------------------ probe
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
