from __future__ import annotations

import itertools

import numpy as np
import pytest

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import build_block_stream
from pagedkv.simulator.oracle import infinite_cache
from pagedkv.simulator.synthetic import SyntheticSpec, generate


@pytest.mark.parametrize(
    ("dataset", "mean_in", "mean_out"), [("sharegpt", 161, 338), ("alpaca", 19, 58)]
)
def test_length_means_match_the_datasets(dataset: str, mean_in: float, mean_out: float) -> None:
    tr = generate(SyntheticSpec(dataset=dataset, num_requests=20000, max_len=1 << 16, seed=1))
    ins = np.array([r.input_len for r in tr.requests])
    outs = np.array([r.output_len for r in tr.requests])
    assert ins.mean() == pytest.approx(mean_in, rel=0.06)
    assert outs.mean() == pytest.approx(mean_out, rel=0.06)


def test_seeded_and_poisson() -> None:
    spec = SyntheticSpec(num_requests=4000, rate=20.0, seed=3)
    a, b = generate(spec), generate(spec)
    assert a.requests == b.requests
    t = np.array([r.arrival_ms for r in a.requests])
    assert np.all(np.diff(t) >= 0)
    gaps = np.diff(t) / 1000.0
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.08)
    assert generate(SyntheticSpec(num_requests=50, seed=4)).requests != a.requests[:50]


def test_no_sharing_without_system_prompt_or_turns() -> None:
    tr = generate(SyntheticSpec(num_requests=300, seed=2))
    assert infinite_cache(build_block_stream(tr, 16), 0.0).hit_tokens == 0


def test_system_prompt_is_shared_by_every_request() -> None:
    tr = generate(SyntheticSpec(num_requests=200, system_prompt_tokens=64, seed=2))
    s = build_block_stream(tr, 16)
    first4 = [tuple(s.request_keys(r)[:4]) for r in range(len(tr))]
    assert len(set(first4)) == 1
    h = infinite_cache(s, 0.0)
    assert h.hit_tokens >= 64 * (len(tr) - 1)


def test_turns_extend_the_previous_prompt() -> None:
    tr = generate(SyntheticSpec(num_requests=400, mean_turns=4, think_time_s=1.0, seed=5))
    s = build_block_stream(tr, 16)
    by_first: dict[int, list[int]] = {}
    for r in range(len(tr)):
        by_first.setdefault(int(s.request_keys(r)[0]), []).append(r)
    convs = [rs for rs in by_first.values() if len(rs) > 1]
    assert convs, "expected multi-turn conversations"
    for rs in convs:
        for a, b in itertools.pairwise(rs):
            prev, cur = tr.requests[a], tr.requests[b]
            assert cur.input_len > prev.input_len + prev.output_len - 1
            # every full 16-token block of the previous prompt is a prefix block of this one
            full = prev.input_len // 16
            assert np.array_equal(s.request_keys(a)[:full], s.request_keys(b)[:full])


def test_invalid_spec_reports_values() -> None:
    with pytest.raises(InvalidArgumentError, match=r"mean_turns must be >= 1, got 0\.5"):
        generate(SyntheticSpec(mean_turns=0.5))
    with pytest.raises(InvalidArgumentError, match="unknown dataset 'wiki'"):
        generate(SyntheticSpec(dataset="wiki"))
