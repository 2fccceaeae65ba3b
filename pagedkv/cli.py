"""The ``pagedkv`` command line: one entry point, subcommands dispatched through argparse.

``simulate`` is the trace-driven simulator and capacity planner (see ``pagedkv simulate
--help``); ``demo`` is the offline tour of the block manager (``pagedkv demo --help``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pagedkv.errors import PagedKVError


def build_parser() -> argparse.ArgumentParser:
    from pagedkv.simulator.command import add_simulate_parser

    parser = argparse.ArgumentParser(
        prog="pagedkv", description="Paged KV-cache management for LLM inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_simulate_parser(sub)
    from pagedkv import demo as demo_module

    demo = sub.add_parser("demo", help="an offline tour of the block manager",
                          description=demo_module.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    demo_module.add_arguments(demo)
    demo.set_defaults(handler=demo_module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args))
    except PagedKVError as exc:
        print(f"pagedkv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
