"""``pagedkv profile`` on the tiny random Llama: the grid's steps, the fitted file, the errors.

Timings are noisy, so nothing here asserts how well the fit predicts: only that the steps are
the shapes the grid names and that the model and its error figures are written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import pagedkv.cli_setup as cli_setup
from pagedkv.cli import main
from pagedkv.engine import EngineConfig, LLMEngine
from pagedkv.models import tiny_random_llama
from pagedkv.simulator.costmodel import CostModelInfo, ErrorStats, LinearCostModel
from pagedkv.simulator.profile import (
    QUICK_GRID,
    Ladder,
    Prefills,
    ProfileGrid,
    ProfileResult,
    collect_steps,
    fit_profile,
    split_held_out,
)
from pagedkv.simulator.profile_command import render_table


def _decodes(batch: int, contexts: range) -> list[list[tuple[int, int]]]:
    return [[(c, 1)] * batch for c in contexts]


def test_quick_grid_steps_through_the_shapes_it_names() -> None:
    engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0))
    records, skipped = collect_steps(engine, QUICK_GRID)
    assert skipped == []
    assert not engine.has_unfinished_requests()
    assert all(r.seconds > 0 for r in records)
    expected = [
        # ladder at context 16: 8 prompts in one step, then 8, 4, 2, 1 decoding 3 steps each;
        # a 64-token prompt joins the 4 (one mixed step, which decodes too)
        [(0, 16)] * 8,
        *_decodes(8, range(16, 19)),
        *_decodes(4, range(19, 22)),
        [(22, 1)] * 4 + [(0, 64)],
        *_decodes(2, range(23, 26)),
        *_decodes(1, range(26, 29)),
        # ladder at context 128
        [(0, 128)] * 4,
        *_decodes(4, range(128, 131)),
        *_decodes(2, range(131, 134)),
        *_decodes(1, range(134, 137)),
        # prefills alone, then four 32-token prompts in one step
        [(0, 16)],
        [(0, 64)],
        [(0, 256)],
        [(0, 32)] * 4,
    ]
    assert [sorted(r.shapes) for r in records] == [sorted(s) for s in expected]


def test_a_ladder_whose_prompts_take_many_steps_keeps_every_sequence_to_its_end() -> None:
    """4 prompts of 64 tokens under a 32-token budget take 8 steps; the first prompt decodes
    during the other 7, so the sequences need more than the ladder's own steps of tokens (the
    profile once ran them out and stopped with 'the engine ran no step')."""
    cfg = EngineConfig(seed=0, max_num_batched_tokens=32, enable_chunked_prefill=True)
    engine = LLMEngine(tiny_random_llama(0), cfg)
    grid = ProfileGrid(ladders=(Ladder(64, (4, 2), 4),), prefills=(), warmup=Ladder(8, (1,), 1))
    records, skipped = collect_steps(engine, grid)
    assert skipped == []
    assert not engine.has_unfinished_requests()
    decodes = [r.shapes for r in records if all(n == 1 for _, n in r.shapes)]
    assert [len(s) for s in decodes[-8:]] == [4] * 4 + [2] * 4  # both rungs, 4 steps each


def test_a_ragged_ladder_runs_contexts_from_full_down_to_half() -> None:
    """Serving batches mix context lengths (the paged kernel then masks, which costs): a
    ragged ladder's prompts run from its context down to about half of it."""
    engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0))
    grid = ProfileGrid(
        ladders=(Ladder(16, (4, 2), 2, ragged=True),), prefills=(), warmup=Ladder(8, (1,), 1)
    )
    records, skipped = collect_steps(engine, grid)
    assert skipped == []
    assert [list(r.shapes) for r in records] == [
        [(0, 16), (0, 14), (0, 12), (0, 10)],  # the prompts, in one step
        [(16, 1), (14, 1), (12, 1), (10, 1)],
        [(17, 1), (15, 1), (13, 1), (11, 1)],
        [(18, 1), (16, 1)],  # the two shortest aborted
        [(19, 1), (17, 1)],
    ]


