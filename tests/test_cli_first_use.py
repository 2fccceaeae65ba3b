"""The CLI as a new user meets it: mistakes caught before the model loads (one line, exit 2),
progress while it loads, sizes with units, the default model's hub id, truthful help texts,
the thread default, a prompt exit, and a chat that survives Ctrl-C.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pagedkv import cli_setup
from pagedkv.cli import build_parser, main
from pagedkv.cli_options import parse_bytes

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random", "--threads", "1"]


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every way a command loads a model raises; returns the names it was asked to load."""
    import pagedkv.engine  # imported first: its modules bind the real load_model for good
    import pagedkv.models

    asked: list[str] = []

    def refuse(name: Any = None, *args: Any, **kwargs: Any) -> Any:
        asked.append(str(name))
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pagedkv.models, "load_model", refuse)
    monkeypatch.setattr(pagedkv.models, "tiny_random_llama", refuse)
    return asked


@pytest.fixture
def busy_port() -> Any:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


# ------------------------------------------------------------------- item 9: check before load
BAD = [
    (["generate", "hi", "--num-blocks", "0"], "num_blocks"),
    (["generate", "hi", "--max-tokens", "0"], "max_tokens"),
    (["generate", "hi", "--backend", "cuda"], "--backend: unknown attention backend 'cuda'"),
    (["generate", "hi", "--eviction-policy", "nope"], "--eviction-policy: unknown eviction"),
    (["chat", "--max-tokens", "0"], "max_tokens"),
    (["serve", "--num-blocks", "0"], "num_blocks"),
    (["serve", "--backend", "cuda"], "--backend"),
    (["serve", "--host", "no-such-host.invalid"], "--host: cannot resolve"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--kv-remote", "embedded:abc"], "embedded:PORT"),
    (["generate", "hi", "--kv-remote", "http://x"], "redis://"),
    (["demo", "--num-blocks", "0"], "num_blocks"),
    (["demo", "--max-tokens", "0"], "max_tokens"),
    (["demo", "--policy", "nope"], "--policy: unknown eviction policy 'nope'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
@pytest.mark.parametrize("model", ["tiny-random", "default"])
def test_mistakes_are_refused_before_the_model_loads(
    argv: list[str],
    message: str,
    model: str,
    no_model_load: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*argv, "--model", model, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pagedkv {argv[0]}: error: "), err
    assert err.count("\n") == 1, err
    assert message in err
    assert no_model_load == []


def test_a_port_in_use_is_refused_before_the_model_loads(
    busy_port: int, no_model_load: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", str(busy_port), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"pagedkv serve: error: cannot listen on 127.0.0.1:{busy_port}: "
        "Address already in use\n"
    )
    assert no_model_load == []


def test_serve_mistake_from_the_real_command_is_one_line(busy_port: int) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pagedkv.cli", "serve", "--port", str(busy_port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"pagedkv serve: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    ]


# --------------------------------------------------------------- item 10: progress and summary
def test_loading_says_what_it_loads_and_shows_the_conversion_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    import pagedkv.models
    from pagedkv.models import tiny_random_llama

    def load(name: Any = None, **kwargs: Any) -> Any:
        logging.getLogger("pagedkv.models.cache").info("  2/3 dequantizing the weights")
        return tiny_random_llama(0)

    monkeypatch.setattr(pagedkv.models, "load_model", load)
    loaded = cli_setup.load_cli_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "loading model HuggingFaceTB/SmolLM2-135M-Instruct (float32) ..."
    assert err[1] == "  2/3 dequantizing the weights"
    assert err[2].startswith(f"loaded {loaded.name} in ")
    assert err[2].endswith(" s")
    # the engine's default backend ("auto") compiles its CPU kernel on a machine's first run:
    # said before it happens, not left as a silent pause
    assert err[3].startswith("preparing the CPU attention kernel (its first build")
    assert err[4].startswith("CPU attention kernel ready in ")
    assert len(err) == 5
    assert logging.getLogger("pagedkv.models").handlers == []  # the CLI's handler is removed
    cli_setup.load_cli_model("HuggingFaceTB/SmolLM2-135M-Instruct", backend="torch")
    again = capsys.readouterr().err.splitlines()
    assert again[-1].startswith(f"loaded {loaded.name} in ")  # and no kernel: torch needs none
    assert not any("kernel" in line for line in again)


def test_serve_summary_names_model_pool_length_and_tiers(tmp_path: Path) -> None:
    from pagedkv.engine import LLMEngine
    from pagedkv.models import tiny_random_llama
    from pagedkv.server.cli import startup_summary

    engine = LLMEngine(tiny_random_llama(0), num_blocks=40, kv_disk_path=str(tmp_path / "kv"))
    try:
        line = startup_summary(engine, "tiny", "http://127.0.0.1:8000", 1)
    finally:
        engine.close()
    assert line.startswith(f"serving {engine.loaded.name} as 'tiny' at http://127.0.0.1:8000/v1")
    assert f"max_model_len {engine.max_model_len}" in line
    assert "KV pool 40 blocks x 16 tokens = 640 tokens" in line
    assert f"one request up to {engine.max_request_tokens}" in line
    assert f"KV tiers: disk {tmp_path / 'kv'}" in line


# ---------------------------------------------------------------- item 11: threads and exit
@pytest.mark.parametrize(
    ("cores", "load", "expected"), [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 5.0, 1), (8, 3.2, 5)]
)
def test_auto_threads_leave_busy_cores_alone(
    monkeypatch: pytest.MonkeyPatch, cores: int, load: float, expected: int
) -> None:
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert cli_setup.default_threads() == expected


def test_threads_option_values(capsys: pytest.CaptureFixture[str]) -> None:
    parse = build_parser().parse_args
    assert parse(["generate", "x"]).threads is None  # auto
    assert parse(["generate", "x", "--threads", "auto"]).threads is None
    assert parse(["demo", "--threads", "0"]).threads == 0
    with pytest.raises(SystemExit) as exc:
        main(["generate", "x", "--threads", "-1"])
    assert exc.value.code == 2
    assert "argument --threads: expected 'auto' or an int >= 0" in capsys.readouterr().err


def test_the_program_ends_at_once_after_its_atexit_handlers() -> None:
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "sys.argv = ['pagedkv', 'demo', '--blocks', '--json']\n"
        "from pagedkv.cli import main\n"
        "main()\n"
        "print('main returned')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("{")
    assert "main returned" not in r.stdout
    assert r.stderr == "atexit ran\n"


# ------------------------------------------------------------------------- item 12: units
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("123", 123),
        ("1GB", 10**9),
        ("1gb", 10**9),
        ("1GiB", 1 << 30),
        ("512 MiB", 512 << 20),
        ("1.5KiB", 1536),
        ("2KB", 2000),
        ("3B", 3),
    ],
)
def test_sizes_take_units(text: str, value: int) -> None:
    assert parse_bytes(text) == value


def test_bad_sizes_and_units_reach_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["serve", "--kv-cache-memory", "1GiB", "--kv-host-bytes", "2GB"]
    )
    config = cli_setup.engine_config_from(args)
    assert (config.kv_cache_memory, config.kv_host_bytes) == (1 << 30, 2 * 10**9)
    for bad in ("1GBx", "-1", "GB", "1 XB"):
        with pytest.raises(SystemExit) as exc:
            main(["serve", f"--kv-cache-memory={bad}"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "KiB, MiB, GiB" in err
        assert repr(bad) in err


# ------------------------------------------------------------------------ item 13: help texts
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("pagedkv ")


@pytest.mark.parametrize("command", ["generate", "chat", "serve", "demo"])
def test_help_is_plain_and_consistent(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for markup in ("``", ":class:", ":func:", ":mod:", ":meth:"):
        assert markup not in text, markup
    assert "(default: None)" not in text
    assert "(default: True)" not in text
    assert "pagedkv generate: error" not in text or command == "generate"


def test_top_level_help_is_true(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("generate", "chat", "demo", "simulate", "serve", "--version"):
        assert command in text
    assert "pagedkv COMMAND --help" in text
    assert "every command and option" not in (ROOT / "README.md").read_text()


def test_unknown_option_points_at_the_commands_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--prot", "1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "pagedkv serve: error: unrecognized arguments: --prot 1 (see pagedkv serve --help)\n"
    )


# ------------------------------------------------------------------ item 16: chat and Ctrl-C
def test_ctrl_c_in_chat_keeps_the_conversation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # signals reach only the main thread (pytest and its xdist workers run tests there)
    assert threading.current_thread() is threading.main_thread()
    import pagedkv.engine
    from pagedkv.engine import LLMEngine

    seen: list[list[dict[str, str]]] = []
    render = pagedkv.engine.apply_chat_template

    def recording(tokenizer: Any, messages: list[dict[str, str]], *args: Any) -> Any:
        seen.append([dict(m) for m in messages])
        return render(tokenizer, messages, *args)

    step, steps = LLMEngine.step, []

    def step_with_ctrl_c(self: LLMEngine) -> Any:
        if "chat-2" in self.requests:
            steps.append(1)
            if len(steps) == 10:  # the second answer has streamed a few tokens
                os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(pagedkv.engine, "apply_chat_template", recording)
    monkeypatch.setattr(LLMEngine, "step", step_with_ctrl_c)
    monkeypatch.setattr("sys.stdin", io.StringIO("first\nsecond\nthird\n"))
    assert main(["chat", *TINY, "--temperature", "0", "--max-tokens", "16"]) == 0
    out, err = capsys.readouterr()
    assert "[answer interrupted: the partial answer stays in the conversation]" in err
    first, second, third = seen
    assert first == [{"role": "user", "content": "first"}]
    assert second[:1] == first
    assert second[2] == {"role": "user", "content": "second"}
    assert third[:3] == second  # the history before the interrupted turn is all there
    partial = third[3]
    assert partial["role"] == "assistant"
    assert partial["content"]
    shown = out.split("\n", 1)[1]  # after the first answer's line
    assert shown.startswith(partial["content"])  # what was shown is what is kept
    assert third[4] == {"role": "user", "content": "third"}


# ------------------------------------------------------------------ item 14: get_tokenizer
def test_llm_get_tokenizer_is_the_models_tokenizer() -> None:
    from pagedkv.engine import LLM
    from pagedkv.models import tiny_random_llama

    loaded = tiny_random_llama(0)
    llm = LLM(loaded, num_blocks=16)
    assert llm.get_tokenizer() is loaded.tokenizer is llm.tokenizer
    ids = llm.get_tokenizer().encode("hi", add_special_tokens=False)
    assert llm.generate(ids)[0].prompt_token_ids == ids


def test_ctrl_c_at_the_terminal_prompt_keeps_the_conversation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    import pagedkv.engine

    seen: list[list[dict[str, str]]] = []
    render = pagedkv.engine.apply_chat_template

    def recording(tokenizer: Any, messages: list[dict[str, str]], *args: Any) -> Any:
        seen.append([dict(m) for m in messages])
        return render(tokenizer, messages, *args)

    typed: list[Any] = ["first", KeyboardInterrupt(), "second", EOFError()]

    def fake_input(prompt: str = "") -> str:
        item = typed.pop(0)
        if isinstance(item, BaseException):
            raise item
        return str(item)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(pagedkv.engine, "apply_chat_template", recording)
    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr("sys.stdin", Terminal())
    assert main(["chat", *TINY, "--temperature", "0", "--max-tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert "[Ctrl-C: the conversation is kept; /exit or Ctrl-D ends it]" in err
    first, second = seen
    assert second[:2] == [first[0], second[1]]
    assert second[1]["role"] == "assistant"
    assert second[2] == {"role": "user", "content": "second"}
