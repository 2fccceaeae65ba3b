from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import build_block_stream
from pagedkv.simulator.contiguous import ContiguousBackend, default_max_model_len
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.paged import PagedBackend
from pagedkv.simulator.serving import SchedulerLimits, replay
from pagedkv.simulator.serving_scheduler import ReplayScheduler
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace import Request, Trace, from_lengths

COST = LinearCostModel(1.0, 0.01, 0.5)


def test_single_request_latencies_by_hand() -> None:
    tr = from_lengths([(100, 3)])
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 64), COST)
    s = res.summary
    # prefill step 1 + 0.01*100 = 2 ms; two decode steps of 1 + 0.5 = 1.5 ms each
    assert s["ttft_ms_p50"] == pytest.approx(2.0)
    assert s["tpot_ms_p50"] == pytest.approx(1.5)
    assert s["duration_s"] == pytest.approx(0.005)
    assert s["steps"] == 3
    assert s["preemptions"] == 0
    assert s["requests"] == 1
    # KV after the last decode step is 101 tokens of 7 blocks (112 slots) -> then freed
    assert res.timeline["token_states"].tolist() == [100, 101, 0]
    assert res.timeline["allocated_tokens"].tolist() == [112, 112, 0]


def test_queueing_when_memory_is_short() -> None:
    tr = from_lengths([(64, 2), (64, 2)], arrivals_ms=[0.0, 0.0])
    # 5 blocks of 16: the first request needs 4 (+1 to grow), the second waits
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 5), COST)
    assert res.summary["queue_ms_p99"] > 0
    assert res.summary["requests"] == 2


def test_preemption_by_recompute_under_pressure() -> None:
    tr = generate(SyntheticSpec(num_requests=60, rate=50.0, seed=1, max_len=512))
    be = PagedBackend(build_block_stream(tr, 16), 80)
    res = replay(tr, be, COST)
    assert res.summary["preemptions"] > 0
    assert res.summary["requests"] == 60
    assert be.mgr.num_used_blocks == 0
    be.mgr.check_integrity()


def test_prompt_larger_than_memory_is_rejected() -> None:
    tr = from_lengths([(1000, 2), (10, 2)])
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 8), COST)
    assert res.summary["requests_rejected"] == 1
    assert res.summary["requests"] == 1


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
    with pytest.raises(
        InvalidArgumentError, match=r"max_model_len 100 is shorter than .* \(128 tokens"
    ):
        ContiguousBackend(tr, 10_000, "max", 100)


def test_paging_keeps_more_token_states_than_contiguous() -> None:
    tr = generate(SyntheticSpec(num_requests=150, rate=20.0, seed=7, max_len=1024))
    kv = 8192
    paged = replay(tr, PagedBackend(build_block_stream(tr, 16), kv // 16), COST).summary
    frac = {"paged": paged["token_state_fraction"]}
    for kind in ("max", "pow2", "oracle"):
        s = replay(tr, ContiguousBackend(tr, kv, kind, 1024), COST).summary
        frac[kind] = s["token_state_fraction"]
        assert s["requests"] == 150
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


def test_chunked_prefill_single_request_by_hand() -> None:
    tr = from_lengths([(100, 3)])
    limits = SchedulerLimits(max_batched_tokens=40, chunked_prefill=True)
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 64), COST, limits)
    s = res.summary
    # chunks of 40, 40, 20 tokens: 1.4 + 1.4 + 1.2 ms, then two decode steps of 1.5 ms
    assert s["ttft_ms_p50"] == pytest.approx(4.0)
    assert s["tpot_ms_p50"] == pytest.approx(1.5)
    assert s["duration_s"] == pytest.approx(0.007)
    assert s["steps"] == 5
    assert s["prefill_tokens"] == 100
    # KV written so far; the whole prompt's 7 blocks are allocated at admission
    assert res.timeline["token_states"].tolist() == [40, 80, 100, 101, 0]
    assert res.timeline["allocated_tokens"].tolist() == [112, 112, 112, 112, 0]


