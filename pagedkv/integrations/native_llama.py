"""A direct forward of Llama models over the paged cache, without transformers' module calls.

Why: at the batch sizes a CPU serves (a few to ~64 tokens a step) the HF path spends a large
share of each step in Python: 30 decoder layers of ``nn.Module.__call__``, keyword-argument
plumbing, mask-building checks and the attention function's per-call argument checks. This
module computes the same operations in the same order on the model's own (live) parameters, and
calls the step's paged attention backend directly.

Exactness: every operation is the one transformers' ``modeling_llama`` runs, on the same
tensors: RMSNorm in float32 then cast back (``weight * x.to(dtype)``), the model's own
``rotary_emb`` module for cos/sin (so every RoPE type it implements, scaled ones included,
gives the values the HF path gets), ``rotate_half`` RoPE, ``F.linear`` with each projection's
weight and bias, the MLP's own ``act_fn``, residual adds in the same order, and the final norm
and ``lm_head`` on the rows that sample (row-wise operations, so the same values as HF's
all-rows norm followed by ``logits_to_keep``). The tests compare greedy tokens with HF
``generate`` on several tiny Llama configurations and on the default model.

What runs here: exactly ``LlamaForCausalLM`` with its stock modules (a subclass, a replaced
module, a quantized ``Linear`` subclass or a registered hook could change the computation, so
those take the HF path): :func:`native_llama_refusal` says why a model is not eligible. The
weights are read from the modules at every step (nothing is copied or cached), so in-place
weight edits are seen as they are by the HF path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as nnf

from pagedkv.attention import AttentionMetadata
from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations.hf_attention import PagedStep

# The stock module classes of transformers' Llama: any other class in the tree takes the HF path.
_LLAMA_TYPES = {
    "model": "LlamaForCausalLM",
    "body": "LlamaModel",
    "layer": "LlamaDecoderLayer",
    "attn": "LlamaAttention",
    "mlp": "LlamaMLP",
    "norm": "LlamaRMSNorm",
    "rope": "LlamaRotaryEmbedding",
}


def _hooked(modules: Sequence[torch.nn.Module]) -> bool:
    """True if any module has a forward (pre-)hook or its own ``forward``, or torch has global
    module hooks: each may change what the module returns, which only the HF path runs."""
    glob = torch.nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks:
        return True
    # a ``forward`` set on the instance (a monkeypatch, a wrapper) replaces the class's too
    return any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in modules)


def native_llama_refusal(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot take the native path (``None``: it can). Never raises."""
    try:
        return _refusal(model)
    except Exception as exc:  # a model attribute that raises: the HF path decides
        return f"cannot inspect the model ({type(exc).__name__}: {exc})"


def _refusal(model: Any) -> str | None:
    if type(model).__name__ != _LLAMA_TYPES["model"]:
        return f"{type(model).__name__} is not LlamaForCausalLM"
    if not type(model).__module__.startswith("transformers.models.llama."):
        return f"{type(model).__module__}.{type(model).__name__} is not transformers' Llama"
    body: Any = model.model
    cfg: Any = model.config
    checks: list[tuple[Any, str]] = [(body, "body"), (body.norm, "norm"), (body.rotary_emb, "rope")]
    layers = list(body.layers)
    if len(layers) != cfg.num_hidden_layers:
        return f"{len(layers)} layers but num_hidden_layers={cfg.num_hidden_layers}"
    for layer in layers:
        checks += [(layer, "layer"), (layer.self_attn, "attn"), (layer.mlp, "mlp")]
        checks += [(layer.input_layernorm, "norm"), (layer.post_attention_layernorm, "norm")]
    for module, key in checks:
        if type(module).__name__ != _LLAMA_TYPES[key]:
            return f"{type(module).__name__} where Llama has {_LLAMA_TYPES[key]}"
    linears = [model.lm_head]
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        linears += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    for lin in linears:
        if type(lin) is not torch.nn.Linear:
            return f"{type(lin).__name__} is not a plain torch.nn.Linear"
    if type(body.embed_tokens) is not torch.nn.Embedding:
        return f"{type(body.embed_tokens).__name__} is not a plain torch.nn.Embedding"
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) != 1:
        return f"parameters of several dtypes {sorted(map(str, dtypes))}"
    return None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``: float32 statistics, cast back before the weight. ``x``: ``[T, H]``."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin``. ``x``: ``[T, H, D]``; cos/sin: ``[T, 1, D]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class AttentionPlan:
    """How one step's attention is split, decided once per step (every layer reuses it).

    A *fresh* sequence (no KV before this step: ``query_len == seq_len > 1``, a prompt without a
    prefix hit) attends only to its own new keys, so causal SDPA on the step's K/V computes it
    directly: no gather from the pool, no mask, no padding to the step's longest sequence.
    Every other sequence (decodes, prompt chunks after cached KV) goes through the step's paged
    backend as one sub-batch (``rest``: packed token index int64 ``[T_rest]`` and its metadata).
    """

    fresh: list[tuple[int, int]]  # [start, end) of each fresh sequence in the packed row
    rest: tuple[torch.Tensor, AttentionMetadata] | None

    @classmethod
    def build(cls, meta: AttentionMetadata) -> AttentionPlan | None:
        """The split for ``meta``, or ``None`` when no sequence is fresh (all paged)."""
        ql, sl = meta.query_lens, meta.seq_lens
        is_fresh = (ql == sl) & (ql > 1)
        if not is_fresh.any():
            return None
        cu = np.concatenate([[0], np.cumsum(ql)])
        fresh = [(int(cu[b]), int(cu[b + 1])) for b in np.nonzero(is_fresh)[0]]
        others = np.nonzero(~is_fresh)[0]
        if not len(others):
            return cls(fresh, None)
        tok = np.concatenate([np.arange(cu[b], cu[b + 1]) for b in others])
        sub = AttentionMetadata.build(
            block_size=meta.block_size,
            block_tables=meta.block_tables.cpu().numpy()[others],
            seq_lens=sl[others],
            query_lens=ql[others],
            slot_mapping=meta.slot_mapping.cpu().numpy()[tok],
            device=meta.device,
        )
        return cls(fresh, (torch.from_numpy(tok).to(meta.device), sub))


