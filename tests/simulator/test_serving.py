from __future__ import annotations

import pytest

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import build_block_stream
from pagedkv.simulator.contiguous import ContiguousBackend, default_max_model_len
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.paged import PagedBackend
from pagedkv.simulator.serving import SchedulerLimits, replay
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace import from_lengths

COST = LinearCostModel(1.0, 0.01, 0.5)


def test_single_request_latencies_by_hand() -> None:
    tr = from_lengths([(100, 3)])
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 64), COST)
    s = res.summary
    # prefill step 1 + 0.01*100 = 2 ms; two decode steps of 1 + 0.5 = 1.5 ms each
    assert s["ttft_ms_p50"] == pytest.approx(2.0)
    assert s["tpot_ms_p50"] == pytest.approx(1.5)
    assert s["makespan_s"] == pytest.approx(0.005)
    assert s["steps"] == 3
    assert s["preemptions"] == 0
    assert s["requests_finished"] == 1
    # KV after the last decode step is 101 tokens of 7 blocks (112 slots) -> then freed
    assert res.timeline["token_states"].tolist() == [100, 101, 0]
    assert res.timeline["allocated_tokens"].tolist() == [112, 112, 0]


def test_queueing_when_memory_is_short() -> None:
    tr = from_lengths([(64, 2), (64, 2)], arrivals_ms=[0.0, 0.0])
    # 5 blocks of 16: the first request needs 4 (+1 to grow), the second waits
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 5), COST)
    assert res.summary["queue_ms_p99"] > 0
    assert res.summary["requests_finished"] == 2


def test_preemption_by_recompute_under_pressure() -> None:
    tr = generate(SyntheticSpec(num_requests=60, rate=50.0, seed=1, max_len=512))
    be = PagedBackend(build_block_stream(tr, 16), 80)
    res = replay(tr, be, COST)
    assert res.summary["preemptions"] > 0
    assert res.summary["requests_finished"] == 60
    assert be.mgr.num_used_blocks == 0
    be.mgr.check_integrity()


def test_prompt_larger_than_memory_is_rejected() -> None:
    tr = from_lengths([(1000, 2), (10, 2)])
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 8), COST)
    assert res.summary["requests_rejected"] == 1
    assert res.summary["requests_finished"] == 1


def test_contiguous_reservations() -> None:
    tr = from_lengths([(100, 29), (10, 1)])  # final KV lengths 128 and 10
    assert default_max_model_len(tr) == 2048
    for kind, reserved in [("max", 2 * 300), ("pow2", 128 + 16), ("oracle", 128 + 10)]:
        be = ContiguousBackend(tr, 10_000, kind, 300)
        assert be.admit(0, 100) == 0
        assert be.admit(1, 10) == 0
        assert be.allocated_tokens() == reserved
        assert be.grow([0, 1]) == []
        be.free(0)
        be.free(1)
        assert be.allocated_tokens() == 0
    with pytest.raises(InvalidArgumentError,
                       match=r"max_model_len 100 is shorter than .* \(128 tokens"):
        ContiguousBackend(tr, 10_000, "max", 100)


def test_paging_keeps_more_token_states_than_contiguous() -> None:
    tr = generate(SyntheticSpec(num_requests=150, rate=20.0, seed=7, max_len=1024))
    kv = 8192
    paged = replay(tr, PagedBackend(build_block_stream(tr, 16), kv // 16), COST).summary
    frac = {"paged": paged["token_state_fraction"]}
    for kind in ("max", "pow2", "oracle"):
        s = replay(tr, ContiguousBackend(tr, kv, kind, 1024), COST).summary
        frac[kind] = s["token_state_fraction"]
        assert s["requests_finished"] == 150
        assert s["preemptions"] == 0
    assert frac["max"] < frac["pow2"] < frac["oracle"] < frac["paged"] <= 1.0
    assert frac["paged"] > 0.9


def test_cost_model_parse_and_validation() -> None:
    m = LinearCostModel.parse("2, 0.5, 1")
    assert m.step_ms(10, 4) == 2 + 5 + 4
    with pytest.raises(InvalidArgumentError, match=r"3 comma-separated numbers.*got 2"):
        LinearCostModel.parse("1,2")
    with pytest.raises(InvalidArgumentError, match=r"base_ms must be >= 0, got -1"):
        LinearCostModel(-1.0)
    with pytest.raises(InvalidArgumentError, match="max_num_seqs=0"):
        SchedulerLimits(0, 10)
