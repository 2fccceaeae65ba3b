"""Render simulation results: a readable terminal table, JSON, and CSV.

All three are produced from one plain-dict *report* (``{"workload", "config", "hitrate",
"serving", "baselines"}``; ``pagedkv replay`` writes the same ``serving`` rows) so that what a
script parses from ``--json``/``--csv`` is exactly what the table shows, and so results can be
saved and re-rendered.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Report = dict[str, Any]
WIDTH = 100  # wrap long lines of the text report here


def _pct(x: object) -> str:
    return f"{100 * float(x):6.2f}%" if isinstance(x, int | float) else "      -"


def _num(x: object, digits: int = 1) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, int | float):
        return f"{x:,.{digits}f}"
    return str(x)


def format_ms(ms: object) -> str:
    """A duration for people: milliseconds below 10,000 ms, then seconds, minutes, hours."""
    if not isinstance(ms, int | float) or not math.isfinite(ms):
        return "-"
    size = abs(ms)
    if size < 10_000:
        return f"{ms:,.1f} ms" if size < 100 else f"{ms:,.0f} ms"
    if size < 600_000:
        return f"{ms / 1e3:,.1f} s"
    if size < 7_200_000:
        return f"{ms / 6e4:,.1f} min"
    return f"{ms / 3.6e6:,.1f} h"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def hitrate_table(results: Sequence[Mapping[str, Any]]) -> str:
    """One row per (block size, capacity), one column per policy; ceilings listed above."""
    finite = [r for r in results if r["policy"] != "infinite"]
    policies = list(dict.fromkeys(r["policy"] for r in finite))
    ceil = {r["block_size"]: r for r in results if r["policy"] == "infinite"}
    cells: dict[tuple[int, int], dict[str, Mapping[str, Any]]] = {}
    for r in finite:
        cells.setdefault((r["block_size"], r["capacity_blocks"]), {})[r["policy"]] = r
    lines = []
    for bs, r in sorted(ceil.items()):
        lines.append(
            f"block size {bs}: infinite-cache ceiling {_pct(r['hit_rate']).strip()} of "
            f"{r['total_tokens']:,} measured prompt tokens ({r['block_refs']:,} block refs)"
        )
    rows = []
    underfilled = False
    for (bs, cap), by_pol in sorted(cells.items()):
        row = [str(bs), f"{cap:,}", f"{cap * bs:,}"]
        for p in policies:
            cell = by_pol.get(p)
            if cell is None:
                row.append("-")
                continue
            mark = "" if cell["filled_before_window"] else "*"
            underfilled |= bool(mark)
            row.append(_pct(cell["hit_rate"]) + mark)
        rows.append(row)
    if rows:
        lines.append(_table(["block", "cap blocks", "cap tokens", *policies], rows))
    if underfilled:
        lines.append(
            "* cache never filled before the measurement window (capacity exceeds "
            "the warm-up working set)"
        )
    speed = _replay_speed(finite)
    if speed:
        lines.append(_wrap(speed, "", "  "))
    return "\n".join(lines)


def _replay_speed(results: Sequence[Mapping[str, Any]]) -> str:
    """Block references replayed per second, per policy (a range over the sweep's points)."""
    by_policy: dict[str, list[float]] = {}
    for r in results:
        if r.get("refs_per_second"):
            by_policy.setdefault(r["policy"], []).append(r["refs_per_second"] / 1e6)
    parts = [
        f"{p} {min(v):.2f}" + (f"-{max(v):.2f}" if max(v) > min(v) + 0.005 else "")
        for p, v in by_policy.items()
    ]
    return "replay speed (million block refs/s): " + ", ".join(parts) if parts else ""


def _glue(m: re.Match[str]) -> str:
    return f"{m[1]}\u00a0{m[2]}" if m[1] else f"{m[3]}\u00a0"


def _wrap(text: str, first: str, rest: str) -> str:
    """Wrap at ``WIDTH``, never parting a number from its unit or a flag from its value."""
    glued = re.sub(r"(\d) (ms|s|min|h)\b|(--[\w-]+) (?=\w)", _glue, text)
    return textwrap.fill(
        glued, width=WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    ).replace("\u00a0", " ")


Column = tuple[str, str, Any]  # header, row key, format: None, "pct", "ms" or decimals

#: the serve mode's rows (the engine's scheduler; ``pagedkv replay`` prints the same)
SERVING_COLUMNS: list[Column] = [
    ("backend", "backend", None),
    ("kv util", "kv_utilization", "pct"),
    ("preempt", "preemptions", 0),
    ("rejected", "requests_rejected", 0),
    ("batch", "mean_batch", 1),
    ("req/s", "throughput_req_s", 2),
    ("out tok/s", "throughput_tok_s", 0),
    ("hit rate", "prefix_hit_rate", "pct"),
    ("TTFT p50", "ttft_ms_p50", "ms"),
    ("TTFT p99", "ttft_ms_p99", "ms"),
    ("TPOT p50", "tpot_ms_p50", "ms"),
    ("TPOT p99", "tpot_ms_p99", "ms"),
    ("E2E p50", "e2e_ms_p50", "ms"),
]

#: the baselines' rows (memory study: how much of the allocation holds token states)
BASELINE_COLUMNS: list[Column] = [
    ("backend", "backend", None),
    ("kv util", "kv_utilization", "pct"),
    ("tokens/alloc", "token_state_fraction", "pct"),
    ("preempt", "preemptions", 0),
    ("rejected", "requests_rejected", 0),
    ("batch", "mean_batch", 1),
    ("req/s", "throughput_req_s", 2),
    ("out tok/s", "throughput_tok_s", 0),
    ("queue mean", "queue_ms_mean", "ms"),
    ("TTFT p50", "ttft_ms_p50", "ms"),
    ("TTFT p99", "ttft_ms_p99", "ms"),
    ("TPOT p50", "tpot_ms_p50", "ms"),
    ("TPOT p99", "tpot_ms_p99", "ms"),
]


def serving_table(
    results: Sequence[Mapping[str, Any]], columns: Sequence[Column] = SERVING_COLUMNS
) -> str:
    rows = []
    for s in results:
        row = []
        for _, key, fmt in columns:
            v = s.get(key)
            row.append(
                _pct(v)
                if fmt == "pct"
                else format_ms(v)
                if fmt == "ms"
                else _num(v, fmt)
                if isinstance(fmt, int)
                else str(v)
            )
        rows.append(row)
    return _table([c[0] for c in columns], rows)


def engine_flags(engine: Mapping[str, Any]) -> str:
    """The engine settings a serving run used, as the flags that give another run (``simulate``
    or ``replay``) the same."""
    flags = [
        f"--num-blocks {engine['num_blocks']}",
        f"--block-size {engine['block_size']}",
        f"--max-num-seqs {engine['max_num_seqs']}",
        f"--max-num-batched-tokens {engine['max_num_batched_tokens']}",
        "--enable-chunked-prefill"
        if engine["enable_chunked_prefill"]
        else "--no-enable-chunked-prefill",
        f"--watermark {engine['watermark']:g}",
        f"--preemption-mode {engine['preemption_mode']}",
    ]
    if engine["preemption_mode"] == "swap":
        flags.append(f"--num-host-blocks {engine['num_host_blocks']}")
    flags += [
        f"--prefix-caching {'on' if engine['enable_prefix_caching'] else 'off'}",
        f"--partial-block-hits {'on' if engine.get('enable_partial_block_hits', True) else 'off'}",
        f"--serve-policy {engine['eviction_policy']}",
        f"--max-model-len {engine['max_model_len']}",
    ]
    return " ".join(flags)


def render_text(report: Report) -> str:
    w = report.get("workload", {})
    parts = [
        f"workload {w.get('name')}: {w.get('requests', 0):,} requests, mean input "
        f"{w.get('mean_input_tokens', 0):.0f} / output {w.get('mean_output_tokens', 0):.0f} "
        f"tokens, {w.get('duration_s', 0):.0f} s of arrivals"
    ]
    cfg = report.get("config", {})
    if report.get("hitrate"):
        parts += [
            "",
            f"== prefix hit rate (token-weighted, longest prefix, last "
            f"{100 * (1 - cfg.get('warmup', 0.5)):.0f}% of requests, file order) ==",
            hitrate_table(report["hitrate"]),
        ]
    if report.get("serving"):
        title = report.get("serving_title") or (
            f"serving replay through the engine's scheduler ({cfg.get('cost_model', '')})"
        )
        parts += ["", f"== {title} =="]
        if cfg.get("engine"):
            parts.append(_wrap("engine: " + engine_flags(cfg["engine"]), "", "  "))
        parts.append(serving_table(report["serving"]))
    if report.get("baselines"):
        parts += [
            "",
            "== baselines: contiguous reservation vs paging without sharing (simplified "
            "scheduler, same knobs, recompute) ==",
            serving_table(report["baselines"], BASELINE_COLUMNS),
        ]
    notes = [*report.get("notes", []), *report.get("warnings", [])]
    if notes:
        parts.append("")
        parts += [_wrap(n, "note: ", "  ") for n in notes]
    return "\n".join(parts)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def render_json(report: Report) -> str:
    """Strict JSON (NaN/inf become null)."""
    return json.dumps(_clean(report), indent=2, sort_keys=False)


def render_csv(report: Report) -> str:
    """One row per result; ``kind`` is ``hitrate``, ``serving`` or ``baselines``; columns are
    the union."""
    rows = [{"kind": "hitrate", **r} for r in report.get("hitrate", [])]
    rows += [{"kind": "serving", **s} for s in report.get("serving", [])]
    rows += [{"kind": "baselines", **s} for s in report.get("baselines", [])]
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(_clean(r))
    return buf.getvalue()