def step_attention(
    step: PagedStep,
    plan: AttentionPlan | None,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one layer (its K/V already written to the pool).

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]`` this step's (post-RoPE) keys and values.
    Returns:
        ``[T, Hq, D]`` in ``q.dtype``.
    """
    kv = step.storage.layer(layer)
    if plan is None:
        return step.backend.forward(q, kv, step.metadata, scale=scale)
    out = torch.empty_like(q)
    for start, end in plan.fresh:
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        o = nnf.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True
        )
        out[start:end] = o[0].transpose(0, 1)
    if plan.rest is not None:
        index, sub = plan.rest
        out[index] = step.backend.forward(q.index_select(0, index), kv, sub, scale=scale)
    return out


class NativeLlama:
    """The native forward of one ``LlamaForCausalLM`` (checked by :func:`native_llama_refusal`).

    ``usable()`` re-checks what can change after construction: hooks, training mode, and the
    module tree itself (a module swapped in later, e.g. a LoRA wrapper around a projection, is
    checked again before a step runs natively)."""

    def __init__(self, model: torch.nn.Module) -> None:
        reason = native_llama_refusal(model)
        if reason is not None:
            raise UnsupportedModelError(f"native Llama forward: {reason}")
        self.model: Any = model
        self._bind()

    def _bind(self) -> None:
        """Read the layers and their constants from the (checked) module tree."""
        model = self.model
        body: Any = self.model.model
        self.body: Any = body
        self.layers: list[Any] = list(body.layers)
        self.eps = [
            (
                float(la.input_layernorm.variance_epsilon),
                float(la.post_attention_layernorm.variance_epsilon),
            )
            for la in self.layers
        ]
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        self._modules: list[torch.nn.Module] = list(model.modules())

    @classmethod
    def maybe(cls, model: torch.nn.Module) -> NativeLlama | None:
        """The native forward of ``model``, or ``None`` when it must take the HF path."""
        return cls(model) if native_llama_refusal(model) is None else None

    def usable(self) -> bool:
        """False while the model trains (dropout), has hooks, or has a module tree that changed
        into one the native forward refuses: the HF path runs those."""
        if self.model.training or _hooked(self._modules):
            return False
        modules = list(self.model.modules())
        if len(modules) != len(self._modules) or any(
            a is not b for a, b in zip(modules, self._modules, strict=True)
        ):
            if native_llama_refusal(self.model) is not None:
                return False
            self._bind()  # the same stock classes, new objects: read them again
            return not _hooked(self._modules)
        return True

    def forward(
        self,
        step: PagedStep,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        last: torch.Tensor,
    ) -> torch.Tensor:
        """One packed step: writes every layer's K/V through ``step`` and attends.

        Args:
            input_ids, position_ids: int64 ``[1, T]`` (the packed row of ``build_paged_step``).
            last: int64 ``[B]``, the packed rows whose logits are returned.
        Returns:
            logits ``[B, vocab]`` in the model's dtype.
        """
        meta, storage = step.metadata, step.storage
        h = nnf.embedding(input_ids[0], self.body.embed_tokens.weight)
        cos, sin = self.body.rotary_emb(h[None], position_ids)
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D]
        t, d = h.shape[0], self.head_dim
        plan = AttentionPlan.build(meta)
        for i, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            eps_in, eps_post = self.eps[i]
            x = rms_norm(h, layer.input_layernorm.weight, eps_in)
            q = nnf.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(t, -1, d)
            k = nnf.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(t, -1, d)
            v = nnf.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(t, -1, d)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k, v = k.to(storage.dtype), v.to(storage.dtype)
            if meta.write_index is None:
                storage.write_rows(i, meta.kv_rows, k, v)
            else:
                w = meta.write_index
                storage.write_rows(i, meta.kv_rows, k.index_select(0, w), v.index_select(0, w))
            step.layer_calls[i] += 1
            o = step_attention(step, plan, i, q, k, v, attn.scaling)
            h = h + nnf.linear(o.reshape(t, -1), attn.o_proj.weight, attn.o_proj.bias)
            x = rms_norm(h, layer.post_attention_layernorm.weight, eps_post)
            gate = nnf.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)
            up = nnf.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
            h = h + nnf.linear(mlp.act_fn(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
        norm = self.body.norm
        x = rms_norm(h.index_select(0, last), norm.weight, float(norm.variance_epsilon))
        head = self.model.lm_head
        logits: torch.Tensor = nnf.linear(x, head.weight, head.bias)
        return logits
