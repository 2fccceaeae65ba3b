"""Checks ``pagedkv simulate`` makes before it runs, so that a mistake costs a second, not a
finished replay: output files that cannot be written, a plot that cannot be drawn, flags that
contradict each other, and a synthetic workload too large for this machine's memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import replace
from pathlib import Path

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.synthetic import SyntheticSpec, generate

#: image types ``--plot`` writes (by file extension); matplotlib draws them all
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "eps", "ps", "tif", "tiff")
#: workload memory per request: the request itself, and per hash id its int, its slot in the
#: request's tuple and its share of the block stream's arrays at the peak (measured: ~9.4 KB
#: per request for the default synthetic workload, ~74 ids each)
BYTES_PER_REQUEST = 300
BYTES_PER_HASH_ID = 130
#: requests above which the synthetic workload's memory is estimated before generating it
ESTIMATE_ABOVE = 100_000


def check_output_file(flag: str, path: str) -> None:
    """``path`` can be created or overwritten (``-``, stdout, always can)."""
    if path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InvalidArgumentError(f"{flag} {path} is a directory; give a file name in it")
    folder = p.parent
    if not folder.is_dir():
        what = (
            f"{folder} is a file, not a folder"
            if folder.exists()
            else f"the folder {folder} does not exist"
        )
        raise InvalidArgumentError(f"{flag} {path}: {what}")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InvalidArgumentError(f"{flag} {path}: permission denied")


def check_plot(path: str) -> None:
    """A supported image extension, and matplotlib installed."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        got = f"'.{suffix}' is not an image type" if suffix else "the name has no extension"
        raise InvalidArgumentError(
            f"--plot {path}: {got}; end it in .png, .pdf or .svg "
            f"(or {', '.join('.' + f for f in PLOT_FORMATS[3:])})"
        )
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidArgumentError(
            "--plot needs matplotlib, which is not installed: "
            "pip install 'pagedkv[plot]' (or drop --plot)"
        )


def check_outputs(args: argparse.Namespace) -> None:
    """Every output flag names something writable; they do not collide; the run shows
    something."""
    outputs = {flag: getattr(args, flag[2:]) for flag in ("--json", "--csv", "--plot")}
    given = {flag: path for flag, path in outputs.items() if path}
    for flag, path in given.items():
        check_output_file(flag, path)
    if args.plot:
        check_plot(args.plot)
    if args.json == "-" and args.csv == "-":
        raise InvalidArgumentError(
            "--json - and --csv - would both write to stdout; send one of them to a file"
        )
    if args.json and args.json == args.csv and args.json != "-":
        raise InvalidArgumentError(f"--json and --csv both write {args.json}")
    if args.quiet and not given:
        raise InvalidArgumentError(
            "--quiet hides the table and no --json, --csv or --plot "
            "was given: the run would show nothing"
        )


def available_memory() -> int | None:
    """Bytes this machine can still give (``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_workload_bytes(spec: SyntheticSpec) -> int:
    """Peak memory of generating and splitting ``spec``'s workload, from a 256-request sample."""
    sample = generate(replace(spec, num_requests=min(spec.num_requests, 256)))
    ids = sum(len(r.hash_ids or ()) for r in sample.requests) / max(1, len(sample))
    return int(spec.num_requests * (BYTES_PER_REQUEST + BYTES_PER_HASH_ID * ids))


def check_workload_size(spec: SyntheticSpec, available: int | None = None) -> None:
    """Refuse a synthetic workload whose estimated memory exceeds what this machine has free."""
    if spec.num_requests <= ESTIMATE_ABOVE:
        return
    free = available_memory() if available is None else available
    need = estimate_workload_bytes(spec)
    if free is None or need <= 0.8 * free:
        return
    fits = int(spec.num_requests * 0.8 * free / need)
    raise InvalidArgumentError(
        f"--num-requests {spec.num_requests:,} needs about {need / 2**30:,.1f} GiB for the "
        f"workload alone and this machine has {free / 2**30:,.1f} GiB free; about "
        f"{fits:,} requests would fit"
    )
