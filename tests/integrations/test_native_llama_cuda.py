"""The native Llama forward on a CUDA device (run where one is present; CI has none): greedy
equal to HF ``generate``, the projections through ``F.linear`` on the model's own weights (no
packed or fused copy on the GPU) and ``backend="auto"`` resolved to the torch reference."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import hf_greedy, seeded_prompts

from pagedkv.attention import resolve_backend
from pagedkv.integrations import PagedModelRunner
from pagedkv.models.random_llama import tiny_random_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = {
    "gqa": {},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
    "biases": {"attention_bias": True, "mlp_bias": True},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_native_forward_on_cuda_equals_hf_generate(name):
    assert resolve_backend("auto", "cuda") == "torch"
    model = tiny_random_llama(3, device="cuda", **CONFIGS[name]).model
    runner = PagedModelRunner(model, block_size=4, num_blocks=256, backend="auto")
    assert runner.native is not None
    assert runner.native.packed_bytes == 0
    prompts = seeded_prompts([1, 5, 17, 40], seed=5, vocab=300)
    for p, got in zip(prompts, runner.generate(prompts, 12), strict=True):
        assert got == hf_greedy(model, p, 12)
    runner.check_integrity()
