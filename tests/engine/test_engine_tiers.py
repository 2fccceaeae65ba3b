"""The engine with KV tiers: blocks computed by one engine (or process) are loaded by another
instead of recomputed, the tokens never change, and a store that fails costs only recompute."""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import greedy, greedy_ref, make_engine, random_prompts

from pagedkv.engine import LLMEngine
from pagedkv.engine.tiering import weights_revision
from pagedkv.models import tiny_random_llama
from pagedkv.tiers import TierConfigError, embedded_valkey
from pagedkv.tiers.embedded import _free_port

valkey = pytest.importorskip("valkey")

LONG = random_prompts([61], seed=41)[0]  # 15 full blocks of 4 + 1 token


@pytest.fixture(scope="module")
def server():
    srv = embedded_valkey(maxmemory="64mb")
    yield srv
    srv.stop()


@pytest.fixture
def url(server):
    yield server.url
    client = valkey.Valkey.from_url(server.url)
    client.flushall()
    client.close()


def _run(eng: LLMEngine, prompt: list[int], max_tokens: int = 6):
    eng.add_request("r", prompt, greedy(max_tokens))
    final = None
    while eng.has_unfinished_requests():
        for out in eng.step():
            final = out
        eng.check_integrity()
    assert final is not None
    assert final.finished
    return final


def _engine(**kw) -> LLMEngine:
    return make_engine(block_size=4, num_blocks=64, **kw)


def _child(url: str, prompt: list[int], conn) -> None:  # runs in a spawned process
    eng = LLMEngine(tiny_random_llama(0), block_size=4, num_blocks=64, kv_remote=url)
    out = _run(eng, prompt)
    eng.close()  # flushes the background writes
    conn.send(out.outputs[0].token_ids)


def test_second_process_loads_what_the_first_stored(url):
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(url, LONG, child))
    proc.start()
    first = parent.recv()
    proc.join(60)
    assert proc.exitcode == 0
    eng = _engine(kv_remote=url)
    out = _run(eng, LONG)
    ref = greedy_ref(LONG, 6)
    assert first == ref
    assert out.outputs[0].token_ids == ref
    # every full block but the one holding the last prompt token came from Valkey
    assert eng.scheduler.tier_hit_tokens == 60
    assert out.num_cached_tokens == 60
    eng.close()


def test_other_model_never_reads_these_blocks(url):
    eng = _engine(kv_remote=url)
    _run(eng, LONG)
    eng.close()
    other = LLMEngine(tiny_random_llama(1), block_size=4, num_blocks=64, kv_remote=url)
    out = _run(other, LONG)
    assert other.scheduler.tier_hit_tokens == 0
    assert out.num_cached_tokens == 0
    other.close()


def test_other_tenant_never_reads_these_blocks(url):
    eng = _engine(kv_remote=url)
    eng.add_request("a", LONG, greedy(4), cache_salt="tenant-a")
    while eng.has_unfinished_requests():
        eng.step()
    eng.tiers.cache.flush()
    fresh = _engine(kv_remote=url)
    fresh.add_request("b", LONG, greedy(4), cache_salt="tenant-b")
    while fresh.has_unfinished_requests():
        fresh.step()
    assert fresh.scheduler.tier_hit_tokens == 0
    eng.close()
    fresh.close()


