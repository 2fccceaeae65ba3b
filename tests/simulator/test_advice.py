"""Overload detection and advice (``pagedkv.simulator.advice``), by hand and through the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pagedkv.cli import main
from pagedkv.simulator.advice import is_overloaded, serving_warnings
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.trace import from_lengths

# 101 requests of 100 prompt tokens over 100 s: 1 request/s offered; alone: 5 + 0.1*100 = 15 ms
TRACE = from_lengths([(100, 10)] * 101, arrivals_ms=[1000.0 * i for i in range(101)])


def row(ttft_ms: float, duration_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "paged-bs16",
        "ttft_ms_p50": ttft_ms,
        "duration_s": duration_s,
        "throughput_req_s": 101 / duration_s,
        "mean_batch": 3.0,
        "capacity_tokens": 4096,
        **extra,
    }


def test_overloaded_needs_long_queues_and_an_undrained_backlog() -> None:
    alone, span = 15.0, 100.0
    assert not is_overloaded(row(40.0, 100.5), alone, span)  # keeps up
    assert not is_overloaded(row(5000.0, 101.0), alone, span)  # slow, but drained in time
    assert not is_overloaded(row(120.0, 300.0), alone, span)  # 8x alone: not dominated by queue
    assert is_overloaded(row(5000.0, 300.0), alone, span)
    assert not is_overloaded(row(float("nan"), 300.0), alone, span)


def test_warning_says_what_would_fit() -> None:
    rows = [row(3_600_000.0, 250.0), row(30.0, 100.2, backend="contiguous-oracle")]
    warnings = serving_warnings(rows, TRACE, LinearCostModel())
    assert [r["overloaded"] for r in rows] == [True, False]
    (text,) = warnings
    assert "paged-bs16 is overloaded: median TTFT 60.0 min (15.0 ms" in text
    assert "serves 0.404 of 1 requests/s offered" in text
    assert "about 0.323 requests/s (e.g. --arrival-scale 0.32)" in text
    assert "try --kv-tokens 8192" in text  # the batch is far below --max-num-seqs


def test_batch_limited_overload_does_not_ask_for_memory() -> None:
    (text,) = serving_warnings(
        [row(9000.0, 250.0, mean_batch=250.0)], TRACE, LinearCostModel(), max_num_seqs=256
    )
    assert "more KV memory would not help" in text
    assert "--max-num-seqs" in text


def test_rejected_requests_are_explained() -> None:
    (text,) = serving_warnings([row(30.0, 100.2, requests_rejected=3)], TRACE, LinearCostModel())
    assert "3 requests never fit in 4,096 KV tokens" in text


def test_cli_reports_an_overloaded_replay(capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "simulate",
        "--num-requests",
        "120",
        "--no-progress",
        "--mode",
        "serve",
        "--kv-tokens",
        "4096",
        "--turns",
        "1",
    ]
    assert main([*base, "--rate", "50"]) == 0
    out = capsys.readouterr().out
    assert "note: sim-bs16+prefix is overloaded" in out
    assert "(e.g. --rate " in out
    assert main([*base, "--rate", "50", "--json", "-"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["serving"][0]["overloaded"] is True
    assert report["warnings"]
    assert "is overloaded" in captured.err
    assert main([*base, "--rate", "0.2", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["serving"][0]["overloaded"] is False
    assert "overloaded" not in captured.err
