"""A pressure callback that raises cannot break the manager: ``update`` runs inside manager
calls (part-way through a batch admission too), so its exception is contained, logged and
counted, and the call goes on as if the callback had returned."""

from __future__ import annotations

import logging

from pagedkv.core import BlockManager, CacheConfig, PressureLevel


def _mgr() -> BlockManager:
    # 8 usable blocks of 2 tokens; MEDIUM from 4 used blocks, HIGH from 6, CRITICAL from 8
    return BlockManager(
        CacheConfig(block_size=2, num_blocks=9, pressure_thresholds=(0.5, 0.75, 1.0))
    )


def test_raising_callback_mid_batch_leaves_the_batch_whole(caplog):
    mgr = _mgr()
    seen: list[tuple[PressureLevel, PressureLevel]] = []

    def boom(old: PressureLevel, new: PressureLevel) -> None:
        raise RuntimeError(f"pager down at {new.name}")

    mgr.on_pressure_change(boom)
    mgr.on_pressure_change(lambda old, new: seen.append((old, new)))
    with caplog.at_level(logging.WARNING, logger="pagedkv.core.pressure"):
        # "a" takes 3 blocks, "b" 3 more: the level crosses MEDIUM and HIGH inside the batch
        hits = mgr.admit_batch(["a", "b"], [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    assert hits.tolist() == [0, 0]
    assert [len(mgr.block_table(s)) for s in "ab"] == [3, 3]
    assert mgr.stats().num_sequences == 2
    assert mgr.pressure_level == PressureLevel.HIGH
    assert seen[-1][1] == PressureLevel.HIGH  # the callback after the failing one still ran
    assert mgr.stats().pressure_callback_errors == len(seen)
    assert "pager down" in caplog.text
    mgr.check_integrity()
    # the manager stays usable: free everything, the level drops, the pool is whole again
    mgr.free("a")
    mgr.free("b")
    assert mgr.pressure_level == PressureLevel.LOW
    stats = mgr.stats()
    assert (stats.blocks_used, stats.blocks_free + stats.blocks_cached) == (0, 8)
    mgr.check_integrity()


def test_keyboard_interrupt_is_not_swallowed():
    mgr = _mgr()

    def stop(old: PressureLevel, new: PressureLevel) -> None:
        raise KeyboardInterrupt

    mgr.on_pressure_change(stop)
    try:
        mgr.admit("a", list(range(1, 10)))
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("KeyboardInterrupt was swallowed")
    assert mgr.stats().pressure_callback_errors == 0
