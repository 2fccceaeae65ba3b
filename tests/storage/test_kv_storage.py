"""KVStorage: in-place writes by slot, gathers, CoW block copies, host swap, typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedkv.core import CacheConfig
from pagedkv.errors import ConfigError, InvalidArgumentError, ShapeError
from pagedkv.storage import KVStorage


def _store(dtype=torch.float32, **kw):
    args = {
        "num_layers": 2,
        "num_blocks": 8,
        "block_size": 4,
        "num_kv_heads": 2,
        "head_dim": 3,
        "dtype": dtype,
        "num_host_blocks": 4,
    }
    args.update(kw)
    return KVStorage(**args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_write_then_gather_roundtrip_in_place(dtype):
    s = _store(dtype)
    ptr = s.kv_cache.data_ptr()
    table = [5, 2, 7]
    k = torch.randn(10, 2, 3).to(dtype)
    v = torch.randn(10, 2, 3).to(dtype)
    pos = np.arange(10)
    slots = np.asarray(table)[pos // 4] * 4 + pos % 4
    s.write(1, k, v, slots)
    gk, gv = s.gather(1, table, 0, 10)
    assert torch.equal(gk, k)
    assert torch.equal(gv, v)
    gk, gv = s.gather(1, table, 3, 6)
    assert torch.equal(gk, k[3:6])
    assert torch.equal(gv, v[3:6])
    # layer 0 untouched, views agree with the layout
    assert not s.kv_cache[0].any()
    assert torch.equal(s.key_cache(1)[2, 1], k[5])
    assert torch.equal(s.value_cache(1)[7, 1], v[9])
    assert s.kv_cache.data_ptr() == ptr
    s.check_integrity()


def test_write_skips_minus_one_slots():
    s = _store()
    k, v = torch.ones(3, 2, 3), torch.full((3, 2, 3), 2.0)
    s.write(0, k, v, [-1, 9, -1])
    assert int((s.kv_cache != 0).sum()) == 2 * 6
    gk, gv = s.gather_slots(0, [9])
    assert torch.equal(gk[0], k[1])
    assert torch.equal(gv[0], v[1])


def test_write_errors_name_expected_and_got_and_change_nothing():
    s = _store()
    before = s.kv_cache.clone()
    good = torch.randn(2, 2, 3)
    with pytest.raises(ShapeError, match=r"expected shape \[2, 2, 3\], got \[2, 2, 4\]"):
        s.write(0, torch.randn(2, 2, 4), good, [1, 2])
    with pytest.raises(ShapeError, match=r"expected dtype torch\.float32, got torch\.float16"):
        s.write(0, good.half(), good, [1, 2])
    with pytest.raises(ShapeError, match="expected device"):
        s.write(0, good.to("meta"), good, [1, 2])
    with pytest.raises(ShapeError, match="integer dtype"):
        s.write(0, good, good, [1.0, 2.0])
    with pytest.raises(InvalidArgumentError, match="slots < 32"):
        s.write(0, good, good, [1, 32])
    with pytest.raises(InvalidArgumentError, match="layer_idx"):
        s.write(2, good, good, [1, 2])
    with pytest.raises(InvalidArgumentError, match="token range"):
        s.gather(0, [1], 0, 5)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        _store(torch.int8)
    with pytest.raises(InvalidArgumentError, match="num_blocks"):
        _store(num_blocks=0)
    assert torch.equal(s.kv_cache, before)


def test_copy_blocks_all_layers_one_op_reads_pre_copy_state():
    s = _store()
    s.kv_cache.copy_(torch.randn_like(s.kv_cache))
    before = s.kv_cache.clone()
    s.copy_blocks([(1, 4), (4, 6)])  # 4 is both a source and a destination
    assert torch.equal(s.kv_cache[:, 4], before[:, 1])
    assert torch.equal(s.kv_cache[:, 6], before[:, 4])
    assert torch.equal(s.kv_cache[:, 1], before[:, 1])
    with pytest.raises(InvalidArgumentError, match="distinct"):
        s.copy_blocks([(1, 2), (3, 2)])
    with pytest.raises(InvalidArgumentError, match=r"expected ids in \[0, 8\)"):
        s.copy_blocks([(1, 8)])
    with pytest.raises(ShapeError, match=r"\[n, 2\]"):
        s.copy_blocks([(1, 2, 3)])  # type: ignore[list-item]


def test_swap_out_and_in_roundtrip():
    s = _store()
    s.kv_cache.copy_(torch.randn_like(s.kv_cache))
    before = s.kv_cache.clone()
    s.swap_out([(3, 0), (5, 2)])
    assert torch.equal(s.host_cache[:, 0], before[:, 3])
    assert torch.equal(s.host_cache[:, 2], before[:, 5])
    s.kv_cache[:, 3].zero_()
    s.kv_cache[:, 5].zero_()
    s.swap_in([(0, 6), (2, 7)])
    assert torch.equal(s.kv_cache[:, 6], before[:, 3])
    assert torch.equal(s.kv_cache[:, 7], before[:, 5])
    with pytest.raises(InvalidArgumentError, match=r"swap_out destination blocks: expected ids"):
        s.swap_out([(1, 4)])


def test_from_config_and_sizes():
    class Cfg:
        num_blocks = 6
        block_size = 2
        num_host_blocks = 3

    s = KVStorage.from_config(Cfg(), num_layers=3, num_kv_heads=1, head_dim=4, dtype=torch.float16)
    assert tuple(s.kv_cache.shape) == (3, 6, 2, 2, 1, 4)
    assert s.host_cache.shape[1] == 3
    assert s.bytes_per_block == 3 * 2 * 2 * 1 * 4 * 2
    assert s.num_slots == 12


def test_check_integrity_detects_reallocation():
    s = _store()
    s.kv_cache = torch.zeros_like(s.kv_cache)
    with pytest.raises(AssertionError, match="reallocated"):
        s.check_integrity()


@pytest.mark.parametrize("layer", [True, False, 1.0, "0", None, np.float64(0.0)])
def test_layer_must_be_an_int(layer):
    s = _store()
    before = s.kv_cache.clone()
    good = torch.ones(1, 2, 3)
    with pytest.raises(InvalidArgumentError, match="layer_idx: expected an int"):
        s.write(layer, good, good, [5])
    with pytest.raises(InvalidArgumentError, match="layer_idx"):
        s.gather_slots(layer, [5])
    assert torch.equal(s.kv_cache, before)
    s.write(np.int64(1), good, good, [5])  # numpy integers are integers
    assert torch.equal(s.gather_slots(1, [5])[0], good)


@pytest.mark.parametrize(
    "slots",
    [
        ["5"],
        None,
        [None],
        "5",
        [5.0],
        [5.7],
        np.array([5.9]),
        torch.tensor([5.5]),
        5,
        [[5]],
        [True],
        np.array([2**64 - 1], dtype=np.uint64),
        [5, [6]],
    ],
)
def test_malformed_slot_mappings_rejected_not_coerced(slots):
    s = _store()
    before = s.kv_cache.clone()
    good = torch.ones(1, 2, 3)
    with pytest.raises(InvalidArgumentError, match="slot_mapping"):
        s.write(0, good, good, slots)
    assert torch.equal(s.kv_cache, before)
    with pytest.raises(InvalidArgumentError):
        s.gather_slots(0, slots)


@pytest.mark.parametrize(
    "pairs",
    [
        (1.5, 2),
        [(1.5, 2)],
        [(float("nan"), 2)],
        [(1, 2.0)],
        [("1", 2)],
        [(None, 2)],
        [(1, 8)],
        [(-1, 2)],
        [(1, -1)],
        [(2**63, 2)],
        np.array([[1, 2**64 - 1]], dtype=np.uint64),
        [(1, 2), (3,)],
        "12",
        [(1, 2, 3)],
    ],
)
def test_malformed_block_pairs_rejected(pairs):
    s = _store()
    s.kv_cache.copy_(torch.randn_like(s.kv_cache))
    before, host = s.kv_cache.clone(), s.host_cache.clone()
    for op in (s.copy_blocks, s.swap_out, s.swap_in):
        with pytest.raises(InvalidArgumentError):
            op(pairs)
    assert torch.equal(s.kv_cache, before)
    assert torch.equal(s.host_cache, host)


def test_block_pairs_accept_int_arrays_and_empty():
    s = _store()
    s.kv_cache.copy_(torch.randn_like(s.kv_cache))
    before = s.kv_cache.clone()
    for empty in ([], (), np.zeros((0, 2), dtype=np.int64)):
        s.copy_blocks(empty)
    s.copy_blocks(np.array([[1, 2]], dtype=np.uint8))
    s.copy_blocks(np.array([[3, 4]], dtype=np.int32))
    assert torch.equal(s.kv_cache[:, 2], before[:, 1])
    assert torch.equal(s.kv_cache[:, 4], before[:, 3])


@pytest.mark.parametrize(("start", "end"), [(0.5, 2), (0, 2.0), (True, 2), (0, None), ("0", 2)])
def test_gather_range_must_be_ints(start, end):
    s = _store()
    with pytest.raises(InvalidArgumentError, match="expected an int"):
        s.gather(0, [1, 2], start, end)


@pytest.mark.parametrize(
    "bad",
    [
        {"num_blocks": True},
        {"num_blocks": 8.0},
        {"block_size": 4.5},
        {"num_layers": "2"},
        {"num_kv_heads": None},
        {"head_dim": False},
        {"num_host_blocks": True},
        {"num_host_blocks": 1.0},
        {"num_host_blocks": -1},
        {"dtype": "float32"},
    ],
)
def test_constructor_sizes_must_be_ints(bad):
    with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
        _store(**bad)
    assert _store(num_blocks=np.int64(8)).num_blocks == 8


def test_index_tensors_on_another_device_are_refused():
    """Issue 16: slots on the meta device raised NotImplementedError from inside ``.to()``; an
    index tensor must be on the CPU or the storage's device, refused by name otherwise."""
    s = _store()
    before = s.kv_cache.clone()
    good = torch.ones(1, 2, 3)
    device = "meta"
    slots = torch.tensor([5], device=device)  # no values: the CPU twin is written below
    with pytest.raises(ShapeError, match=rf"slot_mapping: expected a tensor on cpu, got {device}"):
        s.write(0, good, good, slots)
    with pytest.raises(ShapeError, match=rf"slots: expected a tensor on cpu, got {device}"):
        s.gather_slots(0, slots)
    with pytest.raises(ShapeError, match=rf"block_table: expected a tensor on cpu, got {device}"):
        s.gather(0, torch.tensor([1], device=device), 0, 1)
    assert torch.equal(s.kv_cache, before)
    s.write(0, good, good, torch.tensor([5]))
    assert torch.equal(s.gather_slots(0, [5])[0], good)


