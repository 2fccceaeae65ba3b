"""The native Llama forward: greedy token-exact against HF ``generate`` on several tiny Llama
configurations, the same logits as the HF path on mixed steps (fresh prompts, prefix hits,
decodes), and every model or state it must not compute taken by the HF path instead."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hf_helpers import hf_greedy, seeded_prompts

from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations import PagedModelRunner
from pagedkv.integrations.native_llama import NativeLlama, native_llama_refusal
from pagedkv.models.random_llama import tiny_random_llama

CONFIGS: dict[str, dict[str, Any]] = {
    "gqa-untied": {},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
    "mqa-3-layers": {"num_key_value_heads": 1, "num_hidden_layers": 3},
    "biases": {"attention_bias": True, "mlp_bias": True},
    "rope-linear": {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
    "rope-llama3": {
        "rope_parameters": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 5e5,
        }
    },
    "rope-yarn": {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
    "head-dim-32-gelu": {"head_dim": 32, "hidden_act": "gelu"},
}
LENGTHS = [1, 5, 17, 40]
# Head sizes the compiled kernels take (32/64/128/256) with SiLU: the "cpu" backend's native
# forward runs the prefill kernel and the fused row ops on them.
COMPILED: dict[str, dict[str, Any]] = {
    "head-dim-32": {"head_dim": 32},
    "head-dim-64-mqa-biases-tied": {
        "head_dim": 64,
        "num_key_value_heads": 1,
        "attention_bias": True,
        "mlp_bias": True,
        "tie_word_embeddings": True,
    },
}


def _model(name: str) -> Any:
    return tiny_random_llama(3, **{**CONFIGS, **COMPILED}[name]).model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_hf_generate(name):
    model = _model(name)
    runner = PagedModelRunner(model, block_size=4, num_blocks=256)
    assert runner.native is not None
    assert runner.native.usable()
    prompts = seeded_prompts(LENGTHS, seed=5, vocab=300)
    out = runner.generate(prompts, 12)
    for p, got in zip(prompts, out, strict=True):
        assert got == hf_greedy(model, p, 12)
    runner.check_integrity()


@pytest.mark.parametrize("name", list(COMPILED))
def test_compiled_path_greedy_equals_hf_generate(name, monkeypatch):
    """Backend "cpu": prompts through the prefill kernel, rows through the fused ops (both
    counted), greedy tokens equal to HF ``generate``."""
    from pagedkv.integrations import fused_rows, native_attention

    calls = {"prefill": 0, "rows": 0}
    real_prefill, real_rows = native_attention.paged_prefill, fused_rows._run

    def prefill(*a: Any, **k: Any) -> Any:
        calls["prefill"] += 1
        return real_prefill(*a, **k)

    def rows(*a: Any, **k: Any) -> Any:
        calls["rows"] += 1
        return real_rows(*a, **k)

    monkeypatch.setattr(native_attention, "paged_prefill", prefill)
    monkeypatch.setattr(fused_rows, "_run", rows)
    model = tiny_random_llama(3, **COMPILED[name]).model
    runner = PagedModelRunner(model, block_size=4, num_blocks=256, backend="cpu")
    prompts = seeded_prompts(LENGTHS, seed=5, vocab=300)
    out = runner.generate(prompts, 12)
    for p, got in zip(prompts, out, strict=True):
        assert got == hf_greedy(model, p, 12)
    assert calls["prefill"] > 0
    assert calls["rows"] > 0
    runner.check_integrity()


@pytest.mark.parametrize(
    ("name", "backend"),
    [("gqa-untied", "torch"), ("head-dim-32-gelu", "cpu"), ("head-dim-32", "cpu")],
)
def test_mixed_step_logits_equal_the_hf_path(name, backend, monkeypatch):
    """One step holding a fresh prompt, a prompt chunk after a prefix hit and a decode: the
    native split (causal SDPA for the fresh one, the paged backend for the others; with the
    "cpu" backend and head size 32, the compiled prefill kernel for both prompts) gives the HF
    path's logits."""
    from pagedkv.integrations import native_attention

    calls = []
    real = native_attention.paged_prefill
    monkeypatch.setattr(
        native_attention, "paged_prefill", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    model = _model(name)
    shared, fresh, tail, first = seeded_prompts([12, 9, 5, 7], seed=2, vocab=300)
    logits = []
    for native in (True, False):
        r = PagedModelRunner(model, block_size=4, num_blocks=128, native=native, backend=backend)
        assert (r.native is not None) is native
        r.admit("a", shared + first)
        r.forward(["a"])
        r.append("a", [17])
        assert r.admit("b", shared + tail) == 12  # three full blocks of the prefix hit
        r.admit("c", fresh)
        logits.append(r.forward(["a", "b", "c"]))
        r.check_integrity()
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    assert logits[0].argmax(-1).tolist() == logits[1].argmax(-1).tolist()
    assert bool(calls) is (backend == "cpu")  # the kernel ran the prompts exactly then


def _mixed_step_with_spy(
    model: Any, backend: str
) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """A step of 15 rows (a decode, a 5-row chunk after a prefix hit, a fresh 9-row prompt):
    its logits, every layer's pool afterwards, and the row counts the last layer's
    ``down_proj`` was called with."""
    shared, fresh, tail, first = seeded_prompts([12, 9, 5, 7], seed=2, vocab=300)
    r = PagedModelRunner(model, block_size=4, num_blocks=128, backend=backend)
    assert r.native is not None
    down_rows: list[int] = []
    last_layer, real_down = r.native.packs[-1], r.native.packs[-1].down
    last_layer.down = lambda x: down_rows.append(x.shape[0]) or real_down(x)  # type: ignore[assignment]
    r.admit("a", shared + first)
    r.forward(["a"])
    r.append("a", [17])
    r.admit("b", shared + tail)
    r.admit("c", fresh)
    down_rows.clear()
    logits = r.forward(["a", "b", "c"])
    r.check_integrity()
    return logits, [r.storage.layer(i).clone() for i in range(r.storage.num_layers)], down_rows


@pytest.mark.parametrize("name", ["head-dim-32", "head-dim-64-mqa-biases-tied"])
def test_last_layer_runs_only_the_rows_that_reach_lm_head(name, monkeypatch):
    """With the compiled backend, on a step with prompt rows the last layer attends, projects
    and runs its MLP for each sequence's last row only, while every row's K/V is still written:
    the pool holds the same bytes, and the logits agree, as when the last layer runs every
    row."""
    from pagedkv.integrations import native_llama

    model = tiny_random_llama(3, **COMPILED[name]).model
    cut_logits, cut_pool, cut_rows = _mixed_step_with_spy(model, "cpu")
    monkeypatch.setattr(native_llama.LastRows, "build", lambda *a: None)
    full_logits, full_pool, full_rows = _mixed_step_with_spy(model, "cpu")
    assert (cut_rows, full_rows) == ([3], [15])
    for a, b in zip(cut_pool, full_pool, strict=True):
        assert torch.equal(a, b)  # every row's K/V, last layer included, bit for bit
    torch.testing.assert_close(cut_logits, full_logits, rtol=1e-5, atol=1e-5)
    assert cut_logits.argmax(-1).tolist() == full_logits.argmax(-1).tolist()


def test_the_torch_backend_runs_the_last_layer_on_every_row():
    """It would pad every short decode to the longest prompt of the step (a gathered,
    padded decode batch), so the cut is the compiled backend's only."""
    *_, rows = _mixed_step_with_spy(_model("mqa-3-layers"), "torch")
    assert rows == [15]


def test_hooks_and_training_take_the_hf_path():
    model = _model("gqa-untied")
    runner = PagedModelRunner(model, block_size=4, num_blocks=64)
    native = runner.native
    assert native is not None
    assert native.usable()
    seen: list[int] = []
    handle = model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: seen.append(1))
    try:
        assert not native.usable()
        prompt = seeded_prompts([6], seed=1, vocab=300)[0]
        assert runner.generate([prompt], 3) == [hf_greedy(model, prompt, 3)[:3]]
        assert seen  # the hook ran: the HF path computed the steps
    finally:
        handle.remove()
    assert native.usable()
    model.train()
    try:
        assert not native.usable()
    finally:
        model.eval()


