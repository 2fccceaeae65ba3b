"""The sampler's draw (inverse transform on one seeded uniform) and when a first token counts
as produced (after its step sampled, as a simulated step charges it)."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from pagedkv.engine import EngineConfig, SamplingParams
from pagedkv.engine.executor import StepResult
from pagedkv.engine.sampler import SampleRow, draw_index, sample
from pagedkv.engine.scheduler_output import SchedulerOutput
from pagedkv.errors import PagedKVError
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.sim_executor import SimClock, simulated_engine

PROBS = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.0625, 0.0625, 0.0])


def test_draws_follow_the_probabilities():
    n = 40_000
    counts = collections.Counter(draw_index(PROBS, seed) for seed in range(n))
    assert set(counts) == {0, 2, 3, 4, 5}  # never an index without probability
    expected = {i: n * float(p) for i, p in enumerate(PROBS) if p > 0}
    chi2 = sum((counts[i] - e) ** 2 / e for i, e in expected.items())
    assert chi2 < 18.5  # 4 degrees of freedom: P(chi2 > 18.5) = 0.001


def test_zero_probability_is_never_drawn_even_beside_a_tiny_one():
    probs = torch.zeros(1000)
    probs[0], probs[500], probs[999] = 1e-30, 1.0, 1e-30
    drawn = {draw_index(probs, seed) for seed in range(3000)}
    assert drawn <= {0, 500, 999}
    assert 500 in drawn
    last = torch.zeros(49_152)
    last[-1] = 0.3  # the only token left after top-p or top-k, at the end of the vocabulary
    assert {draw_index(last, seed) for seed in range(200)} == {49_151}


def test_the_draw_depends_on_the_seed_only_and_not_on_the_scale():
    scaled = PROBS * 4.0  # a power of two: every cumulative sum scales exactly
    draws = [draw_index(PROBS, seed) for seed in range(300)]
    assert draws == [draw_index(scaled, seed) for seed in range(300)]
    assert draws == [draw_index(PROBS.clone(), seed) for seed in range(300)]
    assert len(set(draws)) > 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_distribution_without_a_finite_total_is_refused_not_drawn_past_the_end(bad):
    probs = PROBS.clone()
    probs[2] = bad
    with pytest.raises(PagedKVError, match=r"over 7 tokens sums to (nan|inf)"):
        draw_index(probs, 0)


def test_a_zero_total_and_non_finite_logits_are_refused():
    with pytest.raises(PagedKVError, match=r"sums to 0\.0 "):
        draw_index(torch.zeros(5), 0)
    # through the sampler: non-finite logits fail the row (the engine fails that request only)
    logits = torch.zeros(1, 7)
    logits[0, 3] = math.nan
    row = SampleRow(SamplingParams(temperature=1.0, seed=1), 1, 0, [1], [], [])
    with pytest.raises(PagedKVError, match="were the logits finite"):
        sample(logits, [row])


def test_the_draw_matches_a_uniform_from_the_same_seed():
    # the documented contract: u from a generator seeded with the seed, first cumsum > u * total
    for seed in (0, 1, 12345, 2**40):
        u = float(
            torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        )
        cdf = torch.cumsum(PROBS.double(), 0)
        want = int(torch.nonzero(cdf > u * float(cdf[-1]))[0])
        assert draw_index(PROBS, seed) == want


def test_first_token_time_is_read_after_the_step_has_sampled():
    """A step of 3 prompts costs 10 ms and each draw 0.5 s: all three first tokens exist at
    1.51 s, not at 0.01 s when the forward ended (what the engine stamped before)."""
    clock = SimClock()
    cfg = EngineConfig(block_size=4, num_blocks=32, max_num_seqs=4, max_num_batched_tokens=64)
    engine = simulated_engine(cfg, LinearCostModel(10.0, 0.0, 0.0), max_model_len=64, clock=clock)
    inner = engine.executor

    class SlowSampling:
        def execute(self, output: SchedulerOutput) -> StepResult:
            result = inner.execute(output)

            def draw(i, row):
                clock.advance(0.5)
                return result.draw(i, row)

            return StepResult(draw, result.seconds)

    engine.executor = SlowSampling()
    params = SamplingParams(max_tokens=2, ignore_eos=True, seed=1)
    for k in range(3):
        engine.add_request(f"r{k}", {"prompt_token_ids": [5 + k, 6, 7]}, params)
    engine.step()
    engine.check_integrity()
    stamps = [engine.requests[f"r{k}"].metrics.first_token_time for k in range(3)]
    assert stamps == [pytest.approx(0.01 + 1.5)] * 3