def test_a_cached_mix_prompt_hits_the_first_sequences_prefix() -> None:
    """A follow-up turn's new tokens run after cached KV (the paged path): a ``mix_cached``
    prompt starts with the ladder's first prompt, whose full blocks are a prefix-cache hit."""
    engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0, block_size=4))
    lad = Ladder(10, (2, 1), 2, mix_at=(1,), mix_prompt=6, mix_cached=True)
    grid = ProfileGrid(ladders=(lad,), prefills=(), warmup=Ladder(8, (1,), 1))
    records, skipped = collect_steps(engine, grid)
    assert skipped == []
    # 10 tokens = 2 full blocks of 4 cached and the other 2 a partial block hit (the first
    # prompt's 3rd block, filled by its decode), then the 6 new ones computed beside the
    # remaining decode
    assert list(records[-1].shapes) == [(14, 1), (10, 6)]


def test_points_over_the_engine_limits_are_shrunk_and_said() -> None:
    engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0, max_num_seqs=3))
    records, skipped = collect_steps(engine, QUICK_GRID)
    assert skipped == [
        "decode ladder at context 16: batch sizes [8, 4] (KV pool or max_num_seqs)",
        "decode ladder at context 128: batch sizes [4] (KV pool or max_num_seqs)",
        "prefill 4 x 32 tokens: over the token budget, model length or KV pool",
    ]
    assert max(len(r.shapes) for r in records) <= 3


def test_a_repeated_grid_runs_every_other_pass_in_reverse_and_says_a_skip_once() -> None:
    ladder, prompt, too_long = Ladder(8, (2, 1), 2), Prefills(16), Prefills(64, 40)
    warm = Ladder(8, (1,), 1)

    def shapes(grid: ProfileGrid) -> tuple[list[list[tuple[int, int]]], list[str]]:
        records, skipped = collect_steps(
            LLMEngine(tiny_random_llama(0), EngineConfig(seed=0)), grid
        )
        return [sorted(r.shapes) for r in records], skipped

    lad, _ = shapes(ProfileGrid((ladder,), (), warm))
    pre, _ = shapes(ProfileGrid((), (prompt,), warm))
    # the contexts move on between passes, so compare the kinds of step: batch and lengths
    both, skipped = shapes(ProfileGrid((ladder,), (prompt, too_long), warm, repeats=3))

    def kinds(steps: list[list[tuple[int, int]]]) -> list[list[int]]:
        return [[n for _, n in s] for s in steps]

    # passes 1 and 3 in order, pass 2 reversed (the prompt first, then the ladder)
    assert kinds(both) == kinds(lad + pre) + kinds(pre + lad) + kinds(lad + pre)
    assert skipped == ["prefill 40 x 64 tokens: over the token budget, model length or KV pool"]


def test_a_prefill_after_a_cached_prefix_runs_the_prefix_first_then_hits_it() -> None:
    engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0, block_size=4))
    grid = ProfileGrid(
        (), (Prefills(6, cached=10), Prefills(3, count=2, cached=8)), Ladder(8, (1,), 1)
    )
    records, skipped = collect_steps(engine, grid)
    assert skipped == []
    assert [sorted(r.shapes) for r in records] == [
        [(0, 10)],  # the prefix alone
        [(8, 8)],  # 10 + 6 tokens: the prefix's 2 full blocks of 4 hit, the rest computed
        [(0, 8)],
        [(8, 3), (8, 3)],  # both prompts start with the same cached 8
    ]


def test_split_holds_out_every_fifth() -> None:
    fitted, held = split_held_out(list(range(12)))
    assert held == [4, 9]
    assert fitted == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]


