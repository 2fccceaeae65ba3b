"""The native Llama forward on the default model (SmolLM2-135M-Instruct): greedy chat answers
equal HF ``generate`` (float32), through one continuously batched runner."""

from __future__ import annotations

import pytest
from hf_helpers import hf_greedy

from pagedkv.integrations import PagedModelRunner
from pagedkv.integrations.panel_gemm import panel_gemm_usable
from pagedkv.models import load_model

QUESTIONS = ("What is the capital of France?", "Write a haiku about rain.", "Why do cats purr?")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_default_model_greedy_equals_hf_generate(backend):
    """With "cpu": the compiled kernels (prompt rows and decodes) on head size 64, and on an
    AVX-512 CPU the panel GEMM for every projection and ``lm_head``."""
    lm = load_model(None)
    tok = lm.tokenizer
    prompts = [
        tok.encode(
            tok.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )
        for q in QUESTIONS
    ]
    runner = PagedModelRunner(lm.model, block_size=16, num_blocks=64, backend=backend)
    assert runner.native is not None
    panels = backend == "cpu" and panel_gemm_usable(lm.model.lm_head.weight)
    packs = [p for lp in runner.native.packs for p in lp.all()] + [runner.native.head]
    assert all((p.panels is not None) == panels for p in packs)
    out = runner.generate(prompts, 10)
    for p, got in zip(prompts, out, strict=True):
        ref = hf_greedy(lm.model, p, 10)  # stops after EOS; the runner does not
        assert got[: len(ref)] == ref
        assert len(ref) == 10 or ref[-1] in lm.eos_token_ids