def test_chunked_prefill_shares_the_step_budget_with_decode() -> None:
    tr = from_lengths([(10, 5), (100, 2)], arrivals_ms=[0.0, 0.0])
    limits = SchedulerLimits(max_batched_tokens=30, chunked_prefill=True)
    res = replay(tr, PagedBackend(build_block_stream(tr, 16), 64), COST, limits)
    # step 1: A's 10 + B's first 20 prompt tokens (1.3 ms); steps 2-3: A decodes, B gets the
    # remaining 29 of the budget (1.79 ms each); step 4: B's last 22 (1.72 ms); step 5: both
    # decode (2.0 ms)
    assert res.ttft_ms.tolist() == pytest.approx([1.3, 6.6])
    assert res.summary["duration_s"] == pytest.approx(0.0086)
    assert res.summary["steps"] == 5
    unchunked = replay(
        tr,
        PagedBackend(build_block_stream(tr, 16), 64),
        COST,
        SchedulerLimits(max_batched_tokens=30, chunked_prefill=False),
    )
    # without chunking B's 100-token prompt runs as one step after A's admission step
    assert unchunked.ttft_ms.tolist() == pytest.approx([1.1, 3.6])


@pytest.mark.parametrize("kv_blocks", [60, 400])
def test_chunked_prefill_finishes_every_request(kv_blocks: int) -> None:
    tr = generate(SyntheticSpec(num_requests=80, rate=40.0, seed=2, max_len=512))
    limits = SchedulerLimits(max_batched_tokens=64, chunked_prefill=True)
    be = PagedBackend(build_block_stream(tr, 16), kv_blocks)
    res = replay(tr, be, COST, limits)
    assert res.summary["requests"] + res.summary["requests_rejected"] == 80
    assert res.summary["requests_rejected"] == 0
    assert (res.timeline["token_states"] <= res.timeline["allocated_tokens"]).all()
    assert be.mgr.num_used_blocks == 0
    be.mgr.check_integrity()
    contiguous = replay(tr, ContiguousBackend(tr, kv_blocks * 16, "oracle", 2048), COST, limits)
    assert contiguous.summary["requests"] == 80


def test_shared_prefix_tokens_count_once_in_token_states() -> None:
    # 8 requests sharing a 64-token prefix (4 blocks), each with its own 16-token tail; the
    # first arrives alone, the other 7 while its prefill step runs (1.8 ms): they are admitted
    # in step 2, once step 1 has committed the prefix's KV
    arrivals = [0.0] + [1.0] * 7
    tr = Trace(
        [Request(t, 80, 20, (1, 2, 3, 4, 100 + i)) for i, t in enumerate(arrivals)], 16, "shared"
    )
    be = PagedBackend(build_block_stream(tr, 16), 200)
    res = replay(tr, be, COST)
    assert res.summary["prefix_hit_tokens"] == 7 * 64
    assert res.timeline["allocated_tokens"][0] == 5 * 16  # step 1: the first prompt alone
    # step 2: 8 prompts of 80 tokens in 4 shared + 8 x 1 private blocks = 12 blocks, plus the
    # block the first request's decode token opened
    assert res.timeline["allocated_tokens"][1] == (12 + 1) * 16
    assert res.timeline["token_states"][1] == 4 * 16 + 8 * 16 + 1
    assert (res.timeline["token_states"] <= res.timeline["allocated_tokens"]).all()
    # counting each sequence's view instead (shared blocks 8 times) gives 216% here
    assert 0.5 < res.summary["token_state_fraction"] <= 1.0


def test_prompts_admitted_in_the_same_step_do_not_share_uncomputed_blocks() -> None:
    # KV becomes shareable only after the step that computes it (BlockManager.commit): eight
    # identical-prefix prompts admitted together each compute their own copy, as in an engine
    tr = Trace([Request(0.0, 80, 20, (1, 2, 3, 4, 100 + i)) for i in range(8)], 16, "shared")
    be = PagedBackend(build_block_stream(tr, 16), 200)
    res = replay(tr, be, COST)
    assert res.summary["prefix_hit_tokens"] == 0
    assert res.timeline["allocated_tokens"][0] == 8 * 5 * 16
    assert res.timeline["token_states"][0] == 8 * 80
    be.mgr.check_integrity()


