"""Disk-tier faults: a short write (a nearly full disk) is never renamed into place, a folder
tree deleted under a running tier is re-created, an oversized file is not read whole."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tiers_helpers import blocks_equal, cache_for, chain, make_storage

from pagedkv.tiers import DiskTier

# Runs in a child: a soft file-size limit makes write(2) return short (4096 of 10000 bytes),
# then fail (EFBIG), as a nearly full disk does; Python ignores the SIGXFSZ it raises.
_SHORT_WRITE = r"""
import resource, sys
from pagedkv.tiers import DiskTier
tier = DiskTier(sys.argv[1], 1 << 20)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
tier.put_many([(b"big", b"x" * 10000), (b"small", b"y" * 100)])
s = tier.stats
print(s.blocks_stored, s.dropped_writes, s.errors, tier.used_bytes)
"""


def test_short_write_is_a_dropped_write_never_a_short_file(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    stored, dropped, errors, used = map(int, res.stdout.split())
    assert (stored, dropped, errors, used) == (1, 1, 1, 100)
    tier = DiskTier(tmp_path, 1 << 20)  # what another process (or a restart) finds
    assert not tier.path_of(b"big").exists()
    assert tier.contains_prefix([b"big"]) == 0
    assert tier.get_many([b"small"]) == [b"y" * 100]
    assert list((tmp_path / "tmp").iterdir()) == []  # the partial temporary file is gone


def test_deleted_folder_tree_is_recreated_and_writes_go_on(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "kv"
    tier = DiskTier(root, 1 << 20)
    tier.put_many([(b"k1", b"1" * 50)])
    shutil.rmtree(tmp_path / "a")  # more than the last level: a cleaner wiped the cache
    for i in range(3):
        tier.put_many([(f"n{i}".encode(), b"2" * 60)])
    assert tier.stats.errors == 0
    assert tier.stats.blocks_stored == 4
    assert tier.contains_prefix([b"n0", b"n1", b"n2"]) == 3
    assert tier.get_many([b"n2"]) == [b"2" * 60]
    assert tier.get_many([b"k1"]) == [None]  # went with the folder
    assert tier.used_bytes == 3 * 60  # the index forgot what was deleted


def test_deleted_folder_tree_mid_run_through_the_cache(tmp_path: Path) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    cache = cache_for(st, [DiskTier(tmp_path / "x" / "kv", 1 << 22)])
    cache.store(chain(2, "before"), [1, 2])
    shutil.rmtree(tmp_path / "x")
    cache.store(chain(3, "after"), [3, 4, 5])
    st.zero_()
    assert cache.lookup(chain(2, "before")) == 0
    assert cache.load(chain(3, "after"), [6, 7, 8]) == 3
    assert blocks_equal(st, [6, 7, 8], ref, [3, 4, 5])


def test_oversized_file_is_rejected_without_reading_it_whole(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 30)
    tier.put_many([(b"ok", b"a" * 100)])
    path = tier.path_of(b"huge")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"b" * (8 << 20))  # planted behind the tier's back
    assert tier.get_many([b"ok", b"huge"], max_bytes=100) == [b"a" * 100, None]
    assert tier.stats.rejected == 1
    assert tier.stats.bytes_loaded == 100  # the big file was not read
