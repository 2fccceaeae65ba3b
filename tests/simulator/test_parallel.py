"""``--jobs``: sweep points and serving replays in worker processes give the same report."""

from __future__ import annotations

from typing import Any

import pytest

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator import SimulationConfig, SyntheticSpec, generate, run_simulation
from pagedkv.simulator.parallel import resolve_jobs, run_points

TIMING = {"seconds", "refs_per_second"}


def _untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _square_plus(shared: int, point: int) -> tuple[int, int]:
    return point, point * point + shared


def test_run_points_keeps_point_order_and_reports_progress() -> None:
    seen: list[tuple[int, int]] = []
    out = run_points(
        _square_plus, 10, list(range(7)), jobs=2, done=lambda k, n: seen.append((k, n))
    )
    assert out == [(p, p * p + 10) for p in range(7)]
    assert seen == [(k, 7) for k in range(1, 8)]
    assert run_points(_square_plus, 1, [3], jobs=4) == [(3, 10)]


def _fail_on_three(shared: int, point: int) -> int:
    if point == 3:
        raise InvalidArgumentError(f"point {point} is bad")
    return point


def test_a_failing_point_raises_its_error() -> None:
    with pytest.raises(InvalidArgumentError, match="point 3 is bad"):
        run_points(_fail_on_three, 0, list(range(8)), jobs=2)


def test_jobs_must_not_be_negative() -> None:
    with pytest.raises(InvalidArgumentError, match="jobs must be >= 0"):
        resolve_jobs(-1)
    assert resolve_jobs(0) >= 1
    with pytest.raises(InvalidArgumentError, match="jobs must be >= 0"):
        run_simulation(generate(SyntheticSpec(num_requests=5)), SimulationConfig(jobs=-2))


def test_parallel_report_equals_sequential_report() -> None:
    trace = generate(SyntheticSpec(num_requests=120, seed=3, max_len=1024))

    def cfg(jobs: int) -> SimulationConfig:
        return SimulationConfig(
            block_sizes=(16, 32), capacities=(20, 60), kv_tokens=8192, jobs=jobs
        )

    seq, seq_tl = run_simulation(trace, cfg(1))
    par, par_tl = run_simulation(trace, cfg(2))
    assert _untimed(par["hitrate"]) == _untimed(seq["hitrate"])
    assert len(par["hitrate"]) == 2 * (1 + 2 * 5)  # per block size: ceiling + 2 caps x 5
    assert par["serving"] == seq["serving"]
    assert par_tl.keys() == seq_tl.keys()
    for name, tl in seq_tl.items():
        for key, arr in tl.items():
            assert (par_tl[name][key] == arr).all(), (name, key)
