"""Config validation and sizing, statistics, and the kernel-format exports."""

from __future__ import annotations

import numpy as np
import pytest

from pagedkv import BlockManager, CacheConfig, ConfigError, InvalidArgumentError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block_size": 0, "num_blocks": 8}, "block_size must be > 0, got 0"),
        ({"block_size": 4, "num_blocks": 1}, "num_blocks must be > 1"),
        ({"block_size": 4, "num_blocks": 8, "hash_algo": "md5"}, "unknown hash_algo 'md5'"),
        ({"block_size": 4, "num_blocks": 8, "eviction_policy": "rand"}, "unknown eviction_policy"),
        ({"block_size": 4, "num_blocks": 8, "watermark": 1.5}, r"watermark must be in \[0, 1\)"),
        ({"block_size": 4, "num_blocks": 8, "cache_visibility": "x"}, "cache_visibility"),
        ({"block_size": 4, "num_blocks": 8, "pressure_thresholds": (0.9, 0.5, 0.95)}, "increasing"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CacheConfig(**kwargs)


def test_from_memory_budget_sizes_pool():
    cfg = CacheConfig.from_memory_budget(
        1 << 20, block_size=16, num_layers=2, num_kv_heads=2, head_dim=8, dtype="float16"
    )
    assert cfg.bytes_per_token == 2 * 2 * 2 * 8 * 2
    # the budget pays for the usable blocks; the null block is the one block beyond it
    assert cfg.num_usable_blocks == (1 << 20) // (16 * 128) == cfg.num_blocks - 1
    assert cfg.total_bytes == cfg.num_blocks * 16 * 128
    stats = BlockManager(cfg).stats()
    assert (stats.num_blocks, stats.num_usable_blocks) == (cfg.num_blocks, cfg.num_usable_blocks)
    assert stats.bytes_total == 1 << 20  # what the budget paid for
    with pytest.raises(ConfigError, match="holds 0 blocks"):
        CacheConfig.from_memory_budget(
            2000, block_size=16, num_layers=2, num_kv_heads=2, head_dim=8
        )


def test_stats_usage_fragmentation_and_bytes(make_mgr):
    mgr = make_mgr(bytes_per_token=100)
    mgr.admit("a", list(range(10)))  # 3 blocks, 10 of 12 slots hold tokens
    mgr.fork("a", "b")  # the shared partial block counts once
    st = mgr.stats()
    assert (st.blocks_used, st.tokens_stored, st.num_sequences) == (3, 10, 2)
    assert st.internal_fragmentation == pytest.approx(2 / 12)
    assert st.usage == pytest.approx(3 / 9)
    assert (st.bytes_used, st.bytes_total) == (3 * 400, 9 * 400)
    assert st.as_dict()["peak_usage"] == pytest.approx(3 / 9)
    mgr.free("a")
    mgr.free("b")
    mgr.reset_stats()
    assert mgr.stats().allocations == 0
    assert mgr.stats().peak_blocks_used == 0


def test_block_table_array_and_flashinfer_table(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(10)))
    mgr.admit("b", [5] * 4)
    bt = mgr.block_table_array(["a", "b"])
    assert bt.dtype == np.int32
    assert bt.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mgr.block_table_array(["b"], max_blocks=4).tolist() == [[4, 0, 0, 0]]
    with pytest.raises(InvalidArgumentError, match="3 entries > width 2"):
        mgr.block_table_array(["a"], max_blocks=2)
    indptr, indices, last = mgr.flashinfer_page_table(["a", "b"])
    assert [x.dtype for x in (indptr, indices, last)] == [np.int32] * 3
    assert (indptr.tolist(), indices.tolist(), last.tolist()) == ([0, 3, 4], [1, 2, 3, 4], [2, 4])


def test_slot_mapping_padding_and_range_checks(make_mgr):
    from pagedkv.core.export import pad_slot_mappings

    mgr = make_mgr()
    mgr.admit("a", list(range(6)))
    padded = pad_slot_mappings([mgr.slot_mapping("a", 4), mgr.slot_mapping("a", 0, 1)])
    assert padded.dtype == np.int64
    assert padded.tolist() == [[8, 9], [4, -1]]
    with pytest.raises(InvalidArgumentError, match=r"\[2, 9\) outside sequence of 6 tokens"):
        mgr.slot_mapping("a", 2, 9)
