"""``pagedkv demo``: the engine serving a batch of chat requests on a real model, offline.

A small quiz service on SmolLM2-135M-Instruct (the default model): eight chat requests share one
system prompt and arrive one per engine step while the earlier ones are still decoding
(continuous batching). Later requests find the system prompt's blocks in the prefix cache; one
request asks for two samples (n=2: the prompt is computed once and forked, copy-on-write); and
the KV pool is deliberately small, so the scheduler must preempt running requests and recompute
them later (each still gets exactly the answer it would have got alone). Answers are printed
in request order, each once it and all before it have finished, then the engine's
statistics, each labelled with what it counts. On two CPU cores serving takes about 5 s and
the whole command about 15 s (the first run also converts the model once: 32 s more on a busy
machine; it prints each stage).

``pagedkv demo --blocks`` is the offline tour of the block manager alone (no model, no torch,
``pagedkv.simulator.tour``): chat requests share a few prompts of skewed popularity through the
prefix cache, some fork for parallel sampling (copy-on-write), decode and finish, while one-off
documents compete for a small pool; ``--policy`` (lru, fifo, lfu, s3fifo) changes which cached
blocks survive, and so the hit rate.
"""

from __future__ import annotations

import argparse
import json

from pagedkv.cli_options import add_threads_argument
from pagedkv.cli_setup import torch_threads
from pagedkv.demo_engine import run_engine_demo
from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.tour import run_demo  # the --blocks tour


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options, shared by ``python -m pagedkv.demo`` and ``pagedkv demo``."""
    ap.add_argument(
        "--blocks", action="store_true", help="the block-manager tour instead (no model, no torch)"
    )
    ap.add_argument(
        "--model",
        "-m",
        default=None,
        metavar="M",
        help="engine demo: the model (default: SmolLM2-135M-Instruct; for tests: "
        "'tiny-random', a random-weight tiny Llama whose answers are gibberish)",
    )
    ap.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="engine demo: KV blocks in the pool (default: small enough to force "
        "preemptions: 8 on SmolLM2)",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=32,
        help="engine demo: most tokens per answer (default 32)",
    )
    add_threads_argument(ap)
    ap.add_argument(
        "--requests", type=int, default=None, help="--blocks: requests to run (default 48)"
    )
    ap.add_argument(
        "--policy",
        default="lru",
        help="eviction policy: lru, fifo, lfu, s3fifo (default lru; the --blocks "
        "tour's hit rate shows the difference)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON only")


def run(args: argparse.Namespace) -> int:
    if args.blocks:
        stats = run_demo(
            num_requests=48 if args.requests is None else args.requests,
            policy=args.policy,
            seed=args.seed,
            verbose=not args.json,
        )
        if args.json:
            print(json.dumps(stats))
        return 0
    if args.requests is not None:
        raise InvalidArgumentError("--requests applies to the block-manager tour (--blocks)")
    with torch_threads(args.threads):
        result = run_engine_demo(
            model=args.model,
            num_blocks=args.num_blocks,
            max_tokens=args.max_tokens,
            policy=args.policy,
            seed=args.seed,
            verbose=not args.json,
        )
    if args.json:
        print(json.dumps(result))
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    from pagedkv.cli import main as cli_main

    return cli_main(["demo", *(argv or [])])


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
