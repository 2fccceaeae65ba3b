"""Disk tier: one file per block in a local folder, LRU by file time, with a byte budget.

Why plain files rather than an embedded database: no extra dependency, any number of processes
can share the folder without a lock manager, and a crash can only leave whole files (each write
goes to a temporary file that is renamed into place, an atomic step on POSIX), so a reader never
sees a half-written value under a key. A write that comes back short (a nearly full disk, a
file-size limit) is retried until every byte is written or the system call fails; a short file
is never renamed into place, and the value counts as a dropped write (``errors`` and
``dropped_writes``). Content addressing makes rewrites of the same key harmless. Durability
against power loss is not promised (``fsync=True`` buys it at a cost); a torn file would fail
the checksum and be a miss anyway.

The LRU index lives in this process, seeded at start-up from the folder (oldest modification
time first; reads refresh the time, so recency survives restarts). With several processes
sharing a folder each one enforces the budget on what it knows of, so it is approximate. If the
folder tree is deleted while the process runs, the next write re-creates all of it (and forgets
the values that went with it) instead of failing until a restart.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import xxhash

from pagedkv.tiers.base import TIERS, LocalTier, TierConfigError, Value

_SAFE_KEY = re.compile(rb"[A-Za-z0-9_.:-]{1,200}")
_STALE_TMP_S = 3600.0


def file_name(key: bytes) -> str:
    """Injective key -> file name: readable for our ASCII keys (':' -> '+'), else '#' + sha256."""
    if _SAFE_KEY.fullmatch(key):
        return key.decode("ascii").replace(":", "+") + ".pkv"
    return "#" + hashlib.sha256(key).hexdigest() + ".pkv"


def write_all(fd: int, value: Value) -> None:
    """Write every byte of ``value`` to ``fd``, or raise ``OSError``.

    Why: ``write`` may write fewer bytes than asked (a nearly full disk, a file-size limit,
    a signal); the rest must be retried, and a call that writes nothing is a failure, never a
    shorter file."""
    with memoryview(value) as whole, whole.cast("B") as view:
        done = 0
        while done < len(view):
            n = os.write(fd, view[done:])
            if n <= 0:
                raise OSError(errno.ENOSPC, f"short write: {done} of {len(view)} bytes written")
            done += n


@TIERS.register("disk")
class DiskTier(LocalTier):
    """Blocks as files under ``path`` (created if missing), at most ``capacity_bytes``.

    Args:
        path: folder; ``<path>/v1/<2 hex>/<key>.pkv`` holds values, ``<path>/tmp`` partial writes.
        capacity_bytes: budget; least recently used files are deleted beyond it.
        fsync: flush each file to stable storage before renaming it into place.
    """

    name = "disk"

    def __init__(
        self, path: str | os.PathLike[str], capacity_bytes: int = 64 << 30, *, fsync: bool = False
    ) -> None:
        super().__init__(capacity_bytes)
        self.root = Path(path)
        self._data = self.root / "v1"
        self._tmp = self.root / "tmp"
        self._lock = threading.Lock()
        self._index: OrderedDict[Path, int] = OrderedDict()  # path -> size, oldest first
        try:
            self._make_folders()
        except OSError as exc:
            raise TierConfigError(f"disk tier: cannot use folder {self.root}: {exc}") from exc
        self.fsync = fsync
        self._scan()

    def path_of(self, key: bytes) -> Path:
        """Where ``key``'s value lives (256 shard folders keep directories small)."""
        shard = f"{xxhash.xxh3_64_intdigest(key) & 0xFF:02x}"
        return self._data / shard / file_name(key)

    # ------------------------------------------------------------------ hooks
    def _contains_prefix(self, keys: Sequence[bytes]) -> int:
        for i, key in enumerate(keys):
            if not self.path_of(key).is_file():
                return i
        return len(keys)

    def _get_many(self, keys: Sequence[bytes], max_bytes: int | None) -> list[Value | None]:
        return [self._read(self.path_of(key), max_bytes) for key in keys]

    def _put_many(self, items: Sequence[tuple[bytes, Value]]) -> list[int]:
        written: list[int] = []
        for i, (key, value) in enumerate(items):
            if len(value) > self._capacity:
                continue
            try:
                path = self._write(key, value)
            except OSError as exc:  # disk full, permissions: drop this write, keep serving
                self.record_error("put_many", exc)
                continue
            with self._lock:
                self._note(path, len(value))
            written.append(i)
        with self._lock:
            freed = self._evict_locked(self._used - self._capacity)
        self._count(evicted_bytes=freed)
        return written

    def _evict(self, nbytes: int) -> int:
        with self._lock:
            return self._evict_locked(nbytes)

    def _clear(self) -> None:
        with self._lock:
            for shard in self._data.iterdir() if self._data.is_dir() else ():
                for f in shard.iterdir():
                    f.unlink(missing_ok=True)
            self._index.clear()
            self._used = 0

    # ---------------------------------------------------------------- helpers
    def _read(self, path: Path, max_bytes: int | None) -> bytearray | None:
        """The file's bytes; ``None`` for a missing file, and (rejected unread) for one longer
        than ``max_bytes``."""
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    self.reject_oversized(size, max_bytes)
                    return None
                buf = bytearray(size)
                view, got = memoryview(buf), 0
                while got < size:
                    n = f.readinto(view[got:])
                    if not n:
                        return None  # shrank under us (never with atomic writes)
                    got += n
        except FileNotFoundError:
            with self._lock:  # deleted behind our back: forget it
                self._used -= self._index.pop(path, 0)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recency survives restarts
        with self._lock:
            self._note(path, size)
        return buf

    def _write(self, key: bytes, value: Value) -> Path:
        """Write ``value`` under ``key``; re-create the folder tree once if it was deleted."""
        try:
            return self._write_once(key, value)
        except FileNotFoundError:
            self._make_folders()
            return self._write_once(key, value)

    def _write_once(self, key: bytes, value: Value) -> Path:
        """Write every byte to a unique temporary file, then rename it into place (atomic).
        Raises ``OSError`` (the temporary file removed) when not every byte was written."""
        path = self.path_of(key)
        tmp = self._tmp / f"{uuid.uuid4().hex}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o644)
        try:
            try:
                write_all(fd, value)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def _make_folders(self) -> None:
        """Create the whole folder tree (every missing level). When the value folder is
        missing, values indexed before are gone: the index forgets them."""
        if not self._data.is_dir():
            with self._lock:
                self._index.clear()
                self._used = 0
        self._data.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _note(self, path: Path, size: int) -> None:
        """Record ``path`` as most recently used (caller holds the lock)."""
        old = self._index.pop(path, None)
        self._used += size - (old or 0)
        self._index[path] = size

    def _evict_locked(self, nbytes: int) -> int:
        freed = 0
        while freed < nbytes and self._index:
            path, size = self._index.popitem(last=False)
            path.unlink(missing_ok=True)
            freed += size
        self._used -= freed
        return freed

    def _scan(self) -> None:
        """Seed the LRU index from the folder; delete temporaries abandoned by crashes."""
        found: list[tuple[float, Path, int]] = []
        for shard in self._data.iterdir():
            if shard.is_dir():
                for f in os.scandir(shard):
                    st = f.stat()
                    found.append((st.st_mtime, Path(f.path), st.st_size))
        for _, path, size in sorted(found):
            self._note(path, size)
        now = time.time()
        for f in os.scandir(self._tmp):
            try:
                if now - f.stat().st_mtime > _STALE_TMP_S:
                    os.unlink(f.path)
            except OSError:
                pass
        with self._lock:
            freed = self._evict_locked(self._used - self._capacity)
        self._count(evicted_bytes=freed)
