"""The step cost model: features, the token curve, JSON files, ``--cost FILE.json`` and the
non-negative fits (linear, and curve by the active set)."""

from __future__ import annotations

import ast
import itertools
import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from sim_helpers import Rec, Shape

from pagedkv.cli import main
from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator import costmodel, costmodel_json, stepfeatures
from pagedkv.simulator.costfit import (
    curve_knots,
    error_stats,
    fit_cost_model,
    nnls,
    nnls_active_set,
    relative_errors,
)
from pagedkv.simulator.costmodel import TERMS, CostModelInfo, ErrorStats, LinearCostModel
from pagedkv.simulator.stepfeatures import StepFeatures, curve_weights, step_features

INFO = CostModelInfo(
    model="tiny",
    dtype="float32",
    threads=2,
    date="2025-01-02T03:04:05+00:00",
    fit_error=ErrorStats(40, 0.05, 0.04, 0.11),
    held_out_error=None,
)
FITTED = LinearCostModel(
    3.0, 0.05, 0.7, 0.002, 0.0004, token_knots=(1, 8, 64), token_ms=(1.0, 2.0, 9.0), info=INFO
)


# ------------------------------------------------------------------------------ features
def test_features_of_exact_shapes() -> None:
    f = step_features([(0, 4), (10, 1), (5, 3), (0, 1)])
    # the fresh prompt (0, 4): 4*5/2 = 10 causal pairs. Paged: the chunk (5, 3) scores its
    # 3 x 8 rectangle = 24; decodes at contexts 11 and 1 are both padded to the longest, 11:
    # 2 * 11 = 22. (0, 4) is a fresh prompt beside the others: a mixed step
    assert f == StepFeatures(
        prefill_tokens=7,
        decode_seqs=2,
        attention_pairs=10,
        paged_pairs=46,
        mixed=1,
        cached_tokens=5,  # the chunk (5, 3) copies its 5 cached tokens out of the pool
    )
    assert f.attention_kpairs == pytest.approx(0.010)
    assert f.paged_kpairs == pytest.approx(0.046)
    assert f.row() == pytest.approx((1.0, 7.0, 2.0, 0.010, 0.046, 1.0, 0.005))
    assert step_features([(0, 9)]) == StepFeatures(9, 0, 45, 0)  # fresh alone: no paged pairs
    assert step_features([(32, 9)]) == StepFeatures(9, 0, 0, 9 * 41, 0, 32)  # after cached KV
    assert step_features([(4, 1)]) == StepFeatures(0, 1, 0, 5)
    assert step_features([]) == StepFeatures(0, 0, 0, 0)


@pytest.mark.parametrize(
    ("shapes", "mixed"),
    [
        ([(0, 5), (0, 3)], 0),  # fresh prompts only: causal attention alone
        ([(7, 1), (9, 1)], 0),  # decodes only: the paged path alone
        ([(16, 5), (9, 1)], 0),  # a chunk after cached KV is paged too
        ([(0, 5), (9, 1)], 1),  # a fresh prompt beside a decode: both paths
        ([(0, 5), (16, 5)], 1),  # ... or beside a later chunk
        ([(0, 5), (0, 1)], 1),  # a 1-token prompt is not "fresh" (the paged path takes it)
    ],
)
def test_a_step_is_mixed_when_both_attention_paths_run(shapes: list[Shape], mixed: int) -> None:
    assert step_features(shapes).mixed == mixed


def test_pairs_are_counted_one_by_one() -> None:
    rng = random.Random(0)
    for _ in range(50):
        shapes = [
            (rng.choice([0, rng.randrange(200)]), rng.choice([1, rng.randrange(1, 40)]))
            for _ in range(6)
        ]
        fresh = [n for s, n in shapes if s == 0 and n > 1]
        chunks = [(s, n) for s, n in shapes if s > 0 and n > 1]
        decodes = [s + 1 for s, n in shapes if n == 1]
        f = step_features(shapes)
        # causal: query q sees keys 0..q; the paged rectangle: every query sees every key
        assert f.attention_pairs == sum(q + 1 for n in fresh for q in range(n))
        rectangles = sum(1 for s, n in chunks for _ in range(n) for _ in range(s + n))
        assert f.paged_pairs == rectangles + len(decodes) * max(decodes, default=0)


