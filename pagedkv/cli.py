"""The ``pagedkv`` command line: one entry point, subcommands dispatched through argparse.

``generate`` streams a model's answer to one prompt and ``chat`` is an interactive streamed chat
(``pagedkv.chat_cli``); ``demo`` is the engine serving a batch of chat requests on the default
model, ``demo --blocks`` the offline tour of the block manager (``pagedkv.demo``); ``simulate``
is the trace-driven simulator and capacity planner (``pagedkv simulate --help``); ``profile``
times the engine and fits the simulator's step cost model (``pagedkv simulate --cost FILE``);
``replay`` runs a trace through the real engine, as ``simulate --mode serve`` predicts it.

Errors: a bad option or value prints one line, ``pagedkv COMMAND: error: ...``, and exits with
status 2 (argparse's errors included, without the usage block: ``--help`` shows it), and is
checked before the model loads wherever the model is not needed to tell. A closed stdout
(``pagedkv demo | head -1``) ends the command quietly with status 141, like a program killed by
SIGPIPE.

Run as a program (``main()`` without arguments: the ``pagedkv`` script, ``python -m
pagedkv.cli``), the command ends the process itself once its output is flushed and the atexit
handlers have run: the interpreter's teardown of the torch and transformers modules took 2-4 s
more on a busy 2-core machine, after the answer was already printed.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, cast

from pagedkv.errors import PagedKVError

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a program killed by SIGPIPE


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: message``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from pagedkv import chat_cli
    from pagedkv import demo as demo_module
    from pagedkv.cli_options import plain
    from pagedkv.simulator.command import add_simulate_parser
    from pagedkv.simulator.profile_command import add_profile_parser

    parser = OneLineErrorParser(
        prog="pagedkv",
        description="Paged KV-cache management for LLM inference. "
        "`pagedkv COMMAND --help` lists a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"pagedkv {_version()}")
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser),
    )
    chat_cli.add_generate_parser(sub)
    chat_cli.add_chat_parser(sub)
    demo = sub.add_parser(
        "demo",
        help="the engine serving a batch of chat requests (--blocks: a tour of the block manager)",
        description=plain(demo_module.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_module.add_arguments(demo)
    demo.set_defaults(handler=demo_module.run)
    add_simulate_parser(sub)
    add_profile_parser(sub)
    from pagedkv.simulator.replay_command import add_replay_parser

    add_replay_parser(sub)
    from pagedkv.server.cli import add_serve_parser

    add_serve_parser(sub)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("pagedkv")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown option is reported by the command's own parser, so the error points
    at ``pagedkv COMMAND --help``, where the command's options are listed."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = getattr(args, "command", None)
        subparsers = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        owner = subparsers.choices.get(command, parser) if subparsers and command else parser
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pagedkv ARGV``; returns the exit status. Without ``argv`` (the real command line)
    the process ends here, once output is flushed and the atexit handlers have run."""
    rc = _run(argv)
    if argv is None:
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> NoReturn:
    """End the process without the interpreter's slow module teardown (see the module doc)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            _silence_stdout()
    atexit._run_exitfuncs()
    os._exit(rc)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        rc = int(handler(args))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return rc
    except PagedKVError as exc:
        print(f"pagedkv {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
