"""Which models the native Llama forward may compute (:mod:`pagedkv.integrations.native_llama`).

Exactly ``LlamaForCausalLM`` with its stock modules and plain ``Linear``/``Embedding`` layers,
one parameter dtype, no hooks: anything else could compute something the native forward does
not, so it takes the HF path. The SiLU check decides whether the fused SiLU-and-multiply may
replace the MLP's activation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

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


def hooked(modules: Sequence[torch.nn.Module]) -> bool:
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


def is_silu(act: Any) -> bool:
    """Whether ``act`` is exactly SiLU (transformers' ``SiLUActivation`` or ``nn.SiLU``): only
    then may the fused SiLU-and-multiply replace it."""
    return type(act) is torch.nn.SiLU or (
        type(act).__name__ == "SiLUActivation"
        and type(act).__module__ == "transformers.activations"
    )
