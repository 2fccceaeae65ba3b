"""The scheduler alone, over a bare BlockManager (no model, no storage, no torch): what it
plans for a step (``SchedulerOutput``) with exact block ids on a tiny pool."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from pagedkv.core import BlockManager
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.outputs import RequestMetrics
from pagedkv.engine.request import Request
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.scheduler import Scheduler
from pagedkv.engine.scheduler_output import SchedulerOutput


def make(usable: int = 6, budget: int = 16, **options: object) -> Scheduler:
    cfg = EngineConfig(block_size=4, num_blocks=usable, max_num_seqs=4, watermark=0.0, **options)
    return Scheduler(BlockManager(cfg.cache_config(usable)), cfg, budget)


def request(rid: str, n: int, order: int, first: int = 10) -> Request:
    return Request(
        rid,
        list(range(first, first + n)),
        SamplingParams(max_tokens=8),
        None,
        order,
        RequestMetrics(0.0),
    )


def run_step(s: Scheduler, out: SchedulerOutput, token: int = 7) -> None:
    """What the engine does with a step's result: commit, then sample a token for every
    sequence that completed (the simulator and the model alike)."""
    s.update(out)
    for q in out.scheduled:
        if q.completes:
            q.seq.tokens.append(token)
    s.check_integrity()
    s.manager.check_integrity()


def slots_of(out: SchedulerOutput) -> list[int]:
    """The slots the block tables give each scheduled position (what a kernel would write)."""
    bs = 4
    got = []
    for row, q in zip(out.block_tables, out.scheduled, strict=True):
        for pos in range(q.start, q.start + q.num_tokens):
            got.append(int(row[pos // bs]) * bs + pos % bs)
    return got


def test_prefill_then_batched_decode_exact_ids():
    s = make()
    a, b = request("a", 6, 1), request("b", 5, 2, first=20)
    s.add(a.seqs[0])
    s.add(b.seqs[0])
    out = s.schedule()
    assert out.shapes == [(0, 6), (0, 5)]
    assert out.block_tables.tolist() == [[1, 2], [3, 4]]
    assert out.slot_mapping.tolist() == [4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16]
    assert slots_of(out) == out.slot_mapping.tolist()
    assert (out.swap_out, out.swap_in, out.copies, out.preempted) == ([], [], [], [])
    assert [q.token_ids for q in out.scheduled] == [a.prompt_token_ids, b.prompt_token_ids]
    run_step(s, out)

    calls = []
    real = s.manager.append_batch
    s.manager.append_batch = lambda ids, toks: calls.append(list(ids)) or real(ids, toks)
    out = s.schedule()  # both decode: one batched append for the step
    assert calls == [[("a", 0), ("b", 0)]]
    assert out.shapes == [(6, 1), (5, 1)]
    assert out.slot_mapping.tolist() == [10, 17] == slots_of(out)
    assert out.num_batched_tokens == 2


def test_chunked_prefill_splits_by_the_token_budget():
    s = make(budget=4, usable=6)
    a = request("a", 10, 1)
    s.add(a.seqs[0])
    shapes = []
    while not s.running or s.running[0].num_remaining > 1 or not shapes:
        out = s.schedule()
        shapes.append(out.shapes)
        assert slots_of(out) == out.slot_mapping.tolist()
        run_step(s, out)
    assert shapes == [[(0, 4)], [(4, 4)], [(8, 2)]]
    assert s.manager.num_tokens(("a", 0)) == 10


def test_a_dry_pool_preempts_the_tail_and_names_it():
    s = make(usable=4)  # 16 slots: two 7-token prompts fit, their growth does not
    a, b = request("a", 7, 1), request("b", 7, 2, first=30)
    s.add(a.seqs[0])
    s.add(b.seqs[0])
    run_step(s, s.schedule())
    for _ in range(2):
        out = s.schedule()
        run_step(s, out)
        if out.preempted:
            break
    assert out.preempted == [("b", 0)]
    assert [q.seq.seq_id for q in out.scheduled] == [("a", 0)]
    assert ("b", 0) not in s.manager  # recompute: freed, waiting again
    assert [q.seq_id for q in s.waiting] == [("b", 0)]
    assert s.num_preemptions == 1


def test_swap_preemption_hands_the_copies_to_the_executor():
    s = make(usable=4, preemption_mode="swap", num_host_blocks=8)
    a, b = request("a", 7, 1), request("b", 7, 2, first=30)
    s.add(a.seqs[0])
    s.add(b.seqs[0])
    first = s.schedule()
    b_blocks = [int(x) for x in first.block_tables[1] if x]
    run_step(s, first)
    for _ in range(2):
        out = s.schedule()
        if out.preempted:
            break
        run_step(s, out)
    assert out.preempted == [("b", 0)]
    assert [d for d, _ in out.swap_out] == b_blocks  # device blocks of b, read before reuse
    assert len({h for _, h in out.swap_out}) == len(b_blocks)
    assert [q.seq_id for q in s.swapped] == [("b", 0)]
    run_step(s, out)


def test_the_scheduler_imports_without_torch():
    code = (
        "import sys\n"
        "import pagedkv.engine.engine_core, pagedkv.engine.scheduler\n"
        "import pagedkv.simulator.sim_executor, pagedkv.simulator.engine_replay\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_block_tables_pad_with_the_null_block():
    s = make()
    s.add(request("a", 9, 1).seqs[0])
    s.add(request("b", 2, 2, first=40).seqs[0])
    out = s.schedule()
    assert out.block_tables.shape == (2, 3)
    assert out.block_tables[1, 1:].tolist() == [0, 0]
    assert np.array_equal(out.slot_mapping, np.array(slots_of(out)))