def test_decodes_are_charged_the_longest_context() -> None:
    mixed = step_features([(15, 1)] * 6 + [(499, 1)] * 6)
    assert mixed.paged_pairs == 12 * 500 == step_features([(499, 1)] * 12).paged_pairs


@pytest.mark.parametrize("shape", [(0, 0), (-1, 3), (4, -2)])
def test_features_refuse_impossible_shapes(shape: Shape) -> None:
    with pytest.raises(InvalidArgumentError, match="step shape"):
        step_features([(0, 5), shape])


# --------------------------------------------------------------------------------- model
def test_three_term_model_is_unchanged() -> None:
    m = LinearCostModel.parse("2, 0.5, 1")
    assert m == LinearCostModel(2.0, 0.5, 1.0)
    assert (m.attention_ms_per_kpair, m.paged_attention_ms_per_kpair, m.token_knots) == (0, 0, ())
    assert m.step_ms(10, 3) == pytest.approx(2 + 5 + 3)
    assert m.describe() == "step_ms = 2 + 0.5*prefill_tokens + 1*decode_seqs"
    # the shapes path charges the same when there is no attention term and no curve
    assert m.step_ms_for([(0, 10), (7, 1), (3, 1), (9, 1)]) == pytest.approx(m.step_ms(10, 3))


def test_step_ms_for_adds_both_attention_terms_and_the_curve() -> None:
    shapes = [(100, 1), (0, 20)]  # 210 prompt pairs, 101 paged pairs, 21 tokens
    curve = 2.0 + 7.0 * (21 - 8) / (64 - 8)
    want = 3.0 + 0.05 * 20 + 0.7 + 0.002 * 0.210 + 0.0004 * 0.101 + curve
    assert FITTED.curve_ms(21) == pytest.approx(curve)
    assert FITTED.step_ms_for(shapes) == pytest.approx(want)
    assert FITTED.step_ms(20, 1) == pytest.approx(3.0 + 1.0 + 0.7 + curve)
    assert FITTED.describe() == (
        "step_ms = 3 + 0.05*prefill_tokens + 0.7*decode_seqs + 0.002*attention_kpairs"
        " + 0.0004*paged_kpairs + curve(tokens) [1:1, 8:2, 64:9]"
    )


@pytest.mark.parametrize(
    ("tokens", "weights"),
    [
        (1, [1.0, 0.0, 0.0]),  # below the first knot: its value
        (4, [1.0, 0.0, 0.0]),  # on a knot
        (8, [0.0, 1.0, 0.0]),
        (16, [0.0, 0.0, 1.0]),
        (6, [0.5, 0.5, 0.0]),  # between two
        (14, [0.0, 0.25, 0.75]),
        (24, [0.0, -1.0, 2.0]),  # past the last: the last segment's line
    ],
)
def test_curve_weights(tokens: int, weights: list[float]) -> None:
    assert curve_weights((4, 8, 16), tokens) == weights
    m = LinearCostModel(0.0, 0.0, 0.0, token_knots=(4, 8, 16), token_ms=(2.0, 3.0, 5.0))
    assert m.curve_ms(tokens) == pytest.approx(
        sum(w * v for w, v in zip(weights, (2, 3, 5), strict=True))
    )


def test_no_curve_costs_nothing() -> None:
    assert curve_weights((), 7) == []
    assert LinearCostModel().curve_ms(7) == 0.0