class _LoraLike(torch.nn.Module):
    """A projection wrapped the way adapter libraries do: ``weight`` is still the base
    weight, but ``forward`` adds a low-rank delta the native forward would not see."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.delta = torch.nn.Linear(base.in_features, base.out_features, bias=False)
        torch.nn.init.normal_(self.delta.weight, std=0.5)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)


def test_a_module_swapped_in_after_the_runner_was_built_takes_the_hf_path():
    model = _model("gqa-untied")
    runner = PagedModelRunner(model, block_size=4, num_blocks=64)
    assert runner.native is not None
    assert runner.native.usable()
    attn = model.model.layers[0].self_attn
    attn.q_proj = _LoraLike(attn.q_proj)
    assert not runner.native.usable()
    prompt = seeded_prompts([7], seed=2, vocab=300)[0]
    assert runner.generate([prompt], 4) == [hf_greedy(model, prompt, 4)]
    # the same stock classes as new objects: the native forward reads them again (new weights:
    # KV cached under the old ones must not be reused)
    runner.manager.reset_prefix_cache()
    attn.q_proj = torch.nn.Linear(attn.q_proj.base.in_features, attn.q_proj.base.out_features)
    torch.nn.init.normal_(attn.q_proj.weight, std=0.2)
    assert runner.native.usable()
    assert runner.generate([prompt], 4) == [hf_greedy(model, prompt, 4)]


def test_other_models_are_refused_by_name():
    from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM

    class MyLlama(LlamaForCausalLM):
        pass

    base = _model("gqa-untied")
    sub = MyLlama(base.config).eval()
    assert "MyLlama is not LlamaForCausalLM" in str(native_llama_refusal(sub))
    mistral = MistralForCausalLM(
        MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=300,
        )
    ).eval()
    assert "MistralForCausalLM" in str(native_llama_refusal(mistral))
    assert PagedModelRunner(mistral, block_size=4, num_blocks=32).native is None
    with pytest.raises(UnsupportedModelError, match="MyLlama"):
        NativeLlama(sub)
    swapped = _model("gqa-untied")
    swapped.model.layers[0].mlp.down_proj = torch.nn.Linear(128, 64, bias=False)
    assert native_llama_refusal(swapped) is None  # a plain Linear is read live
    quant = _model("gqa-untied")

    class Int8Linear(torch.nn.Linear):
        pass

    quant.model.layers[0].self_attn.q_proj = Int8Linear(64, 64, bias=False)
    assert "Int8Linear is not a plain torch.nn.Linear" in str(native_llama_refusal(quant))
    assert PagedModelRunner(quant, block_size=4, num_blocks=32).native is None
    half = _model("gqa-untied")
    half.lm_head.to(torch.bfloat16)
    assert "several dtypes" in str(native_llama_refusal(half))


def test_native_false_keeps_the_hf_path():
    model = _model("gqa-untied")
    runner = PagedModelRunner(model, block_size=4, num_blocks=64, native=False)
    assert runner.native is None
    prompt = seeded_prompts([9], seed=4, vocab=300)[0]
    assert runner.generate([prompt], 5) == [hf_greedy(model, prompt, 5)]
