"""``--plot out.png``: hit rate vs. capacity per policy, and KV memory over time per backend.

matplotlib is an optional extra (``pip install pagedkv[plot]``); it is imported only here, only
when a plot is asked for, and its absence is reported as a clear error rather than a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pagedkv.errors import InvalidArgumentError


def _hitrate_axes(ax: Any, results: Sequence[Mapping[str, Any]]) -> None:
    sizes = sorted({r["block_size"] for r in results})
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in results:
        if r["policy"] == "infinite":
            ax.axhline(100 * r["hit_rate"], ls="--", lw=1, color="gray")
            ax.annotate(
                f"infinite (bs {r['block_size']})",
                (0.01, 100 * r["hit_rate"]),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                va="bottom",
            )
            continue
        tokens = r["capacity_blocks"] * r["block_size"]
        series.setdefault((r["policy"], r["block_size"]), []).append((tokens, r["hit_rate"]))
    for (policy, bs), pts in sorted(series.items()):
        pts.sort()
        label = policy if len(sizes) == 1 else f"{policy} (bs {bs})"
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, max(5.0, ax.get_ylim()[1]))  # hit rates from 0, never a zoomed-in band
    ax.set_xlabel("cache capacity (tokens)")
    ax.set_ylabel("prefix hit rate (% of prompt tokens)")
    ax.set_title("Hit rate vs capacity")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _memory_axes(
    ax: Any,
    name: str,
    tl: Mapping[str, np.ndarray],
    capacity: float,
    reference: tuple[str, Mapping[str, np.ndarray]] | None,
) -> None:
    """One backend's panel: allocated KV and token states (% of capacity) over time; the
    paged backend's allocation drawn faintly behind the others for comparison. An engine row
    (the serve mode) records the blocks in use, not token states."""
    if reference is not None and len(reference[1]["t_ms"]):
        t, y = _thin(reference[1], "allocated_tokens")
        ax.plot(t, 100 * y / capacity, color="0.75", lw=1.0, label=f"{reference[0]}: allocated")
    if len(tl["t_ms"]):
        t, y = _thin(tl, "allocated_tokens")
        ax.plot(t, 100 * y / capacity, color="C0", lw=1.0, label="allocated")
    if len(tl["t_ms"]) and "token_states" in tl:  # the engine's timeline has none
        t, y = _thin(tl, "token_states")
        ax.plot(t, 100 * y / capacity, color="C1", lw=1.0, ls=":", label="token states")
    ax.set_title(name, fontsize=9)
    ax.set_ylim(0, 105)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _thin(tl: Mapping[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, len(tl["t_ms"]) // 2000)  # keep the figure light
    return np.asarray(tl["t_ms"])[::step] / 1e3, np.asarray(tl[key])[::step]


def _paged_reference(
    timelines: Mapping[str, Mapping[str, np.ndarray]],
) -> tuple[str, Mapping[str, np.ndarray]] | None:
    """The paged backend the others are compared with (without prefix sharing if present)."""
    paged = [n for n in timelines if n.startswith("paged")]
    plain = [n for n in paged if "+" not in n]
    names = plain or paged
    return (names[0], timelines[names[0]]) if names else None


def build_figure(
    hitrate: Sequence[Mapping[str, Any]] = (),
    timelines: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    capacity_tokens: float = 1.0,
) -> Any:
    """The figure: hit rate vs capacity on top (y from 0), then one small panel of KV memory
    over time per serving backend, sharing their axes."""
    import matplotlib.pyplot as plt

    timelines = timelines or {}
    if not hitrate and not timelines:
        raise InvalidArgumentError("nothing to plot: no hit-rate or serving results")
    cols = min(3, max(1, len(timelines)))
    mem_rows = -(-len(timelines) // cols)
    heights = [3.0] * bool(hitrate) + [1.8] * mem_rows
    fig = plt.figure(figsize=(4.0 * cols if timelines else 6.5, sum(heights) + 0.6))
    grid = fig.add_gridspec(len(heights), cols, height_ratios=heights)
    if hitrate:
        _hitrate_axes(fig.add_subplot(grid[0, :]), hitrate)
    ref = _paged_reference(timelines)
    first = None
    for i, (name, tl) in enumerate(timelines.items()):
        ax = fig.add_subplot(grid[bool(hitrate) + i // cols, i % cols], sharex=first, sharey=first)
        first = first or ax
        _memory_axes(ax, name, tl, capacity_tokens, ref if ref and ref[0] != name else None)
        if i % cols == 0:
            ax.set_ylabel("% of KV", fontsize=8)
        if i // cols == mem_rows - 1:
            ax.set_xlabel("time (s)", fontsize=8)
    if first is not None:
        handles = {
            lbl: h
            for a in fig.axes[bool(hitrate) :]
            for h, lbl in zip(*a.get_legend_handles_labels(), strict=True)
        }
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="lower center",
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout(rect=(0, 0.05 if timelines else 0, 1, 1))
    return fig


def save_plot(
    path: str | Path,
    hitrate: Sequence[Mapping[str, Any]] = (),
    timelines: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    capacity_tokens: float = 1.0,
) -> Path:
    """Write the figure (format by the file's extension); return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # checked before the run by the CLI; kept for library callers
        raise InvalidArgumentError("--plot needs matplotlib: pip install 'pagedkv[plot]'") from exc
    fig = build_figure(hitrate, timelines, capacity_tokens)
    out = Path(path)
    try:
        fig.savefig(out, dpi=120)
    except (ValueError, OSError) as exc:  # an unknown image type, an unwritable path
        raise InvalidArgumentError(f"cannot write plot {out}: {exc}") from exc
    finally:
        plt.close(fig)
    return out