def test_corrupted_values_are_recomputed_not_read(url):
    eng = _engine(kv_remote=url)
    _run(eng, LONG)
    eng.close()
    client = valkey.Valkey.from_url(url)
    keys = sorted(client.keys("pagedkv:kv:*"))
    assert len(keys) == 16  # 15 prompt blocks + 1 filled while decoding
    for k in keys:  # flip one payload byte in every value
        v = bytearray(client.get(k))
        v[len(v) // 2] ^= 0xFF
        client.set(k, bytes(v))
    client.close()
    again = _engine(kv_remote=url)
    out = _run(again, LONG)
    assert out.outputs[0].token_ids == greedy_ref(LONG, 6)
    assert again.scheduler.tier_hit_tokens == 0
    assert again.tiers.stats()["remote"]["rejected"] >= 1
    again.close()


def test_store_down_costs_only_recompute():
    srv = embedded_valkey(maxmemory="64mb")
    eng = _engine(kv_remote=srv.url)
    srv.stop()  # the store goes away mid-run
    prompts = random_prompts([9, 30, 17], seed=43)
    for p in prompts:
        out = _run(eng, p, 5)
        assert out.outputs[0].token_ids == greedy_ref(p, 5)
    assert eng.tiers.stats()["remote"]["errors"] >= 1
    eng.close()


def test_host_tier_brings_back_blocks_evicted_from_the_device():
    eng = make_engine(block_size=4, num_blocks=20, kv_host_bytes=64 << 20)
    first = _run(eng, LONG)
    for p in random_prompts([40, 40, 40], seed=44):  # evict LONG's cached blocks
        _run(eng, p, 3)
    assert eng.manager.lookup_prefix(LONG) < 60
    before = eng.scheduler.tier_hit_tokens
    again = _run(eng, LONG)
    assert again.outputs[0].token_ids == first.outputs[0].token_ids == greedy_ref(LONG, 6)
    assert eng.scheduler.tier_hit_tokens > before
    eng.close()


def test_serve_cli_accepts_tier_options(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pagedkv.cli",
        "serve",
        "--model",
        "tiny-random",
        "--kv-host-bytes",
        "-5",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert re.search(r"kv[-_]host[-_]bytes", res.stderr)  # the option is named
    assert "Traceback" not in res.stderr


def test_write_on_evict_stores_only_what_the_device_lets_go():
    eng = make_engine(block_size=4, num_blocks=20, kv_host_bytes=64 << 20, kv_tier_write="evict")
    first = _run(eng, LONG)
    eng.tiers.cache.flush()
    assert eng.tiers.stats()["connector"]["stored_blocks"] == 0  # nothing evicted yet
    for p in random_prompts([40, 40, 40], seed=44):  # evict LONG's cached blocks
        _run(eng, p, 3)
    eng.tiers.cache.flush()
    assert eng.tiers.stats()["connector"]["stored_blocks"] > 0
    before = eng.scheduler.tier_hit_tokens
    again = _run(eng, LONG)
    assert again.outputs[0].token_ids == first.outputs[0].token_ids == greedy_ref(LONG, 6)
    assert eng.scheduler.tier_hit_tokens > before
    eng.close()


def _bump(model, name: str) -> None:
    """Change one value in the middle of the tensor ``name`` (in place)."""
    with torch.no_grad():
        flat = model.state_dict()[name].view(-1)
        flat[flat.numel() // 2] += 0.25


def test_weights_revision_covers_every_weight():
    base = tiny_random_llama(0)
    ref = weights_revision(base.model)
    assert weights_revision(tiny_random_llama(0).model) == ref  # same weights, same digest
    names = list(base.model.state_dict())
    assert len(names) > 8  # more than the old sample of 8 tensors
    for name in names:
        model = tiny_random_llama(0).model
        _bump(model, name)
        assert weights_revision(model) != ref, name


def test_models_differing_in_one_attention_weight_share_no_tier_entries(tmp_path: Path):
    """A merged LoRA under the same model name: q_proj of layer 0 differs, nothing else."""
    base, lora = tiny_random_llama(0), tiny_random_llama(0)
    _bump(lora.model, "model.layers.0.self_attn.q_proj.weight")
    assert base.name == lora.name
    disk = str(tmp_path / "kv")
    first = LLMEngine(base, block_size=4, num_blocks=64, kv_disk_path=disk)
    _run(first, LONG)
    first.close()
    own = LLMEngine(lora, block_size=4, num_blocks=64)  # the tuned model alone, no tiers
    expected = _run(own, LONG).outputs[0].token_ids
    own.close()
    shared = LLMEngine(lora, block_size=4, num_blocks=64, kv_disk_path=disk)
    out = _run(shared, LONG)
    assert shared.scheduler.tier_hit_tokens == 0
    assert out.num_cached_tokens == 0
    assert out.outputs[0].token_ids == expected
    shared.close()
    again = LLMEngine(base, block_size=4, num_blocks=64, kv_disk_path=disk)
    _run(again, LONG)  # the base model still finds its own entries
    assert again.scheduler.tier_hit_tokens == 60
    again.close()


def test_embedded_valkey_on_a_fixed_port(caplog):
    port = _free_port()
    with caplog.at_level(logging.INFO, logger="pagedkv.tiers"):
        eng = _engine(kv_remote=f"embedded:{port}")
    try:
        assert eng.tiers.embedded.port == port
        assert f"redis://127.0.0.1:{port}" in caplog.text  # others can join it
        other = _engine(kv_remote=f"redis://127.0.0.1:{port}")
        _run(eng, LONG)
        eng.tiers.cache.flush()
        _run(other, LONG)
        assert other.scheduler.tier_hit_tokens == 60
        other.close()
        with pytest.raises(TierConfigError, match=f"port {port} is in use"):
            _engine(kv_remote=f"embedded:{port}")
    finally:
        eng.close()
    with pytest.raises(valkey.ConnectionError):
        valkey.Valkey(port=port, socket_connect_timeout=1).ping()