def test_profile_command_writes_a_model_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cm.json"
    argv = ["profile", "--model", "tiny-random", "--quick", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    model = LinearCostModel.load(out)
    assert model.info is not None
    assert (model.info.model, model.info.dtype, model.info.threads) == (
        "tiny-random-llama-seed0",
        "float32",
        1,
    )
    fit, held = model.info.fit_error, model.info.held_out_error
    assert fit is not None
    assert held is not None
    assert fit.records >= 4 * held.records >= 4
    assert 0 <= held.median <= held.p90
    assert len(model.token_knots) >= 2  # the profile fits a token curve
    text = capsys.readouterr().out
    assert "held-out steps" in text
    assert "per 1000 attention pairs" in text
    assert "per 1000 paged-attention pairs" in text
    assert "    tokens " + "".join(f"{k:>8}" for k in model.token_knots[:10]) in text
    assert f"written to {out}" in text


def test_table_shows_every_term_and_the_curve() -> None:
    info = CostModelInfo("m", "bfloat16", 4, "2025-01-01T00:00:00+00:00")
    knots = tuple(2**i for i in range(12))  # 12 knots: two rows of the curve table
    model = LinearCostModel(
        0.0,
        0.0,
        0.25,
        0.0125,
        0.003,
        40.0,
        12.5,
        token_knots=knots,
        token_ms=tuple(1.5 * i for i in range(12)),
        info=info,
    )
    result = ProfileResult(model, ErrorStats(40, 0.05, 0.04, 0.125), None, [], [])
    assert render_table(result).splitlines() == [
        "cost model for m (bfloat16, 4 threads)",
        "  term                                   ms",
        "  per step                                0",
        "  per prefill token                       0",
        "  per decoding sequence                0.25",
        "  per 1000 attention pairs           0.0125",
        "  per 1000 paged-attention pairs      0.003",
        "  per mixed step                         40",
        "  per 1000 cached prefix tokens        12.5",
        "  attention pairs counted            padded",
        "  token curve (ms a step of this many tokens costs; linear between and past the end)",
        "    tokens        1       2       4       8      16"
        "      32      64     128     256     512",
        "    ms            0     1.5       3     4.5       6"
        "     7.5       9    10.5      12    13.5",
        "    tokens     1024    2048",
        "    ms           15    16.5",
        "  relative error                      steps    mean  median     p90",
        "  fitted steps                           40    5.0%    4.0%   12.5%",
        "  held-out steps                          0       -       -       -",
    ]
    plain = ProfileResult(LinearCostModel(), ErrorStats(1, 0.0, 0.0, 0.0), None, [], [])
    assert "  token curve                          none" in render_table(plain).splitlines()


def test_profile_errors_are_one_line_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the model loaded before the error was found")

    monkeypatch.setattr(cli_setup, "load_cli_model", refuse)
    for out, message in [
        (tmp_path / "no" / "cm.json", "folder"),
        (tmp_path, "is a directory"),
    ]:
        assert main(["profile", "--model", "tiny-random", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pagedkv profile: error: --out {out}: {message}")
        assert err.count("\n") == 1


def test_one_pass_at_a_time_alternates_order_and_fits_as_the_whole_grid() -> None:
    """``first_pass``: a caller running the grid one pass at a time (``sim_vs_real.py``
    between real runs) gets the order the whole grid would have, and ``fit_profile`` fits the
    pooled records the way ``profile_cost_model`` fits its own."""
    engine = LLMEngine(tiny_random_llama(0), EngineConfig(seed=0))
    grid = ProfileGrid(
        ladders=(Ladder(16, (2,), 1),), prefills=(Prefills(64, 1),), warmup=Ladder(8, (1,), 1)
    )
    one = dataclasses.replace(grid, repeats=1)
    forward, _ = collect_steps(engine, one, first_pass=0)
    backward, _ = collect_steps(engine, one, seed=1, first_pass=1)  # new prompts: no hits
    assert [sorted(r.shapes) for r in forward] == [
        [(0, 16)] * 2,
        [(16, 1)] * 2,
        [(0, 64)],
    ]
    assert [sorted(r.shapes) for r in backward] == [
        [(0, 64)],
        [(0, 16)] * 2,
        [(16, 1)] * 2,
    ]
    records = forward + backward
    for i in (2, 3):
        records += collect_steps(engine, one, seed=i, first_pass=i)[0]
    pooled = fit_profile(engine, records)
    assert len(pooled.fitted) + len(pooled.held_out) == len(records)
    assert pooled.fitted == split_held_out(records)[0]
    assert pooled.model.info is not None
    assert pooled.model.info.threads >= 1
