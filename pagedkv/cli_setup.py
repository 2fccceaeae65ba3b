"""What the shared command-line options (:mod:`pagedkv.cli_options`) set up when a command runs:
the model, torch's thread count, the engine configuration and the sampling parameters.

Imports of torch and the engine are deferred to the functions, so importing this module stays
cheap (``pagedkv --help`` loads no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pagedkv.errors import InvalidArgumentError

if TYPE_CHECKING:  # the engine imports torch: only when a command runs
    from pagedkv.engine import EngineConfig, SamplingParams
    from pagedkv.models import LoadedModel

TINY_RANDOM = "tiny-random"


def default_threads() -> int:
    """``--threads auto``: the physical cores other processes leave idle, at least 1.

    Why: torch's default (one thread per physical core) is best on an idle machine, but its
    threads spin waiting for each other when other processes hold the cores: on this project's
    2-core box with a load average of 2-5, the first token of ``pagedkv generate`` took up to
    10x longer with 2 threads than with 1 (the numbers are in the README). The 1-minute load
    average (rounded) counts the cores other work keeps busy; where it is unknown (Windows),
    torch's count is used."""
    import torch

    cores = max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0))))
    try:
        busy = round(os.getloadavg()[0])
    except (OSError, AttributeError):  # no load average on this platform
        busy = 0
    return max(1, cores - busy)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: :func:`default_threads`;
    0: torch's choice), then restore."""
    if threads is not None and threads < 0:
        raise InvalidArgumentError(f"--threads: expected an int >= 0, got {threads}")
    if threads == 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(default_threads() if threads is None else threads)
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
    "enable_partial_block_hits",
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

    check_names(args)
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
        ignore_eos=args.ignore_eos,
    )


def check_names(args: argparse.Namespace) -> None:
    """Refuse an unknown ``--backend`` or ``--eviction-policy`` before the model loads (the
    engine would only find out after loading it). A backend that is registered but cannot
    run here (the compiled ``cpu`` kernel without a compiler) is refused too: checking builds
    it (once, cached), which the engine would do anyway."""
    backend = getattr(args, "backend", None)
    if backend is not None:
        from pagedkv.attention import list_attention_backends

        names = ["auto", *list_attention_backends()]
        if backend not in names:
            raise InvalidArgumentError(
                f"--backend: unknown attention backend {backend!r} here; expected one of {names}"
            )
        if backend == "cpu":
            from pagedkv.attention.cpu_kernel import kernel_available

            if not kernel_available():
                raise InvalidArgumentError(
                    "--backend cpu: the compiled CPU kernel cannot be built here (needs a C++ "
                    "compiler and ninja); use --backend torch"
                )
    policy = getattr(args, "eviction_policy", None)
    if policy is not None:
        check_eviction_policy(policy)


def check_eviction_policy(name: str, option: str = "--eviction-policy") -> None:
    """Refuse an unknown eviction policy name (the engine checks it only once it builds)."""
    from pagedkv.core.prefix_cache.eviction import EVICTION_POLICIES

    if name not in EVICTION_POLICIES:
        raise InvalidArgumentError(
            f"{option}: unknown eviction policy {name!r}; expected one of "
            f"{sorted(EVICTION_POLICIES)}"
        )


def is_tiny(name: str | None) -> bool:
    return name is not None and name.lower() == TINY_RANDOM


def load_cli_model(
    name: str | None, dtype: str = "float32", backend: str | None = None
) -> LoadedModel:
    """``load_model(name)``, plus ``tiny-random``: a seeded random tiny Llama (for tests).

    Says on stderr what it loads and how long it took; a GGUF model's first, slow load also
    shows the conversion's stages (the ``pagedkv.models`` log) and transformers' progress bar
    over the tensors it dequantizes. Then the attention kernel ``backend`` (the engine's: None
    is ``auto``) needs is made ready (:func:`prepare_kernel`)."""
    from pagedkv.models import load_model, tiny_random_llama
    from pagedkv.models.loader import model_source

    if is_tiny(name):  # quiet: no loading lines either (the engine builds what it needs)
        return tiny_random_llama(0, dtype=dtype)
    model_source(name)  # a name that does not exist is one error line, before "loading"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError:  # load_model names the missing package
        pass
    say(f"loading model {name or 'default'} ({dtype}) ...")
    t0 = time.perf_counter()
    with _conversion_log():
        loaded = load_model(name, dtype=dtype)
    say(f"loaded {loaded.name} in {time.perf_counter() - t0:.1f} s")
    prepare_kernel(loaded, backend)
    return loaded


def prepare_kernel(loaded: LoadedModel, backend: str | None) -> None:
    """Build or load the compiled CPU attention kernel before the engine does, saying so: the
    engine's default ``auto`` uses it for a CPU model, and its first build on a machine takes
    ~60 s that would otherwise pass without a word."""
    from pagedkv.attention.cpu_kernel import kernel_available

    name = "auto" if backend is None else backend
    device = next(loaded.model.parameters()).device
    if name not in ("auto", "cpu") or device.type != "cpu":
        return
    say("preparing the CPU attention kernel (its first build on a machine takes ~60 s) ...")
    t0 = time.perf_counter()
    ready = kernel_available()
    took = time.perf_counter() - t0
    say(f"CPU attention kernel ready in {took:.1f} s" if ready else "CPU kernel unavailable")


def say(line: str) -> None:
    """One progress line on stderr (stdout keeps only the answer)."""
    print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _conversion_log() -> Iterator[None]:
    """Show the ``pagedkv.models`` INFO log (the conversion's stages) on stderr meanwhile."""
    import logging

    logger = logging.getLogger("pagedkv.models")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
