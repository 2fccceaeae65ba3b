"""``pagedkv generate`` and ``pagedkv chat``: a model's answer streamed in the terminal.

Both run an :class:`~pagedkv.engine.LLMEngine` in this process and step it in a loop, writing
each step's new text (``delta_text``) to stdout as soon as it is final, then one statistics line
to stderr (tokens, time to first token, tokens/s, prompt tokens served from the prefix cache), so
``pagedkv generate ... > answer.txt`` keeps only the answer.

``chat`` keeps the conversation and renders it with the model's chat template every turn, so
each turn's prompt starts with the previous one and is mostly served from the prefix cache. It
reads one user message per line, from a terminal or a pipe (``printf 'Hi\\n/exit\\n' | pagedkv
chat``); ``/exit``, ``/quit`` or end of input ends it, ``/reset`` forgets the conversation, and
Ctrl-C while an answer streams stops that answer only: the conversation goes on, with the
partial answer kept as the assistant's turn (a line on stderr says so); at the prompt of a
terminal it ends nothing either (one that comes just after an answer ended lands there).

Ordinary mistakes (a model path that does not exist, an out-of-range value) are reported as one
``pagedkv COMMAND: error: ...`` line and exit status 2, before the model loads where they can be
told without it. ``--model tiny-random`` is a seeded
random-weight tiny Llama with a byte tokenizer, built in code: offline and fast, for tests (its
text is gibberish).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from pagedkv.cli_options import (
    add_engine_arguments,
    add_model_arguments,
    add_sampling_arguments,
    plain,
)
from pagedkv.cli_setup import (
    engine_config_from,
    load_cli_model,
    sampling_params_from,
    torch_threads,
)
from pagedkv.errors import InvalidArgumentError, PagedKVError

if TYPE_CHECKING:  # the engine imports torch: only when a command runs
    from pagedkv.engine import LLMEngine, RequestOutput, SamplingParams

EXIT_COMMANDS = ("/exit", "/quit", "/bye")
RESET_COMMAND = "/reset"


def build_engine(args: argparse.Namespace) -> tuple[LLMEngine, SamplingParams]:
    """Validate every option first (no model load for a typo), then load and start the engine."""
    from pagedkv.engine import LLMEngine

    params = sampling_params_from(args)
    config = engine_config_from(args)
    model = load_cli_model(args.model, args.dtype, getattr(args, "backend", None))
    engine = LLMEngine(model, config)
    if getattr(args, "chat", None) and not model.has_chat_template:
        raise InvalidArgumentError(
            f"--chat: the model {model.name} has no chat template (use --no-chat)"
        )
    return engine, params


def use_chat_template(args: argparse.Namespace, engine: LLMEngine) -> bool:
    chat = getattr(args, "chat", None)
    return bool(chat) if chat is not None else bool(engine.loaded.has_chat_template)


# ---------------------------------------------------------------------------------- streaming
def stream(
    engine: LLMEngine, request_id: str, prompt: str | list[int], params: SamplingParams, out: TextIO
) -> RequestOutput:
    """Submit one request and step the engine until it finishes, writing its new text to
    ``out`` (flushed) after every step.

    Ctrl-C is taken between steps, never inside one (the engine's state stays consistent): the
    request is aborted (its blocks freed at once) and ``KeyboardInterrupt`` propagates."""
    engine.add_request(request_id, prompt, params)
    final: RequestOutput | None = None
    written: list[str] = []
    interrupted: list[int] = []
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, lambda s, f: interrupted.append(s)) if in_main else None
    try:
        while final is None:
            if interrupted:
                raise AnswerInterrupted("".join(written))
            for o in engine.step():
                if o.request_id != request_id:
                    continue
                if o.outputs[0].delta_text:
                    written.append(o.outputs[0].delta_text)
                    out.write(o.outputs[0].delta_text)
                    out.flush()
                if o.finished:
                    final = o
    except KeyboardInterrupt as exc:  # also one raised inside a step: keep what was shown
        engine.abort(request_id)
        if isinstance(exc, AnswerInterrupted):
            raise
        raise AnswerInterrupted("".join(written)) from exc
    except BaseException:
        engine.abort(request_id)
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
    if final.error is not None:
        raise GenerationError(f"generation failed: {final.error}")
    return final


class GenerationError(PagedKVError):
    """A request failed inside the engine (the engine logged why)."""


class AnswerInterrupted(KeyboardInterrupt):
    """Ctrl-C while an answer streamed; ``text`` is what had been written of it."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def stats_line(o: RequestOutput) -> str:
    """``12 tokens (stop), TTFT 0.21 s, 14.9 tokens/s, prompt 37 tokens (32 cached)``.

    tokens/s counts the tokens after the first over the time after the first (decode speed);
    TTFT is arrival to first token (prompt computation included)."""
    m, c = o.metrics, o.outputs[0]
    n = len(c.token_ids)
    ttft = f"{m.ttft:.2f} s" if m.ttft is not None else "-"
    tpot = m.tpot(n)
    rate = f"{1.0 / tpot:.1f} tokens/s" if tpot else "- tokens/s"
    return (
        f"{n} tokens ({c.finish_reason}), TTFT {ttft}, {rate}, prompt "
        f"{len(o.prompt_token_ids)} tokens ({o.num_cached_tokens} cached)"
    )


def _report(args: argparse.Namespace, line: str) -> None:
    if args.stats:
        print(f"[{line}]", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- generate
def run_generate(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    text = sys.stdin.read().rstrip("\n") if args.prompt == "-" else args.prompt
    if not text.strip():
        raise InvalidArgumentError("prompt: expected some text, got an empty prompt")
    if args.system and args.chat is False:
        raise InvalidArgumentError("--system needs the chat template (drop --no-chat)")
    engine, params = build_engine(args)
    from pagedkv.engine import apply_chat_template

    prompt: str | list[int] = text
    if use_chat_template(args, engine):
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": text})
        prompt = apply_chat_template(engine.tokenizer, messages)
    elif args.system:
        raise InvalidArgumentError(f"--system: the model {engine.loaded.name} has no chat template")
    result = stream(engine, "generate", prompt, params, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    _report(args, stats_line(result))
    return 0


# ------------------------------------------------------------------------------------ chat
def _read_line(interactive: bool) -> str | None:
    """The next user message, or None at end of input."""
    if interactive:
        try:
            return input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def run_chat(args: argparse.Namespace) -> int:
    with torch_threads(args.threads):
        return _chat(args)


def _chat(args: argparse.Namespace) -> int:
    engine, params = build_engine(args)
    if not engine.loaded.has_chat_template:
        raise InvalidArgumentError(f"the model {engine.loaded.name} has no chat template")
    from pagedkv.engine import apply_chat_template

    interactive = sys.stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = list(system)
    if interactive:
        print(
            f"pagedkv chat with {engine.loaded.name}: type a message; /reset forgets the "
            f"conversation, /exit or Ctrl-D ends",
            file=sys.stderr,
        )
    turn, failed = 0, 0
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt:  # e.g. a Ctrl-C meant for an answer that had just ended
            if not interactive:
                print(file=sys.stderr)
                break
            print("\n[Ctrl-C: the conversation is kept; /exit or Ctrl-D ends it]", file=sys.stderr)
            continue
        if line is None or line.strip() in EXIT_COMMANDS:
            break
        if not line.strip():
            continue
        if line.strip() == RESET_COMMAND:
            history = list(system)
            print("[conversation forgotten]", file=sys.stderr)
            continue
        messages = [*history, {"role": "user", "content": line}]
        turn += 1
        try:
            prompt = apply_chat_template(engine.tokenizer, messages)
            result = stream(engine, f"chat-{turn}", prompt, params, sys.stdout)
        except AnswerInterrupted as stop:  # stop this answer only; the conversation goes on
            if stop.text.strip():
                history = [*messages, {"role": "assistant", "content": stop.text}]
                kept = "the partial answer stays in the conversation"
            else:
                kept = "nothing was answered: that message is dropped, the rest is kept"
            print(f"\n[answer interrupted: {kept}]", file=sys.stderr)
            continue
        except PagedKVError as exc:  # e.g. the conversation outgrew the model: say so, go on
            print(f"\npagedkv chat: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(flush=True)
        history = [*messages, {"role": "assistant", "content": result.outputs[0].text}]
        _report(args, stats_line(result))
    return 1 if failed else 0


# ------------------------------------------------------------------------------------ parsers
def add_generate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="stream a model's answer to one prompt",
        description="Generate text for PROMPT and stream it to stdout; statistics go to stderr.",
        epilog=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", metavar="PROMPT", help="the prompt ('-' reads it from stdin)")
    add_model_arguments(p)
    add_sampling_arguments(p, max_tokens=256)
    add_engine_arguments(p)
    p.set_defaults(handler=run_generate)


def add_chat_parser(sub: Any) -> None:
    p = sub.add_parser(
        "chat",
        help="interactive streamed chat in the terminal",
        description="Chat with a model: one message per line on stdin (a terminal or a pipe), "
        "answers streamed to stdout. /reset forgets the conversation; /exit or end "
        "of input ends it.",
        epilog=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    add_sampling_arguments(p, max_tokens=512, chat_flag=False)
    add_engine_arguments(p)
    p.set_defaults(handler=run_chat)