def _budget(dtype: str) -> CacheConfig:
    # 2 layers x 2 KV heads x head_dim 3: 24 elements of K and V per token
    return CacheConfig.from_memory_budget(
        10 * 4 * 24 * 2, block_size=4, num_layers=2, num_kv_heads=2, head_dim=3, dtype=dtype
    )


def test_from_config_refuses_a_dtype_the_budget_did_not_pay_for():
    """Issue 16: an fp16 budget built fp32 storage (the default), twice the budget."""
    cfg = _budget("float16")
    assert cfg.bytes_per_token == 48
    dims = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 3}
    with pytest.raises(ConfigError, match=r"sized for 48 KV bytes per token.*takes 96"):
        KVStorage.from_config(cfg, **dims)  # dtype defaults to float32
    with pytest.raises(ConfigError, match=r"sized for 48 KV bytes.*head_dim 6 takes 96"):
        KVStorage.from_config(cfg, **{**dims, "head_dim": 6}, dtype=torch.float16)
    for dtype in (torch.float16, torch.bfloat16):
        s = KVStorage.from_config(cfg, **dims, dtype=dtype)
        assert s.bytes_per_block * cfg.num_usable_blocks == 10 * 4 * 24 * 2  # the budget
        assert s.bytes_per_block == cfg.bytes_per_block
    s = KVStorage.from_config(_budget("float32"), **dims)
    assert s.bytes_per_block == _budget("float32").bytes_per_block
    plain = CacheConfig(block_size=4, num_blocks=6)  # no budget: any dtype
    assert KVStorage.from_config(plain, **dims, dtype=torch.float16).dtype == torch.float16
