"""Remote tier against a real Valkey: holes, outages, slow and full stores, eviction under load,
two processes sharing one cache, and the zero-copy reply parser."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import valkey
from tiers_helpers import blocks_equal, cache_for, chain, child_share, make_storage

from pagedkv.tiers import EmbeddedValkey, RemoteTier, embedded_valkey
from pagedkv.tiers._resp import FastRespParser


@pytest.fixture
def own_server() -> Iterator[EmbeddedValkey]:
    """A server this test may stop, restart or reconfigure."""
    server = embedded_valkey(maxmemory="64mb")
    yield server
    server.stop()


def test_chain_stops_at_a_deleted_middle_block(valkey_url: str) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    cache = cache_for(st, [RemoteTier(valkey_url)])
    hashes = chain(6)
    cache.store(hashes, [1, 2, 3, 4, 5, 6])
    valkey.Valkey.from_url(valkey_url).delete(cache.keys(hashes)[3])
    assert cache.lookup(hashes) == 3
    st.kv_cache[:, 7:] = 5.0
    assert cache.load(hashes, [7, 8, 9, 10, 11, 12]) == 3
    assert blocks_equal(st, [7, 8, 9], ref, [1, 2, 3])
    assert bool((st.kv_cache[:, 10:13] == 5.0).all())


def test_outage_costs_misses_then_reconnects(own_server: EmbeddedValkey) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    tier = RemoteTier(own_server.url, timeout_s=1.0, backoff_s=1.0, max_backoff_s=1.0)
    cache = cache_for(st, [tier])
    hashes = chain(3)
    cache.store(hashes, [1, 2, 3])
    port = own_server.port
    own_server.stop()
    t0 = time.monotonic()
    assert cache.lookup(hashes) == 0  # no exception
    assert cache.load(hashes, [4, 5, 6]) == 0
    cache.store(chain(2, "down"), [1, 2])
    assert time.monotonic() - t0 < 3.0
    assert tier.stats.errors >= 1
    assert tier.stats.dropped_writes >= 2
    assert not tier.available  # backing off: no connection attempts for a while
    restarted = embedded_valkey(port=port, maxmemory="64mb")  # data is gone (no persistence)
    try:
        time.sleep(1.1)  # > max backoff
        cache.store(hashes, [1, 2, 3])
        assert tier.available
        st.zero_()
        assert cache.load(hashes, [4, 5, 6]) == 3
        assert blocks_equal(st, [4, 5, 6], ref, [1, 2, 3])
    finally:
        restarted.stop()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a hung store."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(lsock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{lsock.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    lsock.close()


def test_slow_store_times_out_into_misses(silent_server: str) -> None:
    st = make_storage()
    tier = RemoteTier(silent_server, timeout_s=0.2, backoff_s=5.0)
    cache = cache_for(st, [tier])
    t0 = time.monotonic()
    assert cache.lookup(chain(2)) == 0
    assert time.monotonic() - t0 < 2.0
    t1 = time.monotonic()
    assert cache.load(chain(2), [1, 2]) == 0  # backing off: answered at once
    cache.store(chain(2), [1, 2])
    assert time.monotonic() - t1 < 0.5
    assert tier.stats.errors == 1
    assert tier.stats.dropped_writes == 2


def test_full_store_drops_writes_but_serves_reads(own_server: EmbeddedValkey) -> None:
    st = make_storage()
    tier = RemoteTier(own_server.url)
    cache = cache_for(st, [tier])
    cache.store(chain(2), [1, 2])
    admin = valkey.Valkey.from_url(own_server.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # below usage: every write is refused (OOM)
    cache.store(chain(2, "new"), [3, 4])
    assert tier.stats.errors >= 1
    assert tier.stats.dropped_writes == 2
    assert cache.load(chain(2), [5, 6]) == 2
    assert tier.available
    admin.close()


def test_lru_eviction_under_load_never_yields_a_hole_or_wrong_block(
    own_server: EmbeddedValkey,
) -> None:
    admin = valkey.Valkey.from_url(own_server.url)
    admin.config_set("maxmemory", 3 << 20)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    st = make_storage(num_blocks=20, head_dim=128)  # ~8 KiB per block
    ref = st.kv_cache.clone()
    cache = cache_for(st, [RemoteTier(own_server.url)])
    chains = {f"c{i}": chain(8, f"c{i}") for i in range(80)}  # ~5 MiB written in total
    for tag, hashes in chains.items():
        cache.store(hashes, list(range(1 + int(tag[1:]) % 8, 9 + int(tag[1:]) % 8)))
    holes = 0
    for tag, hashes in chains.items():
        src = list(range(1 + int(tag[1:]) % 8, 9 + int(tag[1:]) % 8))
        present = [bool(admin.exists(k)) for k in cache.keys(hashes)]
        holes += any(not a and b for a, b in itertools.pairwise(present))
        st.kv_cache[:, 11:19] = 3.0
        n = cache.load(hashes, list(range(11, 19)))
        assert n == present.index(False) if False in present else n == 8
        assert blocks_equal(st, list(range(11, 11 + n)), ref, src[:n])
        assert bool((st.kv_cache[:, 11 + n : 19] == 3.0).all())
    assert holes > 0, "the server evicted no chain's middle: the test did not bite"
    assert int(admin.info("stats")["evicted_keys"]) > 0
    admin.close()


def test_two_processes_share_blocks(valkey_url: str) -> None:
    st = make_storage(seed=0)
    ref_child = make_storage(seed=1).kv_cache.clone()
    parent = cache_for(st, [RemoteTier(valkey_url)])
    parent.store(chain(5, "parent"), [1, 2, 3, 4, 5])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        got, ok = pool.apply(child_share, (valkey_url, 0, "parent", "child", 5))
    assert (got, ok) == (5, True)
    st.zero_()
    assert parent.load(chain(5, "child"), [6, 7, 8, 9, 10]) == 5
    assert blocks_equal(st, [6, 7, 8, 9, 10], ref_child, [1, 2, 3, 4, 5])


def test_reply_parser_round_trips_all_reply_kinds(valkey_url: str) -> None:
    url = valkey_url.replace("redis://", "valkey://")
    client = valkey.Valkey.from_url(url, parser_class=FastRespParser)
    sizes = [0, 1, 65534, 65535, 65536, 65537, 1 << 20]
    values = {
        f"k{n}".encode(): bytes(range(256)) * (n // 256) + b"\r\n"[: n % 256 % 3] for n in sizes
    }
    for k, v in values.items():
        assert client.set(k, v) is True
    keys = list(values)
    assert [bytes(v) for v in client.mget(keys)] == list(values.values())
    assert client.mget([b"missing", keys[-1]])[0] is None
    assert client.incr(b"counter") == 1
    with pytest.raises(valkey.ResponseError):
        client.incr(keys[-1])
    pipe = client.pipeline(transaction=False)
    pipe.get(keys[-1]).exists(b"nope").ping()
    big, exists, pong = pipe.execute()
    assert bytes(big) == values[keys[-1]]
    assert exists == 0
    assert pong is True
    assert client.info("memory")["used_memory"] > 0
    client.close()


def test_clear_removes_only_our_keys_and_reports_memory(valkey_url: str) -> None:
    st = make_storage()
    tier = RemoteTier(valkey_url)
    cache_for(st, [tier]).store(chain(3), [1, 2, 3])
    admin = valkey.Valkey.from_url(valkey_url)
    admin.set(b"someone-else", b"1")
    assert tier.used_bytes > 0
    assert tier.capacity_bytes == 256 << 20
    tier.clear()
    assert admin.keys() == [b"someone-else"]
    admin.close()


def test_oversized_value_is_rejected_without_being_read(valkey_url: str) -> None:
    """A foreign writer plants 32 MiB under a key of the chain: the load stops there, and the
    server sends a few KiB, not the planted value (sizes first, then only right-sized values)."""
    st = make_storage()
    ref = st.kv_cache.clone()
    tier = RemoteTier(valkey_url)
    cache = cache_for(st, [tier])
    hashes = chain(4)
    cache.store(hashes, [1, 2, 3, 4])
    admin = valkey.Valkey.from_url(valkey_url)
    admin.set(cache.keys(hashes)[2], b"\0" * (32 << 20))
    admin.config_resetstat()
    sent = int(admin.info("stats")["total_net_output_bytes"])
    st.kv_cache[:, 5:9] = 7.0
    assert cache.load(hashes, [5, 6, 7, 8]) == 2
    sent = int(admin.info("stats")["total_net_output_bytes"]) - sent
    assert blocks_equal(st, [5, 6], ref, [1, 2])
    assert bool((st.kv_cache[:, 7:9] == 7.0).all())
    assert tier.stats.rejected == 1
    assert sent < 64 << 10, f"the server sent {sent} bytes"
    assert tier.stats.bytes_loaded <= 2 * (st.bytes_per_block + 256)  # the 2 good blocks
    calls = admin.info("commandstats")
    assert "cmdstat_get" not in calls
    assert calls["cmdstat_strlen"]["calls"] == 4
    assert calls["cmdstat_mget"]["calls"] == 1
    admin.close()
