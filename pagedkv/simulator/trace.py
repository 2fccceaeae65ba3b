"""Workload traces: one in-memory shape for every source, and loaders for the public formats.

Every workload the simulator replays — a Mooncake JSONL file, an Azure CSV file, or a synthetic
generator — becomes a :class:`Trace`, so the replay code never branches on where requests came
from. Prefix identity is carried as *hash ids* at the trace's own granularity (Mooncake: one id per
512-token prompt block, equal ids = identical prefix block); traces without prefix information
(Azure) carry none and every request is treated as unique content.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pagedkv.errors import InvalidArgumentError

#: Tokens covered by one Mooncake hash id.
MOONCAKE_BLOCK_TOKENS = 512
MOONCAKE_FIELDS = ("input_length", "hash_ids")  # required; timestamp and output_length default to 0
AZURE_FIELDS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Request:
    """One inference request: when it arrives, how long its prompt and answer are, and (optionally)
    the content identity of its prompt blocks at the trace's ``hash_block_size`` granularity."""

    arrival_ms: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] | None = None


@dataclass
class Trace:
    """An ordered list of requests plus the granularity of their hash ids.

    ``hash_block_size`` is the number of prompt tokens each hash id names (``None`` when the trace
    has no prefix information). Requests are kept in file order: the hit-rate replay uses that
    order, the serving replay uses ``arrival_ms``.
    """

    requests: list[Request]
    hash_block_size: int | None
    name: str = "trace"
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hash_block_size is not None and self.hash_block_size <= 0:
            raise InvalidArgumentError(
                f"hash_block_size must be positive, got {self.hash_block_size}"
            )
        for i, r in enumerate(self.requests):
            _validate_request(i, r, self.hash_block_size)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def has_prefix_info(self) -> bool:
        return self.hash_block_size is not None

    def head(self, n: int) -> Trace:
        """The first ``n`` requests (for quick runs); ``n <= 0`` keeps everything."""
        if n <= 0 or n >= len(self.requests):
            return self
        return Trace(self.requests[:n], self.hash_block_size, self.name, dict(self.meta))

    def summary(self) -> dict[str, float | int | str]:
        ins = [r.input_len for r in self.requests]
        outs = [r.output_len for r in self.requests]
        n = max(1, len(ins))
        span = (self.requests[-1].arrival_ms - self.requests[0].arrival_ms) if ins else 0.0
        return {
            "name": self.name,
            "requests": len(ins),
            "mean_input_tokens": sum(ins) / n,
            "mean_output_tokens": sum(outs) / n,
            "max_input_tokens": max(ins, default=0),
            "duration_s": span / 1000.0,
        }


def _validate_request(index: int, r: Request, hash_block_size: int | None) -> None:
    if r.input_len <= 0:
        raise InvalidArgumentError(f"request {index}: input_len must be > 0, got {r.input_len}")
    if r.output_len < 0:
        raise InvalidArgumentError(f"request {index}: output_len must be >= 0, got {r.output_len}")
    if r.hash_ids is None or hash_block_size is None:
        return
    need = math.ceil(r.input_len / hash_block_size)
    if len(r.hash_ids) < need:
        raise InvalidArgumentError(
            f"request {index}: {len(r.hash_ids)} hash ids cover at most "
            f"{len(r.hash_ids) * hash_block_size} tokens but input_len is {r.input_len} "
            f"(need {need} ids of {hash_block_size} tokens)"
        )


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (gzip-compressed or not); a binary file, a directory or
    an unreadable file is an :class:`InvalidArgumentError` that names the file (and line)."""
    if path.is_dir():
        raise InvalidArgumentError(f"trace {path} is a directory; give a .jsonl or .csv file")
    lineno = 0
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == GZIP_MAGIC
        with gzip.open(path, "rb") if gzipped else path.open("rb") as fh:
            if b"\x00" in fh.read(4096):
                raise InvalidArgumentError(
                    f"trace {path} is a binary file, not a Mooncake JSONL or Azure CSV trace"
                )
        with gzip.open(path, "rb") if gzipped else path.open("rb") as lines:
            for raw_line in lines:  # decoded line by line, so an error names its line
                lineno += 1
                yield raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(
            f"{path}:{lineno}: not UTF-8 text ({exc.reason}); is this a trace?"
        ) from exc
    except (OSError, EOFError, zlib.error) as exc:  # unreadable; a corrupt or truncated gzip
        raise InvalidArgumentError(f"cannot read trace {path}: {exc}") from exc


class _ArrivalOrder:
    """Refuses a trace whose arrival times go backwards or are not finite numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last = -math.inf

    def check(self, lineno: int, t: float) -> None:
        if not math.isfinite(t):
            raise InvalidArgumentError(f"{self.path}:{lineno}: timestamp is not finite: {t}")
        if t < self.last:
            raise InvalidArgumentError(
                f"{self.path}:{lineno}: timestamp {t:g} is earlier than the previous request's "
                f"{self.last:g}; the trace must be sorted by arrival time"
            )
        self.last = t


