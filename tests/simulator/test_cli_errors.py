"""Ordinary mistakes at ``pagedkv simulate`` / ``pagedkv demo --blocks``: one line on stderr
(``pagedkv COMMAND: error: ...``), exit status 2, never a traceback, and output paths checked
before anything runs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pagedkv.simulator.command as command
import pagedkv.simulator.workload_flags as workload_flags
from pagedkv.cli import main

TINY = ["simulate", "--num-requests", "40", "--rate", "20", "--no-progress", "--kv-tokens", "8192"]


def one_line_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], command_name: str = "simulate"
) -> str:
    """Run ``argv``; assert exit 2 and a single-line error; return the message."""
    rc: object
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from parse_args
        rc = exc.code
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"pagedkv {command_name}: error: "), err
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the simulation starts: the error must come before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the simulation ran before the error was found")

    monkeypatch.setattr(command, "run_simulation", refuse)
    monkeypatch.setattr(workload_flags, "generate", refuse)


def mooncake(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------ trace files
def test_trace_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, [*TINY, "--trace", str(tmp_path)])
    assert "is a directory" in err


def test_trace_that_is_binary_or_compressed_binary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "t.jsonl"
    raw.write_bytes(bytes(range(256)) * 4)
    assert "is a binary file" in one_line_error(capsys, [*TINY, "--trace", str(raw)])
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(bytes(range(256)) * 4))
    assert "is a binary file" in one_line_error(capsys, [*TINY, "--trace", str(packed)])
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"input_length": 4, "hash_ids": [1]}\n{"x": "\xe9\xe9"}\n')
    assert "l.jsonl:2: not UTF-8 text" in one_line_error(capsys, [*TINY, "--trace", str(latin)])
    broken = tmp_path / "b.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"timestamp": 0}\n' * 100)[:30])
    assert "cannot read trace" in one_line_error(capsys, [*TINY, "--trace", str(broken)])


def test_missing_trace_field_names_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = mooncake(
        tmp_path / "m.jsonl",
        [
            {"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]},
            {"timestamp": 1, "output_length": 3, "hash_ids": [1]},
        ],
    )
    err = one_line_error(capsys, [*TINY, "--trace", str(f)])
    assert "m.jsonl:2: bad Mooncake record: missing field 'input_length'" in err


def test_unsorted_timestamps_are_refused_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = mooncake(
        tmp_path / "u.jsonl",
        [
            {"timestamp": 5, "input_length": 5, "hash_ids": [1]},
            {"timestamp": 9, "input_length": 5, "hash_ids": [1]},
            {"timestamp": 2, "input_length": 5, "hash_ids": [1]},
        ],
    )
    err = one_line_error(capsys, [*TINY, "--trace", str(f)])
    assert "u.jsonl:3: timestamp 2 is earlier than the previous request's 9" in err
    a = tmp_path / "a.csv"
    a.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0000000,10,1\n"
        "2023-11-16 18:17:03.0000000,10,1\n"
    )
    assert "a.csv:3: timestamp" in one_line_error(capsys, [*TINY, "--trace", str(a)])


# ----------------------------------------------------------------------------- output paths
@pytest.mark.usefixtures("no_run")
@pytest.mark.parametrize(
    ("flag", "where", "expect"),
    [
        ("--json", "missing/out.json", "does not exist"),
        ("--csv", "missing/out.csv", "does not exist"),
        ("--plot", "missing/out.png", "does not exist"),
        ("--json", ".", "is a directory"),
        ("--csv", ".", "is a directory"),
        ("--plot", ".", "is a directory"),
        ("--json", "file/out.json", "is a file, not a folder"),
    ],
)
def test_unwritable_output_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, where: str, expect: str
) -> None:
    (tmp_path / "file").write_text("")
    err = one_line_error(capsys, [*TINY, flag, str(tmp_path / where)])
    assert flag in err
    assert expect in err


@pytest.mark.usefixtures("no_run")
def test_plot_extension_and_missing_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = one_line_error(capsys, [*TINY, "--plot", str(tmp_path / "x.txt")])
    assert "'.txt' is not an image type" in err
    assert ".png" in err
    assert "no extension" in one_line_error(capsys, [*TINY, "--plot", str(tmp_path / "x")])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    err = one_line_error(capsys, [*TINY, "--plot", str(tmp_path / "x.png")])
    assert "--plot needs matplotlib" in err
    assert "pagedkv[plot]" in err


@pytest.mark.usefixtures("no_run")
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--json", "-", "--csv", "-"], "would both write to stdout"),
        (["--quiet"], "the run would show nothing"),
    ],
)
def test_contradicting_outputs(
    capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    assert expect in one_line_error(capsys, [*TINY, *args])


# ---------------------------------------------------------------------------- flag values
@pytest.mark.usefixtures("no_run")
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--cost", "1,2"], "argument --cost: cost model needs 3 comma-separated numbers"),
        (["--cost", "-5,0.1,0.2"], "argument --cost: cost model base_ms must be >= 0, got -5"),
        (["--cost", "a,b,c"], "argument --cost: cost model 'a,b,c'"),
        (["--mode", ""], "argument --mode: expected a comma-separated list of modes"),
        (["--mode", "serve,fast"], "unknown mode 'fast'; choose from hitrate, serve, baselines"),
        (["--capacity", "1.5"], "argument --capacity: expected an integer, got '1.5'"),
        (["--capacity", ","], "argument --capacity: expected comma-separated positive integers"),
        (["--capacity", "0"], "argument --capacity: values must be positive, got 0"),
        (["--block-size", "-16"], "argument --block-size: values must be positive, got -16"),
        (["--limit", "-3"], "argument --limit: must be >= 0, got -3"),
        (["--num-requests", "0"], "argument --num-requests: must be >= 1, got 0"),
        (["--rate", "0"], "argument --rate: must be > 0"),
        (["--warmup", "1"], "argument --warmup: must be >= 0 and < 1"),
        (["--arrival-scale", "nan"], "argument --arrival-scale: must be > 0"),
    ],
)
def test_bad_values_are_refused(
    capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    assert expect in one_line_error(capsys, [*TINY, *args])


@pytest.mark.usefixtures("no_run")
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--serve-policy", "mru"], "unknown serving policy 'mru'"),
        (["--policy", "lru,mru"], "unknown policy ['mru']"),
        (["--capacity-tokens", "8"], "capacity of 8 tokens holds no block of 16 tokens"),
    ],
)
def test_inconsistent_configuration_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], args: list[str], expect: str
) -> None:
    assert expect in one_line_error(capsys, [*TINY, *args])


def test_block_size_larger_than_serving_memory_explains(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--num-requests", "40", "--no-progress", "--block-size", "100000"]
    err = one_line_error(capsys, argv)
    assert "holds 0 blocks of 100,000 tokens" in err
    assert "--block-size <= 16,384" in err
    assert "--kv-tokens >= 100,000" in err
    err = one_line_error(capsys, [*argv, "--kv-tokens", "50000"])
    assert "--kv-tokens of 50,000 tokens holds 0 blocks" in err


def test_absurd_num_requests_is_refused_by_memory_estimate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pagedkv.simulator import guards
    from pagedkv.simulator.synthetic import SyntheticSpec

    monkeypatch.setattr(guards, "available_memory", lambda: 2**30)  # 1 GiB free
    err = one_line_error(capsys, [*TINY, "--num-requests", "100000000"])
    assert "--num-requests 100,000,000 needs about" in err
    assert "would fit" in err
    guards.check_workload_size(SyntheticSpec(num_requests=200_000), available=2**40)  # fits
    assert guards.estimate_workload_bytes(SyntheticSpec(num_requests=1000)) > 1000 * 300


def test_demo_blocks_refuses_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["demo", "--blocks", "--requests", "-5"], "demo")
    assert "--requests must be positive, got -5" in err
    assert "unknown eviction_policy 'mru'" in one_line_error(
        capsys, ["demo", "--blocks", "--policy", "mru"], "demo"
    )


# ------------------------------------------------------------------------- a closed pipe
def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    """``pagedkv simulate ... | head`` : the reader goes away; no traceback, status 141."""
    argv = [sys.executable, "-m", "pagedkv.cli", *TINY, "--mode", "hitrate", "--policy", "lru"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # before the table is written: the write must fail
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""
    shell = subprocess.run(
        ["bash", "-c", f"{' '.join(argv)} --json - | head -1; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shell.returncode in (0, 141)  # 0 when the output fit the pipe before head exited
    assert shell.stdout == "{\n"
    assert shell.stderr == ""
