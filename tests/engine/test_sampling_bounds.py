"""Sampling values at the edge of float32: a temperature that would overflow the logits is
greedy, a top_p below float32's smallest value keeps the most likely token, a repetition
penalty that would overflow is refused, and stop ids outside the vocabulary are refused where
the request is taken in (each of these once ended a request with inf/nan or an IndexError)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import drive, greedy_ref, make_engine, random_prompts

from pagedkv.engine import SamplingParams
from pagedkv.engine.sampler import filtered_probs
from pagedkv.engine.sampling_params import GREEDY_TEMPERATURE, MIN_REPETITION_PENALTY
from pagedkv.errors import InvalidArgumentError

PROMPT = random_prompts([9], seed=41)[0]


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, GREEDY_TEMPERATURE / 2])
def test_tiny_temperature_is_greedy(temperature):
    params = SamplingParams(temperature=temperature, seed=7, max_tokens=8, ignore_eos=True)
    assert params.greedy
    run = drive(make_engine(block_size=4, num_blocks=64), [("t", PROMPT, params)])
    assert run.final["t"].outputs[0].token_ids == greedy_ref(PROMPT, 8)


@pytest.mark.parametrize("top_p", [1e-300, 1e-45, 1e-9])
def test_tiny_top_p_keeps_exactly_the_most_likely_token(top_p):
    torch.manual_seed(1)
    x = torch.randn(64)
    probs = filtered_probs(x.clone(), SamplingParams(temperature=1.0, top_p=top_p))
    assert torch.isfinite(probs).all()
    assert torch.nonzero(probs).flatten().tolist() == [int(torch.argmax(x))]
    assert float(probs.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("penalty", [1e-300, 0.0, MIN_REPETITION_PENALTY / 2, 10.5])
def test_repetition_penalty_outside_its_range_is_refused(penalty):
    with pytest.raises(InvalidArgumentError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=penalty)
    assert SamplingParams(repetition_penalty=MIN_REPETITION_PENALTY).repetition_penalty > 0


def test_stop_token_ids_outside_the_vocabulary_are_refused_unchanged():
    engine = make_engine(block_size=4, num_blocks=64)
    vocab = engine.vocab_size
    params = SamplingParams(stop_token_ids=[vocab], min_tokens=1, max_tokens=4)
    with pytest.raises(InvalidArgumentError, match=rf"stop_token_ids.*\[0, {vocab}\)"):
        engine.add_request("r", PROMPT, params)
    assert not engine.has_unfinished_requests()
    engine.check_integrity()
    ok = SamplingParams(stop_token_ids=[vocab - 1], min_tokens=1, max_tokens=4)
    run = drive(engine, [("r", PROMPT, ok)])  # the id is free: nothing was taken in
    assert len(run.final["r"].outputs[0].token_ids) >= 1
