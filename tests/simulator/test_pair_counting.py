"""Attention pairs counted as the compiled CPU kernels score them (``exact``) against the torch
reference's ``padded`` counting: features, the model's field, its JSON, the fit, the profile."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from sim_helpers import Rec, Shape

from pagedkv.attention import kernel_available
from pagedkv.engine import EngineConfig, LLMEngine
from pagedkv.errors import InvalidArgumentError
from pagedkv.models import tiny_random_llama
from pagedkv.simulator.costfit import fit_cost_model
from pagedkv.simulator.costmodel import TERMS, LinearCostModel
from pagedkv.simulator.profile import QUICK_GRID, pair_counting, profile_cost_model
from pagedkv.simulator.stepfeatures import StepFeatures, step_features


def test_exact_counting_of_exact_shapes() -> None:
    f = step_features([(0, 4), (10, 1), (5, 3), (0, 1)], "exact")
    # prompt rows through the prefill kernel, causal over the pool: the fresh (0, 4) scores
    # 1+2+3+4 = 10, the chunk (5, 3) after 5 cached tokens 6+7+8 = 21. Each decode its own
    # context: 11 and 1. Prompt rows beside decodes: both kernels ran
    assert f == StepFeatures(
        prefill_tokens=7,
        decode_seqs=2,
        attention_pairs=31,
        paged_pairs=12,
        mixed=1,
        cached_tokens=5,
    )
    # the same step counted padded: (5, 3) is a 3 x 8 rectangle on the paged path and the
    # two decodes are padded to 11 each
    assert step_features([(0, 4), (10, 1), (5, 3), (0, 1)]) == StepFeatures(7, 2, 10, 46, 1, 5)


@pytest.mark.parametrize(
    ("shapes", "mixed"),
    [
        ([(0, 5), (16, 5)], 0),  # prompt rows only: one kernel, fresh or after cache
        ([(7, 1), (9, 1)], 0),  # decodes only
        ([(16, 5), (9, 1)], 1),  # a chunk after cache beside a decode: both kernels
        ([(0, 5), (0, 1)], 1),  # a 1-token prompt is a decode row
    ],
)
def test_exact_mixed_means_prompt_rows_and_decodes(shapes: list[Shape], mixed: int) -> None:
    assert step_features(shapes, "exact").mixed == mixed


def test_exact_pairs_are_counted_one_by_one() -> None:
    rng = random.Random(1)
    for _ in range(50):
        shapes = [
            (rng.choice([0, rng.randrange(300)]), rng.choice([1, rng.randrange(1, 40)]))
            for _ in range(rng.randrange(1, 8))
        ]
        f = step_features(shapes, "exact")
        # query row q of a chunk starting at s sees keys 0 .. s + q
        prompt = sum(s + q + 1 for s, n in shapes if n > 1 for q in range(n))
        assert f.attention_pairs == prompt
        assert f.paged_pairs == sum(s + 1 for s, n in shapes if n == 1)
        assert f.prefill_tokens == sum(n for _, n in shapes if n > 1)
        assert f.decode_seqs == sum(1 for _, n in shapes if n == 1)


def test_ragged_decodes_cost_their_own_contexts() -> None:
    ragged = step_features([(15, 1)] * 6 + [(499, 1)] * 6, "exact")
    assert ragged.paged_pairs == 6 * 16 + 6 * 500 < step_features([(499, 1)] * 12).paged_pairs


def test_unknown_counting_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="one of padded, exact, got 'dense'"):
        step_features([(0, 3)], "dense")
    with pytest.raises(InvalidArgumentError, match="got 'Exact'"):
        LinearCostModel(attention_counting="Exact")
    with pytest.raises(InvalidArgumentError, match="got 'x'"):
        fit_cost_model([], counting="x")


def test_the_model_predicts_with_its_own_counting() -> None:
    shapes = [(100, 1), (20, 1), (40, 8)]
    padded = LinearCostModel(2.0, 0.1, 0.5, 3.0, 4.0, 7.0)
    exact = LinearCostModel(2.0, 0.1, 0.5, 3.0, 4.0, 7.0, attention_counting="exact")
    # exact: prompt pairs 8*40 + 36 = 356, decode pairs 101 + 21 = 122, mixed
    assert exact.step_ms_for(shapes) == pytest.approx(
        2.0 + 0.8 + 1.0 + 3.0 * 0.356 + 4.0 * 0.122 + 7.0
    )
    # padded: no fresh prompt, so no prompt pairs; 8 x 48 rectangle + 2 x 101; not mixed
    assert padded.step_ms_for(shapes) == pytest.approx(2.0 + 0.8 + 1.0 + 4.0 * 0.586)
    assert exact.describe().endswith("; pairs counted exact")
    assert "pairs counted" not in padded.describe()


def test_counting_survives_json_and_old_files_load_as_padded() -> None:
    exact = LinearCostModel(1.0, 0.1, 0.2, 0.3, 0.4, attention_counting="exact")
    data = json.loads(json.dumps(exact.to_json()))
    assert data["attention_counting"] == "exact"
    assert LinearCostModel.from_json(data) == exact
    del data["attention_counting"]  # a file written before the field: fitted padded
    assert LinearCostModel.from_json(data).attention_counting == "padded"
    data["attention_counting"] = "exactly"
    with pytest.raises(InvalidArgumentError, match=re.escape("field 'attention_counting'")):
        LinearCostModel.from_json(data, "cost model f.json")


def test_fit_with_exact_counting_recovers_known_coefficients() -> None:
    truth = (3.0, 0.05, 0.7, 0.002, 0.004, 25.0, 6.0)
    rng = random.Random(0)
    records = []
    for _ in range(60):
        shapes = [(rng.randrange(1, 2000), 1) for _ in range(rng.randrange(0, 12))]
        shapes += [(rng.choice([0, 256]), rng.randrange(2, 600)) for _ in range(rng.randrange(3))]
        shapes = shapes or [(0, 1)]
        ms = float(np.array(step_features(shapes, "exact").row()) @ np.array(truth))
        records.append(Rec(shapes, ms / 1000))
    model, err = fit_cost_model(records, counting="exact")
    assert model.attention_counting == "exact"
    for name, want in zip(TERMS, truth, strict=True):
        assert getattr(model, name) == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert err.p90 < 1e-6
    # the same steps fitted with the other counting cannot explain them exactly
    _, padded_err = fit_cost_model(records, counting="padded")
    assert padded_err.p90 > 1e-3


def test_profile_takes_the_counting_of_the_engines_backend() -> None:
    torch_engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0, backend="torch"))
    assert pair_counting(torch_engine) == "padded"
    if not kernel_available():
        pytest.skip("the compiled CPU kernel did not build here")
    cpu_engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0, backend="cpu"))
    assert pair_counting(cpu_engine) == "exact"
    result = profile_cost_model(cpu_engine, QUICK_GRID)
    assert result.model.attention_counting == "exact"
