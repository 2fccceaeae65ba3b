"""A direct forward of Llama models over the paged cache, without transformers' module calls.

Why: at the batch sizes a CPU serves (a few to ~64 tokens a step) the HF path spends a large
share of each step in Python: 30 decoder layers of ``nn.Module.__call__``, keyword-argument
plumbing, mask-building checks and the attention function's per-call argument checks. This
module computes the same operations in the same order on the model's own (live) parameters, and
calls the step's paged attention backend directly.

Exactness: every operation is the one transformers' ``modeling_llama`` runs, in the same
order: RMSNorm in float32 then cast back (``weight * x.to(dtype)``), the model's own
``rotary_emb`` module for cos/sin (so every RoPE type it implements, scaled ones included,
gives the values the HF path gets), ``rotate_half`` RoPE (on q and k at once), each
projection's weight and bias, the MLP's own ``act_fn``, residual adds in the same order, and
the final norm and ``lm_head`` on the rows that sample (row-wise operations, so the same values
as HF's all-rows norm followed by ``logits_to_keep``). For the same reason the last layer, on a
step with prompt rows and the compiled CPU backend, runs past its K/V write for each sequence's
last row only (:class:`~pagedkv.integrations.native_attention.LastRows`): the other rows'
outputs would reach nothing, and their K/V are written as before. The projections run as
packed GEMMs (:mod:`pagedkv.integrations.packed_linear`: q/k/v as one, gate/up as one; in
float32 with the compiled CPU kernel on AVX-512 its panel GEMM, else oneDNN's blocked layout):
the same dot products summed in another order, so float32 logits differ from ``F.linear``'s by
rounding only (~1e-6). With the compiled CPU kernel (backend ``"cpu"``, what ``"auto"`` picks
on a CPU), prompt rows attend through its prefill kernel and RMSNorm (with the residual add
before it), RoPE and SiLU-and-multiply run as fused row passes (:mod:`pagedkv.integrations.
fused_rows`; with panels the last is the gate/up GEMM's epilogue, the same bits): again the
same operations up to float32 rounding. The tests compare greedy tokens with HF ``generate`` on
several tiny Llama configurations and on the default model, with and without the kernel.

What runs here: exactly ``LlamaForCausalLM`` with its stock modules (a subclass, a replaced
module, a quantized ``Linear`` subclass or a registered hook could change the computation, so
those take the HF path): :func:`native_llama_refusal`
(:mod:`~pagedkv.integrations.native_eligibility`) says why a model is not eligible. The
packs are checked against the modules' weights before every step and packed again when one was
replaced or written in place (see :mod:`~pagedkv.integrations.packed_linear` for the one edit it
cannot see: writes through ``.data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as nnf

from pagedkv.attention.cpu_kernel import prefill_supported
from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations import fused_rows
from pagedkv.integrations.hf_attention import PagedStep
from pagedkv.integrations.native_attention import (
    AttentionPlan,
    LastRows,
    last_rows_attention,
    step_attention,
)
from pagedkv.integrations.native_eligibility import hooked, is_silu, native_llama_refusal
from pagedkv.integrations.packed_linear import GateUpLinear, PackedLinear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``: float32 statistics, cast back before the weight. ``x``: ``[T, H]``."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated (``[..., D]``), for :func:`apply_rope`."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` as ``x * cos + roll(x, D/2) * signed_sin(sin)``: the
    same products (``-x2 * s1`` is ``x2 * -s1`` exactly), one copy instead of a negation and a
    concatenation. ``x``: ``[T, H, D]``; cos/sin_signed: ``[T, 1, D]``."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


@dataclass
class LayerPacks:
    """One decoder layer's projections as packed GEMMs (see :class:`PackedLinear`)."""

    qkv: PackedLinear  # q_proj | k_proj | v_proj
    o: PackedLinear
    gate_up: GateUpLinear  # gate_proj | up_proj (and their SiLU-and-multiply)
    down: PackedLinear

    @classmethod
    def of(cls, layer: Any, pack: bool, compiled: bool) -> LayerPacks:
        a, m = layer.self_attn, layer.mlp
        kw = {"pack": pack, "compiled": compiled}
        return cls(
            PackedLinear([a.q_proj, a.k_proj, a.v_proj], **kw),
            PackedLinear([a.o_proj], **kw),
            GateUpLinear(m.gate_proj, m.up_proj, **kw),
            PackedLinear([m.down_proj], **kw),
        )

    def all(self) -> tuple[PackedLinear, ...]:
        return (self.qkv, self.o, self.gate_up, self.down)


