"""``--plot out.png``: hit rate vs. capacity per policy, and KV memory over time.

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
            ax.annotate(f"infinite (bs {r['block_size']})", (0.01, 100 * r["hit_rate"]),
                        xycoords=("axes fraction", "data"), fontsize=7, va="bottom")
            continue
        tokens = r["capacity_blocks"] * r["block_size"]
        series.setdefault((r["policy"], r["block_size"]), []).append((tokens, r["hit_rate"]))
    for (policy, bs), pts in sorted(series.items()):
        pts.sort()
        label = policy if len(sizes) == 1 else f"{policy} (bs {bs})"
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("cache capacity (tokens)")
    ax.set_ylabel("prefix hit rate (% of prompt tokens)")
    ax.set_title("Hit rate vs capacity")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _memory_axes(ax: Any, timelines: Mapping[str, Mapping[str, np.ndarray]],
                 capacity: float) -> None:
    for name, tl in timelines.items():
        t = np.asarray(tl["t_ms"]) / 1e3
        if len(t) == 0:
            continue
        step = max(1, len(t) // 2000)  # keep the figure light
        (line,) = ax.plot(t[::step], 100 * np.asarray(tl["allocated_tokens"])[::step] / capacity,
                          lw=1, label=f"{name}: allocated")
        ax.plot(t[::step], 100 * np.asarray(tl["token_states"])[::step] / capacity, lw=1,
                ls=":", color=line.get_color(), label=f"{name}: token states")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("% of KV capacity")
    ax.set_title("KV memory over time")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def save_plot(
    path: str | Path,
    hitrate: Sequence[Mapping[str, Any]] = (),
    timelines: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    capacity_tokens: float = 1.0,
) -> Path:
    """Write a PNG with one panel per available result kind; return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidArgumentError(
            "--plot needs matplotlib: pip install 'pagedkv[plot]'"
        ) from exc
    panels = int(bool(hitrate)) + int(bool(timelines))
    if panels == 0:
        raise InvalidArgumentError("nothing to plot: no hit-rate or serving results")
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    i = 0
    if hitrate:
        _hitrate_axes(axes[0][i], hitrate)
        i += 1
    if timelines:
        _memory_axes(axes[0][i], timelines, capacity_tokens)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
