"""The ``pagedkv profile`` subcommand: options, the run, and the table it prints.

The model and engine options are ``generate``'s (:mod:`pagedkv.cli_options`), so the profiled
engine is configured the way the served one is. Mistakes in the options or the output path are
one error line and exit status 2, before the model loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.profile import (
    DEFAULT_GRID,
    QUICK_GRID,
    ProfileResult,
    profile_cost_model,
)

DEFAULT_OUT = "pagedkv-costmodel.json"
EPILOG = """\
The JSON file is the simulator's step cost model for this model, dtype and thread count:
  pagedkv simulate --cost pagedkv-costmodel.json
Timings are the machine's: profile on an otherwise idle one, with the --threads you serve with.
examples:
  pagedkv profile                                  # the default SmolLM2, about 90 s
  pagedkv profile --model ./my-llama --dtype bfloat16 --out llama-bf16.json
  pagedkv profile --model tiny-random --quick      # a few seconds, for tests
"""


def add_profile_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pagedkv.cli_options import add_engine_arguments, add_model_arguments, plain
    from pagedkv.simulator import profile

    p = sub.add_parser(
        "profile",
        help="time the engine on a grid of batch shapes and fit simulate's --cost model",
        description=plain(profile.__doc__),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    g = p.add_argument_group("profile")
    g.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="PATH",
        help=f"where to write the fitted cost model (JSON; default {DEFAULT_OUT})",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="a small grid (seconds; for tests: its fit is rougher)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the random prompt token ids (default 0)"
    )
    g.add_argument(
        "--fit",
        choices=["relative", "absolute"],
        default="relative",
        help="least squares of relative errors (default: short decode steps count as much "
        "as long prefills) or of milliseconds",
    )
    add_engine_arguments(p)
    p.set_defaults(handler=run_profile)


def check_out(path: str) -> None:
    """Refuse an output path that cannot be written, before the model loads."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise InvalidArgumentError(f"--out {path}: is a directory")
    if not parent.is_dir():
        raise InvalidArgumentError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InvalidArgumentError(f"--out {path}: not writable")


def run_profile(args: argparse.Namespace) -> int:
    from pagedkv.cli_setup import engine_config_from, load_cli_model, say, torch_threads

    check_out(args.out)
    config = engine_config_from(args)
    with torch_threads(args.threads):
        from pagedkv.engine import LLMEngine

        engine = LLMEngine(load_cli_model(args.model, args.dtype), config)
        try:
            grid = QUICK_GRID if args.quick else DEFAULT_GRID
            say(f"profiling {engine.loaded.name} ({'quick' if args.quick else 'default'} grid)")
            t0 = time.perf_counter()
            result = profile_cost_model(
                engine, grid, seed=args.seed, relative=args.fit == "relative", say=say
            )
            seconds = time.perf_counter() - t0
        finally:
            engine.close()
    for line in result.skipped:
        say(f"  skipped {line}")
    result.model.save(args.out)
    print(render_table(result))
    print(
        f"{len(result.fitted) + len(result.held_out)} steps in {seconds:.1f} s; written to "
        f"{args.out} (use: pagedkv simulate --cost {args.out})"
    )
    sys.stdout.flush()
    return 0


CURVE_COLUMNS = 10  # knots per row of the token-curve table (lines stay under 100 characters)


def render_table(result: ProfileResult) -> str:
    """Every term of the model (a ``pagedkv profile`` fit has the token curve in place of the
    per-step and per-prefill-token terms, which are then 0), the token curve's knots, then the
    fit's relative error ``|predicted - measured| / measured`` on the fitted and the held-out
    steps."""
    m, info = result.model, result.model.info
    head = "cost model" if info is None else f"cost model for {info.model}"
    if info is not None:
        head += f" ({info.dtype}, {info.threads} thread{'' if info.threads == 1 else 's'})"
    w = 30
    terms = (
        ("per step", m.base_ms),
        ("per prefill token", m.prefill_ms_per_token),
        ("per decoding sequence", m.decode_ms_per_seq),
        ("per 1000 attention pairs", m.attention_ms_per_kpair),
        ("per 1000 paged-attention pairs", m.paged_attention_ms_per_kpair),
        ("per mixed step", m.mixed_step_ms),
        ("per 1000 cached prefix tokens", m.cached_prefix_ms_per_ktoken),
    )
    lines = [head, f"  {'term':<{w}} {'ms':>10}"]
    lines += [f"  {label:<{w}} {value:>10.4g}" for label, value in terms]
    lines.append(f"  {'attention pairs counted':<{w}} {m.attention_counting:>10}")
    lines += _curve_lines(m.token_knots, m.token_ms, w)
    lines.append(f"  {'relative error':<{w}} {'steps':>10} {'mean':>7} {'median':>7} {'p90':>7}")
    rows = (("fitted steps", result.fit_error), ("held-out steps", result.held_out_error))
    for label, err in rows:
        if err is None:
            lines.append(f"  {label:<{w}} {0:>10} {'-':>7} {'-':>7} {'-':>7}")
        else:
            lines.append(
                f"  {label:<{w}} {err.records:>10} {err.mean:>7.1%} {err.median:>7.1%} "
                f"{err.p90:>7.1%}"
            )
    return "\n".join(lines)


def _curve_lines(knots: tuple[int, ...], ms: tuple[float, ...], w: int) -> list[str]:
    """The token curve as rows of step token counts over their milliseconds (``none``
    without a curve)."""
    if not knots:
        return [f"  {'token curve':<{w}} {'none':>10}"]
    lines = ["  token curve (ms a step of this many tokens costs; linear between and past the end)"]
    for i in range(0, len(knots), CURVE_COLUMNS):
        part = range(i, min(i + CURVE_COLUMNS, len(knots)))
        lines.append("    tokens " + "".join(f"{knots[j]:>8}" for j in part))
        lines.append("    ms     " + "".join(f"{ms[j]:>8.4g}" for j in part))
    return lines
