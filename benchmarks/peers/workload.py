"""The peers comparison's requests and their reference answers (pagedkv's venv).

Requests: chat prompts (the model's chat template) with one of three shared system prompts, a
user turn that is a short question or a question about a slice of built-in text of log-normal
length (ShareGPT-like: median ~150 prompt tokens, long tail), greedy, at most ``max_tokens`` new
tokens, EOS honoured. Each round gets its own seed, so no engine is served a whole prompt from
its prefix cache by an earlier round (the system prompts are shared, as in real serving).

Reference: transformers' ``model.generate`` in float32, one request at a time (no padding),
greedy, cached on disk by workload hash (a round's reference takes ~1-3 min on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _workload import CONTEXT_QUESTIONS, FILLER, QUESTIONS, lognormal_lengths

SYSTEM_PROMPTS = (
    "You are a helpful, concise assistant. Answer the user's question directly and truthfully.",
    "You are a patient teacher who explains things step by step in plain language. Keep "
    "answers short, avoid jargon, and give one small example when it helps understanding.",
    "You are a careful writing assistant for a small company. Be polite and precise, prefer "
    "short sentences, never invent facts, and say so when a question cannot be answered from "
    "the text you are given. Format lists with dashes.",
)


def chat_prompts(tokenizer: Any, num_requests: int, seed: int) -> list[list[int]]:
    """``num_requests`` templated chat prompts (token ids) for round ``seed``."""
    rng = np.random.default_rng(seed)
    lens = lognormal_lengths(rng, num_requests, 110.0, 0.8, 0, 600)
    filler = tokenizer.encode(FILLER, add_special_tokens=False)
    prompts = []
    for i, n in enumerate(lens):
        system = SYSTEM_PROMPTS[(i + seed) % len(SYSTEM_PROMPTS)]
        if n < 40:
            user = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        else:
            start = int(rng.integers(0, len(filler) - n))
            text = tokenizer.decode(filler[start : start + n]).strip()
            user = f"{text}\n\n{CONTEXT_QUESTIONS[int(rng.integers(len(CONTEXT_QUESTIONS)))]}"
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        prompts.append([int(t) for t in tokenizer.encode(text, add_special_tokens=False)])
    return prompts


def hf_reference(
    folder: Path, prompts: list[list[int]], max_tokens: int, eos: list[int], cache: Path
) -> list[list[int]]:
    """Greedy float32 ``generate`` answers (cut after the first EOS), cached in ``cache``."""
    key = hashlib.sha256(json.dumps([str(folder), prompts, max_tokens, eos]).encode()).hexdigest()
    path = cache / f"hf-ref-{key[:20]}.json"
    if path.is_file():
        cached: list[list[int]] = json.loads(path.read_text())
        return cached
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p])
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
            toks = gen[0, len(p) :].tolist()
            cut = next((i + 1 for i, t in enumerate(toks) if t in eos), len(toks))
            out.append(toks[:cut])
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out