def test_chunked_prefill_preempts_the_newest_request_even_mid_prefill() -> None:
    # A decodes for long; B arrives later with a long prompt prefilled 8 tokens a step, holding
    # all 10 of its prompt blocks. When A's growth runs out of blocks, B (newest) must go.
    tr = from_lengths([(16, 150), (160, 2)], arrivals_ms=[0.0, 5.0])
    be = PagedBackend(build_block_stream(tr, 16), 12, prefix_caching=False)
    preempted: list[tuple[int, int]] = []
    preempt = be.mgr.preempt

    def spy(seq_id: Any, mode: str = "recompute") -> Any:  # whatever preempt returns
        preempted.append((seq_id, be.mgr.num_tokens(seq_id)))
        return preempt(seq_id, mode)

    be.mgr.preempt = spy  # type: ignore[method-assign]
    limits = SchedulerLimits(max_batched_tokens=8, chunked_prefill=True)
    res = replay(tr, be, COST, limits)
    assert preempted
    assert preempted[0] == (1, 160)
    assert all(rid == 1 for rid, _ in preempted)
    assert res.summary["requests"] == 2
    assert be.mgr.num_used_blocks == 0


@dataclass(frozen=True)
class _CountingCost(LinearCostModel):
    """Records what each step was charged for: the batch the scheduler actually ran."""

    batches: list[tuple[int, int]] = field(default_factory=list)

    def step_ms(self, prefill_tokens: int, decode_seqs: int) -> float:
        self.batches.append((prefill_tokens, decode_seqs))
        return super().step_ms(prefill_tokens, decode_seqs)


def test_scheduler_steps_a_chunked_prefill_within_the_token_budget() -> None:
    tr = from_lengths([(10, 5), (100, 2)], arrivals_ms=[0.0, 0.0])
    limits = SchedulerLimits(max_batched_tokens=30, chunked_prefill=True)
    sched = ReplayScheduler(tr, PagedBackend(build_block_stream(tr, 16), 64), COST, limits)
    states = []
    for _ in range(5):
        assert sched.step()
        states.append((sched.prefill_total, sched.todo[1], [*sched.prefilling], [*sched.running]))
    # A's whole prompt and 20 of B's fill step 1; then A's decode token leaves 29 for B
    assert states == [
        (30, 80, [1], [0]),
        (59, 51, [1], [0]),
        (88, 22, [1], [0]),
        (110, 0, [], [0, 1]),
        (110, 0, [], []),
    ]
    assert not sched.step()
    assert (sched.done, sched.steps, sched.gen) == (2, 5, [5, 2])


def test_scheduler_keeps_every_request_in_one_place_through_preemptions() -> None:
    tr = generate(SyntheticSpec(num_requests=60, rate=50.0, seed=1, max_len=512))
    cost = _CountingCost(1.0, 0.01, 0.5)
    limits = SchedulerLimits(max_num_seqs=8, max_batched_tokens=64, chunked_prefill=True)
    sched = ReplayScheduler(tr, PagedBackend(build_block_stream(tr, 16), 40), cost, limits)
    while sched.pending or sched.waiting or sched.prefilling or sched.running:
        sched.step()
        places = [*sched.pending, *sched.waiting, *sched.prefilling, *sched.running]
        assert len(places) == len(set(places))
        assert len(places) + sched.done + sched.rejected == len(tr)
        assert len(sched.prefilling) + len(sched.running) <= limits.max_num_seqs
    assert sched.preemptions > 0
    assert (sched.done, sched.rejected) == (60, 0)
    assert len(cost.batches) == sched.steps
    assert all(0 < prefill + decode <= 64 for prefill, decode in cost.batches)
