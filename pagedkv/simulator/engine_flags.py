"""The engine's serving knobs as ``pagedkv simulate`` and ``pagedkv replay`` take them.

One flag per :class:`~pagedkv.engine.config.EngineConfig` field, with its name, meaning and
default, in one function both commands call: a simulated run and a real one given the same
flags run the same scheduler with the same settings. ``simulate``'s contiguous baselines read
the same values (their own simplified scheduler has no swap, so they always recompute).

The simulator's old spellings are retired with a one-line error that names the new one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pagedkv.simulator.argtypes import float_in, int_at_least

#: retired spelling -> what to use instead
RETIRED = {
    "--max-batched-tokens": "use --max-num-batched-tokens (the engine's per-step token budget; "
    "default 2048 with chunked prefill)",
    "--chunked-prefill": "chunked prefill is on by default, as in the engine "
    "(--no-enable-chunked-prefill turns it off)",
}


class RetiredFlag(argparse.Action):
    """A flag that was renamed: using it is a one-line error saying what replaced it."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS
        )
        self.help = argparse.SUPPRESS

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} was retired: {RETIRED[str(option_string)]}")


def add_engine_flags(
    p: argparse.ArgumentParser, *, model_len_default: str, block_size: bool = False
) -> None:
    """The knobs (``model_len_default``: what ``--max-model-len`` defaults to, in words;
    ``block_size``: add ``--block-size``, which ``simulate`` takes as a list with its sweeps)."""
    g = p.add_argument_group("engine (pagedkv.engine.EngineConfig's names, meanings and defaults)")
    if block_size:
        g.add_argument(
            "--block-size",
            metavar="TOKENS",
            type=int_at_least(1),
            default=16,
            help="tokens per KV block (EngineConfig.block_size)",
        )
    kv = g.add_mutually_exclusive_group()
    kv.add_argument(
        "--num-blocks",
        metavar="N",
        type=int_at_least(1),
        default=None,
        help="usable KV blocks (the null block excluded, as EngineConfig.num_blocks; "
        "default: --kv-tokens / block size)",
    )
    kv.add_argument(
        "--kv-tokens",
        metavar="TOKENS",
        type=int_at_least(1),
        default=None,
        help="KV memory in tokens, i.e. --num-blocks x block size (default: 4x the longest "
        "request, rounded up to a power of two, >= 16384)",
    )
    g.add_argument(
        "--max-num-seqs",
        metavar="N",
        type=int_at_least(1),
        default=64,
        help="most sequences running in one step",
    )
    g.add_argument(
        "--max-num-batched-tokens",
        metavar="TOKENS",
        type=int_at_least(1),
        default=None,
        help="per-step token budget, decodes and prompt chunks together (default: 2048 with "
        "chunked prefill, else max(2048, --max-model-len): a prompt then runs whole)",
    )
    chunked = g.add_argument(
        "--enable-chunked-prefill",
        action=argparse.BooleanOptionalAction,
        default=True,
    )
    # set after: BooleanOptionalAction would append "(default: True)"
    chunked.help = (
        "split prompts into chunks that share each step's budget with decodes (default: on)"
    )
    g.add_argument(
        "--watermark",
        metavar="FRACTION",
        type=float_in(0, 1, open_high=True),
        default=0.01,
        help="fraction of the usable blocks admission keeps free for running sequences to grow",
    )
    g.add_argument(
        "--preemption-mode",
        choices=["recompute", "swap"],
        default="recompute",
        help="when the pool runs dry: free a sequence and recompute it later, or swap its KV "
        "to --num-host-blocks host blocks",
    )
    g.add_argument(
        "--num-host-blocks",
        metavar="N",
        type=int_at_least(0),
        default=0,
        help="host blocks for --preemption-mode swap (default 0: none)",
    )
    g.add_argument(
        "--serve-policy",
        metavar="NAME",
        default="lru",
        help="the prefix cache's eviction policy (EngineConfig.eviction_policy): lru, fifo, "
        "lfu, s3fifo",
    )
    g.add_argument(
        "--prefix-caching",
        choices=["on", "off"],
        default="on",
        help="reuse cached prompt prefixes (EngineConfig.enable_prefix_caching)",
    )
    g.add_argument(
        "--partial-block-hits",
        choices=["on", "off"],
        default="on",
        help="also reuse the first tokens of the cached block after a prefix hit "
        "(EngineConfig.enable_partial_block_hits)",
    )
    g.add_argument(
        "--max-model-len",
        metavar="TOKENS",
        type=int_at_least(1),
        default=None,
        help="the model's context: a request whose prompt + output exceed it (or the KV pool "
        f"above the watermark) is not replayed but counted as rejected (default: "
        f"{model_len_default})",
    )
    for flag in RETIRED:
        g.add_argument(flag, action=RetiredFlag)


def engine_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed knobs as :class:`~pagedkv.simulator.runner.SimulationConfig` fields."""
    return {
        "num_blocks": args.num_blocks,
        "kv_tokens": args.kv_tokens,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "enable_chunked_prefill": args.enable_chunked_prefill,
        "watermark": args.watermark,
        "preemption_mode": args.preemption_mode,
        "num_host_blocks": args.num_host_blocks,
        "serve_policy": args.serve_policy,
        "prefix_caching": args.prefix_caching == "on",
        "partial_block_hits": args.partial_block_hits == "on",
        "max_model_len": args.max_model_len,
        "arrival_scale": args.arrival_scale,
    }
