"""What the shared command-line options (:mod:`pagedkv.cli_options`) set up when a command runs:
the model, torch's thread count, the engine configuration and the sampling parameters.

Imports of torch and the engine are deferred to the functions, so importing this module stays
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
