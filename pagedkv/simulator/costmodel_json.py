"""Reading and writing :class:`~pagedkv.simulator.costmodel.LinearCostModel` JSON files.

The file is what ``pagedkv profile`` writes and ``pagedkv simulate --cost FILE.json`` reads, so
a model fitted on one machine replays on another. Reading is strict: any other shape raises
``InvalidArgumentError`` naming the file and the field, and an unknown key is refused too (a
misspelt term would otherwise be a silent 0). The model's methods (``to_json``, ``from_json``,
``save``, ``load``) are the API; they delegate here, importing this module when called (it
imports :mod:`~pagedkv.simulator.costmodel`, not the other way round).

Imports neither numpy nor torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.costmodel import (
    OPTIONAL_TERMS,
    SCHEMA,
    SCHEMA_VERSION,
    TERMS,
    TERMS_STATS,
    CostModelInfo,
    ErrorStats,
    LinearCostModel,
)
from pagedkv.simulator.stepfeatures import PAIR_COUNTINGS


def model_to_json(model: LinearCostModel) -> dict[str, Any]:
    """The JSON object of ``model`` (coefficients, token curve, metadata or null)."""
    info = model.info
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "coefficients": {name: getattr(model, name) for name in TERMS},
        "token_curve": {"knots": list(model.token_knots), "ms": list(model.token_ms)},
        "attention_counting": model.attention_counting,
        "metadata": None
        if info is None
        else {
            "model": info.model,
            "dtype": info.dtype,
            "threads": info.threads,
            "date": info.date,
            "fit_error": _stats_json(info.fit_error),
            "held_out_error": _stats_json(info.held_out_error),
        },
    }


def model_from_json(data: object, source: str = "cost model") -> LinearCostModel:
    """The model :func:`model_to_json` wrote (``token_curve``, ``metadata`` and
    ``attention_counting`` may be missing: files from before the curve load as models without
    one, files from before the counting as ``"padded"``, which is how they were fitted)."""
    top = _fields(
        data,
        source,
        "",
        {"schema", "version", "coefficients"},
        {"metadata", "token_curve", "attention_counting"},
    )
    if top["schema"] != SCHEMA:
        raise _bad(source, "schema", f"expected {SCHEMA!r}", top["schema"])
    if top["version"] != SCHEMA_VERSION or isinstance(top["version"], bool):
        raise _bad(source, "version", f"expected {SCHEMA_VERSION}", top["version"])
    optional = set(OPTIONAL_TERMS)
    coef = _fields(top["coefficients"], source, "coefficients", set(TERMS) - optional, optional)
    values = {n: _number(coef.get(n, 0.0), source, f"coefficients.{n}") for n in TERMS}
    info = _info(top.get("metadata"), source)
    curve = _fields(
        top.get("token_curve", {"knots": [], "ms": []}),
        source,
        "token_curve",
        {"knots", "ms"},
        set(),
    )
    knots, ms = curve["knots"], curve["ms"]
    if not isinstance(knots, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in knots
    ):
        raise _bad(source, "token_curve.knots", "expected a list of ints", knots)
    if not isinstance(ms, list):
        raise _bad(source, "token_curve.ms", "expected a list of numbers", ms)
    values_ms = tuple(_number(v, source, "token_curve.ms") for v in ms)
    counting = top.get("attention_counting", PAIR_COUNTINGS[0])
    if counting not in PAIR_COUNTINGS:
        raise _bad(source, "attention_counting", f"expected one of {PAIR_COUNTINGS}", counting)
    try:
        return LinearCostModel(
            **values,
            token_knots=tuple(knots),
            token_ms=values_ms,
            attention_counting=counting,
            info=info,
        )
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{source}: {exc}") from None


def save_model(model: LinearCostModel, path: str | Path) -> None:
    try:
        Path(path).write_text(json.dumps(model_to_json(model), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InvalidArgumentError(f"cannot write {path}: {exc.strerror or exc}") from exc


def load_model(path: str | Path) -> LinearCostModel:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InvalidArgumentError(f"cannot read cost model {path}: {reason}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"cost model {path}: not JSON ({exc})") from None
    return model_from_json(data, f"cost model {path}")


def _stats_json(stats: ErrorStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {"records": stats.records, "mean": stats.mean, "median": stats.median, "p90": stats.p90}


def _bad(source: str, where: str, expected: str, got: object) -> InvalidArgumentError:
    return InvalidArgumentError(f"{source}: field {where!r}: {expected}, got {got!r}")


def _fields(
    data: object, source: str, where: str, required: set[str], optional: set[str]
) -> Mapping[str, Any]:
    """``data`` as an object with exactly these keys (the optional ones may be missing)."""
    if not isinstance(data, Mapping):
        raise _bad(source, where or "(top level)", "expected an object", data)
    prefix = f"{where}." if where else ""
    for key in sorted(required):
        if key not in data:
            raise InvalidArgumentError(f"{source}: field {prefix + key!r} is missing")
    for key in data:
        if key not in required | optional:
            raise InvalidArgumentError(f"{source}: unknown field {prefix + str(key)!r}")
    return data


def _number(value: object, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(source, where, "expected a finite number", value)
    return float(value)


def _stats(data: object, source: str, where: str) -> ErrorStats | None:
    if data is None:
        return None
    d = _fields(data, source, where, {"records", "mean", "median", "p90"}, set())
    records = d["records"]
    if isinstance(records, bool) or not isinstance(records, int) or records < 0:
        raise _bad(source, f"{where}.records", "expected an int >= 0", records)
    return ErrorStats(records, *(_number(d[k], source, f"{where}.{k}") for k in TERMS_STATS))


def _info(data: object, source: str) -> CostModelInfo | None:
    if data is None:
        return None
    d = _fields(
        data,
        source,
        "metadata",
        {"model", "dtype", "threads", "date"},
        {"fit_error", "held_out_error"},
    )
    for key in ("model", "dtype", "date"):
        if not isinstance(d[key], str):
            raise _bad(source, f"metadata.{key}", "expected a string", d[key])
    threads = d["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise _bad(source, "metadata.threads", "expected an int >= 0", threads)
    return CostModelInfo(
        d["model"],
        d["dtype"],
        threads,
        d["date"],
        _stats(d.get("fit_error"), source, "metadata.fit_error"),
        _stats(d.get("held_out_error"), source, "metadata.held_out_error"),
    )