class NativeLlama:
    """The native forward of one ``LlamaForCausalLM`` (checked by :func:`native_llama_refusal`).

    ``usable()`` re-checks what can change after construction: hooks, training mode, and the
    module tree itself (a module swapped in later, e.g. a LoRA wrapper around a projection, is
    checked again before a step runs natively). ``pack=False`` runs the fused projections
    through ``F.linear`` instead of a packed layout; ``compiled=True`` (the runner's attention
    backend is the compiled CPU kernel) lets float32 projections use the kernel's panel GEMM."""

    def __init__(
        self, model: torch.nn.Module, *, pack: bool = True, compiled: bool = False
    ) -> None:
        reason = native_llama_refusal(model)
        if reason is not None:
            raise UnsupportedModelError(f"native Llama forward: {reason}")
        self.model: Any = model
        self.pack = pack
        self.compiled = compiled
        self._bind()

    def _bind(self) -> None:
        """Read the layers, their constants and their packed projections from the (checked)
        module tree."""
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
        cfg = model.config
        # (intermediate size, head size, q + k heads): what the fused row ops must take
        self.sizes = (
            int(cfg.intermediate_size),
            self.head_dim,
            int(cfg.num_attention_heads) + int(cfg.num_key_value_heads),
        )
        self.silu = all(is_silu(la.mlp.act_fn) for la in self.layers)
        self.packs = [LayerPacks.of(la, self.pack, self.compiled) for la in self.layers]
        self.head = PackedLinear([model.lm_head], pack=self.pack, compiled=self.compiled)
        self._all_packs = [p for lp in self.packs for p in lp.all()] + [self.head]
        self._modules: list[torch.nn.Module] = list(model.modules())

    @classmethod
    def maybe(
        cls, model: torch.nn.Module, *, pack: bool = True, compiled: bool = False
    ) -> NativeLlama | None:
        """The native forward of ``model``, or ``None`` when it must take the HF path."""
        if native_llama_refusal(model) is not None:
            return None
        return cls(model, pack=pack, compiled=compiled)

    @property
    def packed_bytes(self) -> int:
        """Bytes the packed projections hold beyond the model's own weights."""
        return sum(p.nbytes for p in self._all_packs)

    def usable(self) -> bool:
        """False while the model trains (dropout), has hooks, or has a module tree that changed
        into one the native forward refuses: the HF path runs those."""
        if self.model.training or hooked(self._modules):
            return False
        modules = list(self.model.modules())
        if len(modules) != len(self._modules) or any(
            a is not b for a, b in zip(modules, self._modules, strict=True)
        ):
            if native_llama_refusal(self.model) is not None:
                return False
            self._bind()  # the same stock classes, new objects: read them again
            return not hooked(self._modules)
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
        for pack in self._all_packs:
            pack.refresh()  # a weight written or replaced since it was packed
        meta, storage = step.metadata, step.storage
        h = nnf.embedding(input_ids[0], self.body.embed_tokens.weight)
        cos, sin = self.body.rotary_emb(h[None], position_ids)
        cos, sin = cos[0, :, None, :], signed_sin(sin[0, :, None, :])  # [T, 1, D]
        compiled = step.backend.name == "cpu"  # the CPU kernel is built: its fused ops too
        plan = AttentionPlan.build(
            meta,
            h.dtype,
            prompt_kernel=compiled
            and storage.dtype == h.dtype
            and prefill_supported(storage.layer(0)),
        )
        fused = compiled and self.silu and fused_rows.fused_rows_apply(h, *self.sizes)
        layers = self._layers_fused if fused else self._layers
        tail = LastRows.build(meta, last, step.backend.name) if plan is not None else None
        h = layers(step, plan, tail, h, cos, sin)  # [T, H], or [B, H] when cut to ``tail``
        if tail is None:
            h = h.index_select(0, last)
        norm = self.body.norm
        logits: torch.Tensor = self.head(rms_norm(h, norm.weight, float(norm.variance_epsilon)))
        return logits

    def _attend(
        self,
        step: PagedStep,
        plan: AttentionPlan | None,
        tail: LastRows | None,
        i: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """Layer ``i``'s attention: writes this step's K/V (``[T, Hkv, D]``) to the pool and
        attends with ``q`` ``[T, Hq, D]``; returns ``[T, Hq * D]``, or ``[B, Hq * D]`` for the
        rows of ``tail`` when it is given (the last layer of a step with prompt rows)."""
        storage, meta = step.storage, step.metadata
        k, v = k.to(storage.dtype), v.to(storage.dtype)
        if meta.write_index is None:
            storage.write_rows(i, meta.kv_rows, k, v)
        else:
            w = meta.write_index
            storage.write_rows(i, meta.kv_rows, k.index_select(0, w), v.index_select(0, w))
        step.layer_calls[i] += 1
        scale = self.layers[i].self_attn.scaling
        if tail is not None:
            o = last_rows_attention(step, tail, i, q, scale)
        else:
            o = step_attention(step, plan, i, q, k, v, scale)
        return o.reshape(o.shape[0], -1)

    def _tail_at(self, i: int, tail: LastRows | None) -> LastRows | None:
        """``tail`` in the last layer, ``None`` in the others."""
        return tail if i == len(self.layers) - 1 else None

    def _layers(
        self,
        step: PagedStep,
        plan: AttentionPlan | None,
        tail: LastRows | None,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """Every decoder layer with torch ops (the HF modules' operations in their order).
        ``h``: ``[T, H]``; cos/sin (signed): ``[T, 1, D]``. Returns the last hidden ``[T, H]``,
        or ``[B, H]`` of ``tail``'s rows (the last layer computed for those only)."""
        t, d = h.shape[0], self.head_dim
        for i, layer in enumerate(self.layers):
            packs, (eps_in, eps_post) = self.packs[i], self.eps[i]
            x = rms_norm(h, layer.input_layernorm.weight, eps_in)
            qkv = packs.qkv(x)  # [T, (Hq + 2 Hkv) D]
            hq, hkv = packs.qkv.splits[0] // d, packs.qkv.splits[1] // d
            qk = apply_rope(qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d), cos, sin)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            cut = self._tail_at(i, tail)
            attn = packs.o(self._attend(step, plan, cut, i, qk[:, :hq], qk[:, hq:], v))
            h = (h if cut is None else h.index_select(0, cut.index)) + attn
            x = rms_norm(h, layer.post_attention_layernorm.weight, eps_post)
            gate_up = packs.gate_up(x)
            inter = packs.gate_up.splits[0]
            h = h + packs.down(layer.mlp.act_fn(gate_up[:, :inter]) * gate_up[:, inter:])
        return h

    def _layers_fused(
        self,
        step: PagedStep,
        plan: AttentionPlan | None,
        tail: LastRows | None,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`_layers` with the compiled fused row ops (:mod:`fused_rows`): RoPE in place on
        the qkv rows, each residual add fused into the next RMSNorm (``h`` updated in place),
        SiLU-and-multiply in one pass (with panels, the gate/up GEMM's epilogue)."""
        cos2, sin2 = cos[:, 0].contiguous(), sin[:, 0].contiguous()  # [T, D]
        t, d = h.shape[0], self.head_dim
        hq, hkv = self.packs[0].qkv.splits[0] // d, self.packs[0].qkv.splits[1] // d
        pending: torch.Tensor | None = None  # the previous layer's MLP output, not yet added
        for i, layer in enumerate(self.layers):
            packs, (eps_in, eps_post) = self.packs[i], self.eps[i]
            w_in = layer.input_layernorm.weight
            if pending is None:
                x = fused_rows.rms_norm(h, w_in, eps_in)
            else:
                x = fused_rows.add_rms_norm(h, pending, w_in, eps_in)
            qkv = packs.qkv(x)  # [T, (Hq + 2 Hkv) D]
            fused_rows.rope_(qkv, cos2, sin2, hq + hkv)
            q = qkv[:, : hq * d].view(t, hq, d)
            k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            cut = self._tail_at(i, tail)
            attn = packs.o(self._attend(step, plan, cut, i, q, k, v))
            if cut is not None:
                h = h.index_select(0, cut.index)  # a copy: the rows that reach lm_head
            x = fused_rows.add_rms_norm(h, attn, layer.post_attention_layernorm.weight, eps_post)
            pending = packs.down(packs.gate_up.silu_mul(x))
        if pending is not None:
            h.add_(pending)
        return h
