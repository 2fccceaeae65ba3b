"""``pagedkv demo``: the engine serving the built-in chat batch (on the tiny random model here).

The demo's claims are checked, not just its output: later requests hit the shared system prompt
in the prefix cache, the n=2 request forks, the small pool forces preemptions, and preempted
requests still get exactly the answers they get from a pool large enough for everyone.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pagedkv.cli import main
from pagedkv.demo_engine import REQUESTS, run_engine_demo

MAX_TOKENS = 16


def check_output(text: str, s: dict[str, Any]) -> None:
    """Every printed line agrees with the others and with the statistics returned."""
    for r in REQUESTS:
        assert r.question in text
    # answers in request order: req-1 .. req-8, each question on its request's line
    heads = [line.split()[0] for line in text.splitlines() if line.startswith("req-")]
    assert heads == [f"req-{i + 1}" for i in range(len(REQUESTS))]
    for i, r in enumerate(REQUESTS):
        assert f"{f'req-{i + 1}':<6} {r.question}" in text
    rows = {
        line[2:35].strip(): line[35:]
        for line in text.split("engine statistics", 1)[1].splitlines()
        if line.startswith("  ")
    }
    assert rows["requests / sequences"].startswith(f"{s['requests']} / {s['sequences']} ")
    cached = sum(
        int(m) for m in re.findall(r"prompt tokens, (\d+) cached", text)
    )  # per-request numbers add up to the total
    assert cached == s["cached_prompt_tokens"]
    assert rows["prompt tokens from prefix cache"].startswith(f"{cached} of {s['prompt_tokens']} ")
    checked = sum(1 for r in REQUESTS if r.expect)
    assert rows["answers with the expected fact"] == (
        f"{s['answers_correct']} of {checked} quiz questions "
        f"({len(REQUESTS) - checked} open question not checked)"
    )
    assert rows["preemptions (recompute)"].startswith(f"{s['preemptions']} ")
    assert text.count("-> ") == sum(r.n for r in REQUESTS)
    assert "#2-> " in text  # the n=2 request shows both samples
    stats_part = text.split("engine statistics", 1)[1]
    for row in (
        "requests / sequences",
        "prompt / generated tokens",
        "prompt tokens from prefix cache",
        "preemptions",
        "forks / copy-on-write copies",
        "throughput",
        "time to first token",
        "steps / time",
    ):
        assert row in stats_part


def check_stats(s: dict[str, Any]) -> None:
    assert s["requests"] == len(REQUESTS) == 8
    assert s["sequences"] == 9
    assert s["errors"] == 0
    assert s["forks"] == 1
    assert s["preemptions"] >= 1
    assert s["cached_prompt_tokens"] > 0
    assert 0 < s["prefix_hit_rate"] < 1
    assert sorted(map(len, s["answers"].values())) == [1] * 7 + [2]
    assert 0 < s["generated_tokens"] <= 9 * MAX_TOKENS
    assert s["ttft_mean"] is not None
    assert s["tokens_per_second"] > 0
    assert s["steps"] >= len(REQUESTS)


def test_engine_demo_does_what_it_says() -> None:
    """One test, so that pytest-xdist runs the demo in one worker only."""
    from pagedkv.cli_setup import load_cli_model, torch_threads

    tiny = load_cli_model("tiny-random")
    buf = io.StringIO()
    with torch_threads(1), contextlib.redirect_stdout(buf):  # as `pagedkv demo` runs it
        small = run_engine_demo(model=tiny, max_tokens=MAX_TOKENS)
    check_stats(small)
    check_output(buf.getvalue(), small)
    # preempted requests get exactly the answers they get from a pool that fits everyone
    with torch_threads(1):
        roomy = run_engine_demo(model=tiny, max_tokens=MAX_TOKENS, num_blocks=400, verbose=False)
    assert roomy["preemptions"] == 0 < small["preemptions"]
    assert roomy["answers"] == small["answers"]  # greedy and seeded samples alike


def test_demo_command_json_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "tiny-random", "--json", "--max-tokens", "4"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["requests"] == 8
    assert stats["generated_tokens"] > 0
    assert main(["demo", "--requests", "5"]) == 2  # a --blocks option without --blocks
    assert capsys.readouterr().err == (
        "pagedkv demo: error: --requests applies to the block-manager tour (--blocks)\n"
    )
    assert main(["demo", "--model", "/nonexistent/model"]) == 2
    assert "not found" in capsys.readouterr().err


def test_block_manager_tour_is_still_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--blocks", "--requests", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pool: ")
    assert "prefix hit rate (tokens)" in out


def test_block_manager_tour_lines_agree(capsys: pytest.CaptureFixture[str]) -> None:
    """Every fork shown belongs to a request shown just above it, and the block counts add up."""
    assert main(["demo", "--blocks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown: list[str] = []
    for line in lines:
        if m := re.match(r"(req\d+): ", line):
            shown.append(m[1])
        if m := re.match(r"  (req\d+) forked into (req\d+)\.b;", line):
            assert m[1] == m[2] == shown[-1], line
    assert len(shown) > 4
    value = {
        line[2:31].strip(): int(line[31:].split()[0])
        for line in lines
        if line.startswith(("  blocks ", "  cached blocks reused"))
    }
    assert (
        value["blocks released"]
        == value["blocks allocated"] + value["cached blocks reused by hits"]
    )
    assert value["cached blocks reused by hits"] > 0