@pytest.mark.parametrize("name", ["attention_ms_per_kpair", "paged_attention_ms_per_kpair"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_attention_terms_are_validated(name: str, bad: float) -> None:
    term: dict[str, Any] = {name: bad}
    with pytest.raises(InvalidArgumentError, match=f"^cost model {name} must be >= 0"):
        LinearCostModel(1.0, 0.1, 0.1, **term)


@pytest.mark.parametrize(
    ("knots", "values", "message"),
    [
        ((1, 8), (1.0,), "expected as many values as knots (none, or at least 2), got 2 knots"),
        ((8,), (1.0,), "got 1 knots and 1 values"),
        ((1, 8, 8), (1.0, 2.0, 3.0), "knots must increase from >= 1, got [1, 8, 8]"),
        ((8, 4), (1.0, 2.0), "knots must increase from >= 1, got [8, 4]"),
        ((0, 4), (1.0, 2.0), "knots must increase from >= 1, got [0, 4]"),
        ((1, 4), (1.0, -2.0), "values must be >= 0, got (1.0, -2.0)"),
        ((1, 4), (1.0, math.nan), "values must be >= 0"),
        ((1, 4), (0.0, 0.0), "cost model must charge something per step"),
    ],
)
def test_malformed_curve_is_refused(
    knots: tuple[int, ...], values: tuple[float, ...], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        LinearCostModel(0.0, 0.0, 0.0, token_knots=knots, token_ms=values)


def test_a_curve_alone_is_a_model() -> None:
    m = LinearCostModel(0.0, 0.0, 0.0, token_knots=(1, 2), token_ms=(0.0, 1.0))
    assert m.step_ms_for([(5, 1), (9, 1), (0, 3)]) == pytest.approx(4.0)  # 5 tokens


# ---------------------------------------------------------------------------------- JSON
def test_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cost.json"
    FITTED.save(path)
    data = json.loads(path.read_text())
    assert data["coefficients"]["paged_attention_ms_per_kpair"] == 0.0004
    assert data["token_curve"] == {"knots": [1, 8, 64], "ms": [1.0, 2.0, 9.0]}
    back = LinearCostModel.load(path)
    assert back == FITTED
    assert back.info == INFO
    assert LinearCostModel.parse(str(path)) == FITTED  # --cost FILE.json
    bare = LinearCostModel(1.0, 0.0, 0.0)
    assert bare.to_json()["metadata"] is None
    assert bare.to_json()["token_curve"] == {"knots": [], "ms": []}
    assert LinearCostModel.from_json(json.loads(json.dumps(bare.to_json()))) == bare


def test_a_file_without_a_curve_loads() -> None:
    data = FITTED.to_json()
    del data["token_curve"], data["metadata"]
    assert LinearCostModel.from_json(data) == replace(FITTED, token_knots=(), token_ms=())


def test_a_file_from_before_the_mixed_and_cached_prefix_terms_loads_them_as_zero() -> None:
    model = replace(FITTED, mixed_step_ms=2.0, cached_prefix_ms_per_ktoken=14.0)
    data = model.to_json()
    assert data["coefficients"]["cached_prefix_ms_per_ktoken"] == 14.0
    del data["coefficients"]["mixed_step_ms"], data["coefficients"]["cached_prefix_ms_per_ktoken"]
    assert LinearCostModel.from_json(data) == FITTED
    # a 16-token chunk after 1,000 cached tokens pays the term; a fresh 16-token prompt not
    assert model.step_ms_for([(1000, 16)]) - FITTED.step_ms_for([(1000, 16)]) == pytest.approx(14.0)
    assert model.step_ms_for([(0, 16)]) == FITTED.step_ms_for([(0, 16)])


def _mutate(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of ``data`` with the dotted field set to ``value`` (``...`` deletes it)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("coefficients.decode_ms_per_seq", ..., "'coefficients.decode_ms_per_seq' is missing"),
        ("coefficients.base_ms", "5", "'coefficients.base_ms': expected a finite number"),
        ("coefficients.base_ms", True, "'coefficients.base_ms': expected a finite number"),
        ("coefficients.base_ms", -2, "base_ms must be >= 0, got -2"),
        ("coefficients.prefil_ms_per_token", 0.1, "unknown field 'coefficients.prefil_ms"),
        (
            "coefficients.paged_attention_ms_per_kpair",
            ...,
            "'coefficients.paged_attention_ms_per_kpair' is missing",
        ),
        (
            "coefficients.paged_attention_ms_per_kpair",
            -1.0,
            "paged_attention_ms_per_kpair must be >= 0, got -1.0",
        ),
        ("schema", "other", "field 'schema': expected 'pagedkv-costmodel'"),
        ("version", 2, "field 'version': expected 1, got 2"),
        ("metadata.threads", "two", "'metadata.threads': expected an int >= 0"),
        ("metadata.model", None, "'metadata.model': expected a string"),
        ("metadata.fit_error.p90", ..., "'metadata.fit_error.p90' is missing"),
        ("coefficients", [1, 2, 3], "'coefficients': expected an object"),
        # the token curve
        ("token_curve", [1, 2], "'token_curve': expected an object"),
        ("token_curve.ms", ..., "'token_curve.ms' is missing"),
        ("token_curve.step", 2, "unknown field 'token_curve.step'"),
        ("token_curve.ms", [1.0, 2.0], "token curve: expected as many values as knots"),
        ("token_curve.knots", [1, 8, 8], "token curve: knots must increase from >= 1, got [1"),
        ("token_curve.knots", [64, 8, 1], "token curve: knots must increase from >= 1, got [64"),
        ("token_curve.ms", [1, -2, 9], "token curve: values must be >= 0, got (1.0, -2.0, 9.0)"),
        ("token_curve.ms", [1, "2", 9], "'token_curve.ms': expected a finite number, got '2'"),
        ("token_curve.ms", "fast", "'token_curve.ms': expected a list of numbers"),
        ("token_curve.knots", [1, 8.0, 64], "'token_curve.knots': expected a list of ints"),
        ("token_curve.knots", [1, True, 64], "'token_curve.knots': expected a list of ints"),
        ("token_curve.knots", "1,8,64", "'token_curve.knots': expected a list of ints"),
    ],
)
def test_malformed_json_is_refused_naming_the_field(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_mutate(FITTED.to_json(), field, value)))
    with pytest.raises(InvalidArgumentError, match=re.escape(message)) as exc:
        LinearCostModel.load(path)
    assert str(exc.value).startswith(f"cost model {path}: ")


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot read cost model"):
        LinearCostModel.parse(str(tmp_path / "missing.json"))
    (tmp_path / "x.json").write_text("{ not json")
    with pytest.raises(InvalidArgumentError, match="not JSON"):
        LinearCostModel.parse(str(tmp_path / "x.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InvalidArgumentError, match="'\\(top level\\)': expected an object"):
        LinearCostModel.load(tmp_path / "list.json")
    with pytest.raises(InvalidArgumentError, match="cannot write"):
        FITTED.save(tmp_path / "no" / "cost.json")


def test_simulate_takes_a_json_cost_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cost.json"
    FITTED.save(path)
    small = ["simulate", "--num-requests", "20", "--rate", "20", "--no-progress"]
    assert main([*small, "--mode", "serve", "--cost", str(path), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["cost_model"] == FITTED.describe()
    path.write_text(json.dumps(_mutate(FITTED.to_json(), "version", 9)))
    with pytest.raises(SystemExit) as exc:  # argparse's type error, before anything runs
        main([*small, "--cost", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pagedkv simulate: error: argument --cost: cost model ")
    assert "field 'version'" in err
    assert err.count("\n") == 1


def test_costmodel_imports_without_torch() -> None:
    code = (
        "import sys, pagedkv.simulator.costmodel, pagedkv.simulator.costmodel_json, "
        "pagedkv.simulator.costfit; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", [costmodel, costmodel_json, stepfeatures])
def test_the_model_and_its_files_need_neither_numpy_nor_torch(module: ModuleType) -> None:
    # (pagedkv itself imports numpy, so sys.modules cannot tell: read the imports)
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "pagedkv.errors" in imported
    assert not {m.split(".")[0] for m in imported} & {"numpy", "torch", "scipy"}


# ----------------------------------------------------------------------------------- fit
def _shapes(rng: random.Random) -> list[Shape]:
    decodes = [(rng.randrange(1, 2000), 1) for _ in range(rng.randrange(0, 20))]
    prefills = [(rng.choice([0, 0, 256]), rng.randrange(2, 600)) for _ in range(rng.randrange(3))]
    return decodes + prefills or [(0, 1)]


def _records(ms_of: Callable[[list[Shape]], float], n: int = 60, seed: int = 0) -> list[Rec]:
    """``n`` random steps, each taking ``ms_of(shapes)`` milliseconds."""
    rng = random.Random(seed)
    return [Rec(shapes, ms_of(shapes) / 1000) for shapes in (_shapes(rng) for _ in range(n))]


def _linear(*coef: float) -> Callable[[list[Shape]], float]:
    """Step milliseconds of the :data:`TERMS` coefficients ``coef`` (negative ones too)."""
    return lambda shapes: float(np.array(step_features(shapes).row()) @ np.array(coef))


@pytest.mark.parametrize("relative", [False, True])
def test_fit_recovers_known_coefficients(relative: bool) -> None:
    truth = (3.0, 0.05, 0.7, 0.002, 0.0005, 25.0, 4.0)
    records = _records(_linear(*truth))
    assert 10 < sum(step_features(r.shapes).mixed for r in records) < 50  # both kinds of step
    model, err = fit_cost_model(records, relative=relative)
    for name, want in zip(TERMS, truth, strict=True):
        assert getattr(model, name) == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert model.token_knots == ()
    assert err.records == 60
    assert err.p90 < 1e-6


def test_a_term_the_data_do_not_need_is_exactly_zero() -> None:
    model, _ = fit_cost_model(_records(_linear(3.0, 0.05, 0.0, 0.002, 0.0, 0.0, 0.0)))
    assert model.decode_ms_per_seq == 0.0
    assert model.paged_attention_ms_per_kpair == 0.0
    assert model.mixed_step_ms == 0.0
    assert model.cached_prefix_ms_per_ktoken == 0.0
    assert model.base_ms == pytest.approx(3.0, rel=1e-6)


def test_fit_keeps_coefficients_non_negative_where_least_squares_would_not() -> None:
    records = _records(_linear(20.0, 0.05, -0.4, 0.002, 0.0005, 10.0, 3.0))
    x = np.array([step_features(r.shapes).row() for r in records])
    y = np.array([r.seconds * 1000 for r in records])
    assert np.linalg.lstsq(x, y, rcond=None)[0][2] < -0.3  # what plain least squares says
    model, _ = fit_cost_model(records)
    coef = np.array([getattr(model, t) for t in TERMS])
    assert (coef >= 0).all()
    assert coef[2] == 0.0
    # optimal (KKT): no gradient along a positive term, none downhill into a zero one
    grad = x.T @ (x @ coef - y)
    scale = np.abs(x).sum(axis=0) * np.abs(y).max()
    assert (np.abs(grad[coef > 0]) <= 1e-9 * scale[coef > 0]).all()
    assert (grad[coef == 0] >= -1e-9 * scale[coef == 0]).all()


def test_nnls_matches_kkt_on_random_problems() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(size=(15, 4))
        b = rng.normal(size=15)
        x = nnls(a, b)
        grad = a.T @ (a @ x - b)
        assert (x >= 0).all()
        assert np.allclose(grad[x > 0], 0, atol=1e-9)
        assert (grad[x == 0] >= -1e-9).all()


def test_active_set_agrees_with_the_exhaustive_nnls() -> None:
    rng = np.random.default_rng(1)
    for i in range(60):
        # every third problem has fewer rows than terms: there the active set often has to
        # drop a term it added (its least squares turned negative), the path others rarely take
        m, n = (5, 8) if i % 3 == 0 else (12, 2 + i % 6)
        a = rng.normal(size=(m, n)) * rng.uniform(0.01, 100, size=n)  # columns of any unit
        # some problems have an all-positive exact solution, the others need the constraints
        b = a @ rng.uniform(0.1, 2, size=n) if i % 3 == 1 else rng.normal(size=m)
        x, y = nnls_active_set(a, b), nnls(a, b)
        assert (x >= 0).all()
        rx, ry = a @ x - b, a @ y - b
        assert float(rx @ rx) == pytest.approx(float(ry @ ry), rel=1e-9, abs=1e-9)


def _by_tokens(*tokens: int) -> list[Rec]:
    return [Rec([(0, t)] if t > 1 else [(5, 1)], 0.01) for t in tokens]


def test_curve_knots_drop_those_without_data() -> None:
    # every count up to 16, then 24, 32, 48, 64, 96 and 100 itself; kept: those with a step
    # since the previous kept knot (none in (6, 24], (24, 32], (48, 64], (64, 96])
    assert curve_knots(_by_tokens(3, 5, 6, 40, 100, 6)) == (3, 5, 6, 48, 100)
    assert curve_knots(_by_tokens(1, 2, 16)) == (1, 2, 16)
    assert curve_knots(_by_tokens(5, 5)) == (5, 6)  # one size: a flat two-knot curve


def _curve_truth(records: list[Rec]) -> LinearCostModel:
    """A known non-decreasing curve (flat on its first segment, concave after) on the knots
    the fit picks, with decode, both attention, mixed and cached-prefix terms."""
    knots = curve_knots(records)
    values = [1.5 + 0.8 * math.sqrt(k) for k in knots]
    values[1] = values[0]
    return LinearCostModel(
        0.0, 0.0, 0.3, 0.002, 0.0005, 30.0, 5.0, token_knots=knots, token_ms=tuple(values)
    )


@pytest.mark.parametrize("relative", [False, True])
def test_curve_fit_recovers_a_known_curve(relative: bool) -> None:
    records = _records(lambda shapes: 1.0, n=120)
    truth = _curve_truth(records)
    records = [Rec(r.shapes, truth.step_ms_for(r.shapes) / 1000) for r in records]
    model, err = fit_cost_model(records, relative=relative, curve=True)
    assert model.token_knots == truth.token_knots
    assert model.token_ms == pytest.approx(truth.token_ms, rel=1e-6)
    for name in TERMS:
        assert getattr(model, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-9)
    assert err.p90 < 1e-6
    # steps the fit did not see, past the last knot too
    for r in _records(lambda shapes: 1.0, n=40, seed=1) + _by_tokens(1, 3, 1500, 4000):
        assert model.step_ms_for(r.shapes) == pytest.approx(truth.step_ms_for(r.shapes), abs=1e-6)


def test_curve_fit_stays_non_decreasing_where_the_data_dip() -> None:
    # prefills alone, 64 tokens measured faster than 32 (noise): a free curve through the
    # means would fall from 16 to 12 ms; the fit levels the two at their mean instead (the
    # best non-decreasing curve), and no other term can bend it back down
    ms = {16: 10.0, 32: 16.0, 64: 12.0, 128: 20.0, 256: 30.0}
    records = [Rec([(0, t)], (m + d) / 1000) for t, m in ms.items() for d in (-0.2, 0.0, 0.2)]
    model, _ = fit_cost_model(records, curve=True)
    assert model.token_knots == (16, 32, 64, 128, 256)
    assert model.token_ms == pytest.approx((10.0, 14.0, 14.0, 20.0, 30.0), rel=1e-9)
    assert model.token_ms[1] == model.token_ms[2]  # a zero increment, exactly
    assert all(b >= a for a, b in itertools.pairwise(model.token_ms))
    assert model.decode_ms_per_seq == model.attention_ms_per_kpair == 0.0


def test_curve_may_fall_between_small_token_counts() -> None:
    # decodes alone, 3 rows measured slower than 4 (a CPU's GEMM kernels): up to FREE_KNOTS
    # the fit follows the data down; above it a dip is levelled (the test before this one)
    ms = {1: 60.0, 2: 100.0, 3: 137.0, 4: 110.0, 5: 130.0, 8: 126.0, 32: 160.0, 64: 150.0}
    records = [Rec([(40, 1)] * b, (m + d) / 1000) for b, m in ms.items() for d in (-0.5, 0.0, 0.5)]
    model, _ = fit_cost_model(records, curve=True)
    assert model.token_knots == (1, 2, 3, 4, 5, 8, 32, 64)
    got = [model.step_ms_for([(40, 1)] * b) for b in ms]
    assert got[:6] == pytest.approx([60.0, 100.0, 137.0, 110.0, 130.0, 126.0], rel=1e-6)
    assert got[6] == got[7] == pytest.approx(155.0, rel=1e-6)  # 32 and 64 levelled


def test_fit_refuses_too_few_or_impossible_records() -> None:
    truth = _linear(3.0, 0.05, 0.7, 0.002, 0.0005, 25.0, 1.0)
    with pytest.raises(InvalidArgumentError, match="7 terms need at least 7 step records, got 6"):
        fit_cost_model(_records(truth, n=6))
    bad = [*_records(truth, n=7), Rec([(0, 1)], 0.0)]
    for curve in (False, True):
        with pytest.raises(InvalidArgumentError, match="step record 7: expected a duration > 0"):
            fit_cost_model(bad, curve=curve)


def test_error_stats_are_relative_errors() -> None:
    model = LinearCostModel(10.0, 0.0, 0.0)  # 10 ms a step
    records = [Rec([(0, 1)], s / 1000) for s in (10.0, 8.0, 12.5, 5.0)]
    assert relative_errors(model, records) == pytest.approx([0.0, 0.25, 0.2, 1.0])
    stats = error_stats(model, records)
    assert stats.records == 4
    assert stats.mean == pytest.approx(0.3625)
    assert stats.median == pytest.approx(0.225)
