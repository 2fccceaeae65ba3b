"""The engine runs the model-support probe once, and its runner takes that result as is.

Why: the probe is two model forwards (~0.5 s on the default model at start); the engine needs
its result before the runner exists (the KV pool is sized from it), so it hands the result to the
runner instead of the runner probing again. A result for another model is refused, so passing one
can never skip a model's check.
"""

from __future__ import annotations

from typing import Any

import pytest
from engine_helpers import drive, greedy, greedy_ref, make_engine, random_prompts

from pagedkv.errors import InvalidArgumentError
from pagedkv.integrations import PagedModelRunner, hf_support
from pagedkv.integrations.hf_support import check_model_supported
from pagedkv.models import tiny_random_llama


def test_engine_start_probes_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = hf_support.run_probe

    def counting(model: Any, window: Any) -> Any:
        calls.append(model)
        return real(model, window)

    monkeypatch.setattr(hf_support, "run_probe", counting)
    eng = make_engine(block_size=4, num_blocks=32)
    assert len(calls) == 1
    assert eng.runner.attention_spec.is_for(eng.loaded.model)
    assert eng.vocab_size == eng.runner.vocab_size == eng.loaded.model.config.vocab_size
    p = random_prompts([6], seed=3)[0]
    run = drive(eng, [("a", p, greedy(5))])
    assert run.final["a"].outputs[0].token_ids == greedy_ref(p, 5)


def test_runner_refuses_another_models_check() -> None:
    mine, other = tiny_random_llama(0).model, tiny_random_llama(1).model
    spec = check_model_supported(other)
    with pytest.raises(InvalidArgumentError, match="attention_spec"):
        PagedModelRunner(mine, num_blocks=8, attention_spec=spec)
    not_a_check: Any = "not a check"
    with pytest.raises(InvalidArgumentError, match="attention_spec"):
        PagedModelRunner(mine, num_blocks=8, attention_spec=not_a_check)
    runner = PagedModelRunner(other, block_size=4, num_blocks=8, attention_spec=spec)
    assert runner.attention_spec is spec
    runner.check_integrity()
