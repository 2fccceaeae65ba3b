"""What ``pagedkv simulate`` shows: help with every default, durations in readable units,
wrapped lines, progress on a non-terminal, and the plot's layout."""

from __future__ import annotations

import argparse
import io
from typing import Any

import numpy as np
import pytest

from pagedkv.cli import build_parser
from pagedkv.simulator.argtypes import HelpFormatter
from pagedkv.simulator.progress import ProgressBar
from pagedkv.simulator.report import WIDTH, format_ms, hitrate_table, render_text


def simulate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["simulate"]
    return parser


def test_help_shows_every_default() -> None:
    parser = simulate_parser()
    fmt = HelpFormatter("pagedkv simulate")
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:  # --help and on/off switches
            continue
        if action.help == argparse.SUPPRESS:  # retired spellings: an error, not an option
            continue
        text = fmt._get_help_string(action) or ""
        assert "default" in text, action.option_strings
    text = " ".join(parser.format_help().split())
    assert "(default: 5,0.1,0.2)" in text
    assert "(default: 16)" in text
    assert "--quiet" in text
    assert "alone it is refused" in text


def test_durations_switch_units_past_ten_seconds() -> None:
    assert format_ms(17.46) == "17.5 ms"
    assert format_ms(9_999.0) == "9,999 ms"
    assert format_ms(10_000.0) == "10.0 s"
    assert format_ms(150_000.0) == "150.0 s"
    assert format_ms(900_000.0) == "15.0 min"
    assert format_ms(6_120_000.0) == "102.0 min"
    assert format_ms(7_200_000.0) == "2.0 h"
    assert format_ms(float("nan")) == "-"
    assert format_ms(None) == "-"


def test_serving_table_and_notes_use_units_and_wrap() -> None:
    row = {
        "backend": "paged-bs16",
        "ttft_ms_p50": 6_120_000.0,
        "ttft_ms_p99": 25.0,
        "e2e_ms_p50": 12_345.0,
    }
    text = render_text(
        {
            "serving": [row],
            "config": {"cost_model": "c"},
            "warnings": ["word " * 60 + "ends 347.8 s after; --kv-tokens 16384."],
        }
    )
    assert "102.0 min" in text
    assert "12.3 s" in text
    assert "25.0 ms" in text
    notes = text.split("\n\n")[-1]
    assert notes.startswith("note: word")
    assert len(notes.splitlines()) > 2
    assert all(len(line) <= WIDTH for line in notes.splitlines())
    assert "347.8 s" in notes
    assert "--kv-tokens 16384" in notes


def hit(policy: str, cap: int, rate: float, speed: float) -> dict[str, Any]:
    return {
        "policy": policy,
        "block_size": 16,
        "capacity_blocks": cap,
        "hit_rate": rate,
        "filled_before_window": True,
        "refs_per_second": speed,
        "total_tokens": 10,
        "block_refs": 5,
    }


def test_replay_speed_is_one_short_line_per_policy_range() -> None:
    rows = [hit("infinite", 0, 0.5, 0.0)]
    rows += [
        hit(p, c, 0.1, s * 1e6)
        for c in (10, 20, 40, 80, 160)
        for p, s in (("lru", 1.5), ("fifo", 0.5), ("lfu", 0.4), ("s3fifo", 0.3))
    ]
    rows[1]["refs_per_second"] = 1.2e6
    text = hitrate_table(rows)
    speed = [line for line in text.splitlines() if "replay speed" in line]
    assert speed == [
        "replay speed (million block refs/s): lru 1.20-1.50, fifo 0.50, lfu 0.40, s3fifo 0.30"
    ]
    assert all(len(line) <= WIDTH for line in text.splitlines())


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_on_a_non_terminal() -> None:
    buf, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(stream=buf, clock=clock)  # auto: StringIO is not a terminal
    bar.task("quick task").update(1, 1)  # short tasks print nothing
    bar.task("hit rate lru")
    for step in range(1, 13):
        clock.now = step * 1.0
        bar.update(step, 12)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert lines == [
        "pagedkv simulate: hit rate lru: 42% after 5 s, about 7 s left",
        "pagedkv simulate: hit rate lru: 83% after 10 s, about 2 s left",
        "pagedkv simulate: hit rate lru: 100% after 12 s, done",
    ]
    assert "\r" not in buf.getvalue()
    quiet = io.StringIO()
    ProgressBar(enabled=False, stream=quiet, clock=clock).task("x").update(1, 2)
    assert quiet.getvalue() == ""


def test_plot_has_a_panel_per_backend_and_hit_rate_from_zero() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pagedkv.simulator.plot import build_figure

    t = np.arange(50.0) * 100
    timeline = {"t_ms": t, "allocated_tokens": t + 10, "token_states": t}
    names = ["paged-bs16+prefix", "paged-bs16", "contiguous-max", "contiguous-pow2"]
    rows = [hit("lru", c, 0.3 + c / 1000, 1.0) for c in (10, 20, 40)]
    fig = build_figure(rows, dict.fromkeys(names, timeline), 5000.0)
    try:
        hit_ax, *panels = fig.axes
        assert hit_ax.get_ylim()[0] == 0.0
        assert [ax.get_title() for ax in panels] == names
        # the paged reference line is drawn faintly in every other backend's panel
        assert [len(ax.lines) for ax in panels] == [3, 2, 3, 3]
        assert "paged-bs16: allocated" in [t.get_text() for t in fig.legends[0].texts]
    finally:
        plt.close(fig)


def test_wrap_never_parts_a_number_from_its_unit_or_a_flag_from_its_value() -> None:
    from pagedkv.simulator.report import _wrap

    text = _wrap("x" * 88 + " 347.8 s later", "note: ", "  ")  # "347.8" ends at column 100
    assert text.splitlines() == ["note: " + "x" * 88, "  347.8 s later"]
    text = _wrap("x" * 82 + " --kv-tokens 16384", "note: ", "  ")
    assert text.splitlines()[1] == "  --kv-tokens 16384"
