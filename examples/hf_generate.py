"""Generate with a Hugging Face transformers model whose KV cache lives in pagedkv.

Runs offline in a few seconds: the model is a small Llama built from a config with seeded random
weights (swap in ``AutoModelForCausalLM.from_pretrained(...)`` for a real checkpoint). The output
is checked token for token against ``model.generate`` with HF's own cache.

    python examples/hf_generate.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pagedkv.integrations import PagedModelRunner


def main() -> None:
    """Build a tiny model, generate a batch through pagedkv, compare with HF."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    )
    model = LlamaForCausalLM(config).eval()

    system = [11, 42, 7, 99, 5, 23, 61, 8, 250, 3, 17, 64, 33]  # a shared "system prompt"
    prompts = [[*system, 5, 6], [*system, 200], [1, 2, 3], [*system, *range(30, 50)]]

    # 1. One runner = block manager (prefix caching on) + paged KV storage for this model.
    runner = PagedModelRunner(model, block_size=4, num_blocks=128)

    # 2. Greedy generation of all prompts as one continuously batched run.
    t0 = time.perf_counter()
    out = runner.generate(prompts, max_new_tokens=12)
    dt = time.perf_counter() - t0
    for p, o in zip(prompts, out, strict=True):
        print(f"prompt[{len(p):2d} tokens] -> {o}")

    # 3. A second batch reuses the cached system-prompt blocks (prefix cache hits).
    hits = [runner.admit(f"again-{i}", p) for i, p in enumerate(prompts)]
    print(f"prefix-cache hit tokens on resubmission: {hits}")
    for i in range(len(prompts)):
        runner.free(f"again-{i}")

    # 4. Check against HF's own generate (unpadded, default DynamicCache).
    ref = []
    for p in prompts:
        ids = torch.tensor([p])
        g = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        )
        ref.append(g[0, len(p) :].tolist())
    print(f"identical to model.generate: {out == ref}  (pagedkv run took {dt * 1e3:.0f} ms)")
    runner.check_integrity()
    if out != ref:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
