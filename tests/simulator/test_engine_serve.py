"""``pagedkv simulate --mode serve`` runs the engine's own scheduler (issue 18): its row is what
``serve_trace`` on a simulated engine gives, its knobs are the engine's, and the baselines read
the same knob values."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import pytest

from pagedkv.cli import build_parser, main
from pagedkv.engine import EngineConfig
from pagedkv.simulator import SimulationConfig, SyntheticSpec, generate, run_simulation
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.engine_replay import SUMMARY_FIELDS, serve_trace, summarize
from pagedkv.simulator.sim_executor import SimClock, simulated_engine
from pagedkv.simulator.simulation_flags import config_from_args
from pagedkv.simulator.trace import from_lengths
from pagedkv.simulator.trace_prompts import trace_requests

COST = LinearCostModel(2.0, 0.05, 0.3)
# a shared 64-token system prompt, multi-turn: prefix hits; 48 blocks of 8: preemptions
TRACE = generate(
    SyntheticSpec(
        num_requests=40,
        rate=40.0,
        mean_turns=2,
        system_prompt_tokens=64,
        max_len=256,
        dataset="alpaca",
        seed=3,
    )
)


def serve(**knobs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = SimulationConfig(modes=("serve",), block_sizes=(8,), cost=COST, **knobs)
    report, timelines = run_simulation(TRACE, cfg)
    (row,) = report["serving"]
    return row, {"report": report, "timelines": timelines}


def test_serve_row_is_the_engine_replay_of_the_trace() -> None:
    row, out = serve(num_blocks=48, max_num_seqs=8, max_num_batched_tokens=64)
    assert set(SUMMARY_FIELDS) <= set(row)
    assert row["requests"] == len(TRACE)
    assert row["preemptions"] > 0  # 48 blocks of 8 tokens for up to 8 sequences
    assert row["prefix_hit_rate"] > 0  # the system prompt and earlier turns
    assert row["requests_rejected"] == 0
    assert row["backend"] == "sim-bs8+prefix"
    # the same engine, driven directly, gives the very same figures
    engine_cfg = EngineConfig(
        block_size=8, num_blocks=48, max_num_seqs=8, max_num_batched_tokens=64
    )
    clock = SimClock()
    engine = simulated_engine(engine_cfg, COST, max_model_len=2048, clock=clock)
    reqs = trace_requests(TRACE, block_size=8, vocab_size=engine.vocab_size)
    direct = summarize(serve_trace(engine, reqs, wait_until=clock.wait_until))
    assert {k: row[k] for k in SUMMARY_FIELDS} == pytest.approx(direct, rel=1e-12)
    settings = out["report"]["config"]["engine"]
    assert settings["num_blocks"] == 48
    assert settings["max_num_batched_tokens"] == 64
    assert settings["max_model_len"] == 2048
    timeline = out["timelines"]["sim-bs8+prefix"]
    assert len(timeline["t_ms"]) == row["steps"]
    assert max(timeline["allocated_tokens"]) <= 48 * 8
    assert 0 < row["kv_utilization"] <= 1


def test_prefix_caching_off_gives_no_hits_and_more_memory_fewer_preemptions() -> None:
    off, _ = serve(num_blocks=48, max_num_seqs=8, prefix_caching=False)
    assert off["prefix_hit_rate"] == 0
    assert off["backend"] == "sim-bs8"
    tight, _ = serve(num_blocks=48, max_num_seqs=8)
    roomy, _ = serve(num_blocks=4096, max_num_seqs=8)
    assert roomy["preemptions"] == 0 < tight["preemptions"]


def test_a_request_longer_than_max_model_len_is_counted_not_replayed() -> None:
    trace = from_lengths([(100, 10), (3000, 40), (50, 5)], arrivals_ms=[0.0, 1.0, 2.0])
    cfg = SimulationConfig(modes=("serve",), max_model_len=2048, cost=COST)
    report, _ = run_simulation(trace, cfg)
    (row,) = report["serving"]
    assert row["requests"] == 2
    assert row["requests_rejected"] == 1
    assert row["max_request_tokens"] == 2048
    assert row["longest_rejected_tokens"] == 3040
    (warning,) = report["warnings"]
    assert "1 requests of more than 2,048 tokens" in warning
    assert "the longest has 3,040" in warning


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["simulate", *argv])


def test_knobs_take_the_engines_names_and_defaults() -> None:
    cfg = config_from_args(_parse())
    engine = EngineConfig()
    assert cfg.max_num_seqs == engine.max_num_seqs == 64
    assert cfg.max_num_batched_tokens is engine.max_num_batched_tokens is None
    assert cfg.enable_chunked_prefill is engine.enable_chunked_prefill is True
    assert cfg.watermark == engine.watermark
    assert cfg.preemption_mode == engine.preemption_mode
    assert cfg.serve_policy == engine.eviction_policy
    assert cfg.prefix_caching is engine.enable_prefix_caching is True
    built = dataclasses.asdict(config_from_args(_parse("--num-blocks", "100")).engine_config(100))
    assert built["num_blocks"] == 100
    cfg = config_from_args(
        _parse(
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
            "4096",
            "--preemption-mode",
            "swap",
            "--num-host-blocks",
            "32",
            "--watermark",
            "0.05",
        )
    )
    assert cfg.engine_config(10) == EngineConfig(
        num_blocks=10,
        enable_chunked_prefill=False,
        max_num_batched_tokens=4096,
        preemption_mode="swap",
        num_host_blocks=32,
        watermark=0.05,
    )


def test_baselines_read_the_same_knob_values() -> None:
    cfg = SimulationConfig(
        modes=("serve", "baselines"), block_sizes=(8,), kv_tokens=8192, max_num_seqs=2, cost=COST
    )
    report, timelines = run_simulation(TRACE, cfg)
    rows = report["serving"] + report["baselines"]
    assert [r["backend"] for r in report["baselines"]] == [
        "paged-bs8",
        "contiguous-max",
        "contiguous-pow2",
        "contiguous-oracle",
    ]
    for row in rows:
        assert row["mean_batch"] <= 2, row["backend"]
        assert row["requests"] == len(TRACE)
    assert set(timelines) == {r["backend"] for r in rows}


@pytest.mark.parametrize(
    ("flag", "expect"),
    [
        (["--max-batched-tokens", "4096"], "--max-batched-tokens was retired: use "),
        (["--chunked-prefill"], "--chunked-prefill was retired: chunked prefill is on"),
        (["--num-blocks", "10", "--kv-tokens", "160"], "not allowed with argument"),
        (["--preemption-mode", "swap"], "preemption_mode='swap' needs num_host_blocks > 0"),
        (
            ["--no-enable-chunked-prefill", "--max-num-batched-tokens", "100"],
            "max_num_batched_tokens: expected >= max_model_len",
        ),
    ],
)
def test_retired_and_contradicting_flags_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], flag: list[str], expect: str
) -> None:
    argv = ["simulate", "--num-requests", "20", "--mode", "serve", "--no-progress", *flag]
    rc: object
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("pagedkv simulate: error: ")
    assert err.count("\n") == 1
    assert expect in err


def test_serve_json_has_the_summary_fields(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--num-requests", "30", "--mode", "serve", "--no-progress"]
    assert main([*argv, "--num-blocks", "64", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["serving"]
    assert set(SUMMARY_FIELDS) <= set(row)
    assert report["config"]["engine"]["num_blocks"] == 64
    assert "baselines" not in report
