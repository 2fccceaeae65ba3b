"""``pagedkv replay``: the real engine (a tiny random Llama) on the workload ``simulate`` takes,
reporting under the simulate serve row's field names; mistakes are one line before the model
loads."""

from __future__ import annotations

import json

import pytest

import pagedkv.cli_setup as cli_setup
from pagedkv.cli import main
from pagedkv.simulator.engine_replay import SUMMARY_FIELDS

WORKLOAD = [
    "--num-requests",
    "6",
    "--rate",
    "4",
    "--turns",
    "2",
    "--system-prompt",
    "32",
    "--max-len",
    "160",
    "--dataset",
    "alpaca",
    "--arrival-scale",
    "100",  # a few seconds of arrivals become a few hundredths
    "--no-progress",
]
ENGINE = ["--num-blocks", "40", "--max-num-seqs", "4", "--block-size", "8"]
TINY = ["--model", "tiny-random", "--threads", "1"]


def test_replay_reports_the_simulate_serve_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", *TINY, *WORKLOAD, *ENGINE, "--json", "-"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert main(["simulate", "--mode", "serve", *WORKLOAD, *ENGINE, "--json", "-"]) == 0
    sim = json.loads(capsys.readouterr().out)
    (real_row,), (sim_row,) = real["serving"], sim["serving"]
    assert set(real_row) == set(sim_row)
    assert set(SUMMARY_FIELDS) <= set(real_row)
    assert real_row["requests"] == sim_row["requests"] == 6
    assert real_row["backend"] == "real-bs8+prefix"
    assert real_row["prefix_hit_rate"] > 0  # the system prompt, computed by the model
    engine = real["config"]["engine"]
    assert engine["num_blocks"] == 40
    assert engine["block_size"] == 8
    assert engine["max_num_seqs"] == 4
    assert engine["max_num_batched_tokens"] == 2048
    assert engine["enable_chunked_prefill"] is True
    assert engine["max_model_len"] == 512  # the tiny model's
    assert set(engine) == set(sim["config"]["engine"])


def test_replay_table_and_refused_request(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", *TINY, *WORKLOAD, *ENGINE, "--max-model-len", "100"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "== replay on the real engine: tiny-random" in out
    assert "--num-blocks 40 --block-size 8 --max-num-seqs 4" in " ".join(out.split())
    note = " ".join(out.split("\nnote: ", 1)[1].split())
    assert "of more than 100 tokens (prompt + output; the longest has" in note
    assert "were not replayed" in note


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--chunked-prefill"], "--chunked-prefill was retired"),
        (["--preemption-mode", "swap"], "needs num_host_blocks > 0"),
        (["--serve-policy", "mru"], "unknown serving policy 'mru'"),
        (["--json", "/nonexistent/x.json"], "--json /nonexistent/x.json: the folder"),
        (["--arrival-scale", "0"], "argument --arrival-scale: must be > 0"),
    ],
)
def test_mistakes_are_one_line_before_the_model_loads(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expect: str,
) -> None:
    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the model loaded before the error was found")

    monkeypatch.setattr(cli_setup, "load_cli_model", refuse)
    rc: object
    try:
        rc = main(["replay", *TINY, *WORKLOAD, *args])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("pagedkv replay: error: ")
    assert err.count("\n") == 1
    assert expect in err


def test_help_names_the_engine_knobs_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-num-batched-tokens", "--no-enable-chunked-prefill", "--arrival-scale"):
        assert flag in text
    assert "--chunked-prefill " not in text  # retired: not offered
    assert "(default: None)" not in text
    assert "(default: True)" not in text
    assert "``" not in text