def _mooncake_request(rec: object) -> Request:
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    for name in MOONCAKE_FIELDS:
        if name not in rec:
            raise ValueError(f"missing field {name!r}")
    return Request(
        arrival_ms=float(rec.get("timestamp", 0.0)),
        input_len=int(rec["input_length"]),
        output_len=int(rec.get("output_length", 0)),
        hash_ids=tuple(int(h) for h in rec["hash_ids"]),
    )


def load_mooncake(path: str | Path, *, limit: int = 0) -> Trace:
    """Load a Mooncake JSONL trace (``timestamp`` ms, ``input_length``, ``output_length``,
    ``hash_ids``: one id per 512-token prompt block), sorted by ``timestamp``."""
    path = Path(path)
    requests: list[Request] = []
    order = _ArrivalOrder(path)
    for lineno, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            req = _mooncake_request(json.loads(line))
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"{path}:{lineno}: bad Mooncake record: {exc}") from exc
        order.check(lineno, req.arrival_ms)
        requests.append(req)
        if limit and len(requests) >= limit:
            break
    return Trace(requests, MOONCAKE_BLOCK_TOKENS, name=path.name)


def _parse_azure_time(text: str) -> float:
    """Azure timestamps look like ``2023-11-16 18:17:03.9799600`` (7 fractional digits)."""
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.fromisoformat(text).timestamp() * 1000.0


def _azure_row(row: dict[str, str | None]) -> tuple[float, int, int]:
    for name in AZURE_FIELDS:
        if row.get(name) is None:
            raise ValueError(f"missing field {name!r}")
    return (
        _parse_azure_time(str(row["TIMESTAMP"])),
        int(str(row["ContextTokens"])),
        int(str(row["GeneratedTokens"])),
    )


def load_azure(path: str | Path, *, limit: int = 0) -> Trace:
    """Load an Azure LLM inference CSV trace (``TIMESTAMP, ContextTokens, GeneratedTokens``).

    Arrival times are made relative to the first request; rows must be sorted by time. The
    format has no prefix information, so requests carry no hash ids (every prompt is unique
    content). Error messages name the file's own line number (blank lines included).
    """
    path = Path(path)
    requests: list[Request] = []
    t0: float | None = None
    order = _ArrivalOrder(path)
    reader = csv.DictReader(_text_lines(path))
    for row in reader:
        try:
            t, ctx, gen = _azure_row(row)
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(
                f"{path}:{reader.line_num}: bad Azure record: {exc}"
            ) from exc
        order.check(reader.line_num, t)
        if ctx <= 0:
            continue  # a zero-length prompt cannot occupy KV memory; skip like the trace docs
        t0 = t if t0 is None else t0
        requests.append(Request(t - t0, ctx, max(gen, 0)))
        if limit and len(requests) >= limit:
            break
    return Trace(requests, None, name=path.name)


def load_trace(path: str | Path, fmt: str = "auto", *, limit: int = 0) -> Trace:
    """Load ``path`` as ``fmt`` (``mooncake``, ``azure`` or ``auto`` = by extension, ``.gz``
    ignored: gzip-compressed traces are read as they are)."""
    p = Path(path)
    if not p.exists():
        raise InvalidArgumentError(f"trace file not found: {p}")
    if fmt == "auto":
        suffixes = [s.lower() for s in p.suffixes if s.lower() != ".gz"]
        fmt = "azure" if suffixes[-1:] == [".csv"] else "mooncake"
    if fmt == "mooncake":
        return load_mooncake(p, limit=limit)
    if fmt == "azure":
        return load_azure(p, limit=limit)
    raise InvalidArgumentError(f"unknown trace format {fmt!r}; expected auto, mooncake or azure")


def from_lengths(
    lengths: Iterable[tuple[int, int]], *, arrivals_ms: Sequence[float] | None = None
) -> Trace:
    """Build a prefix-less trace from ``(input_len, output_len)`` pairs (handy in tests)."""
    pairs = list(lengths)
    times = list(arrivals_ms) if arrivals_ms is not None else [0.0] * len(pairs)
    if len(times) != len(pairs):
        raise InvalidArgumentError(f"{len(times)} arrival times for {len(pairs)} requests")
    return Trace([Request(t, i, o) for t, (i, o) in zip(times, pairs, strict=True)], None)
