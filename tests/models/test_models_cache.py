"""The model cache: location, fingerprints, and atomic publication under failures and races.

Exercised with a cheap writer instead of a real 25 s conversion: atomicity lives entirely in
``atomic_write_folder``, which ``cached_gguf_folder`` calls with the real converter.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pagedkv.models import cache
from pagedkv.models.cache import (
    MARKER,
    atomic_write_folder,
    file_fingerprint,
    is_valid_cache,
    model_cache_dir,
    read_marker,
)


def _writer(payload: str, delay: float = 0.0):
    def write(tmp: Path) -> dict[str, str]:
        (tmp / "model.safetensors").write_text(payload)
        time.sleep(delay)
        (tmp / "config.json").write_text("{}")
        return {"name": payload}

    return write


def _run_threads(run: Callable[[int], None], n: int) -> None:
    """``run(0)`` .. ``run(n - 1)`` on their own threads; returns once all have ended."""
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_cache_dir_location(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("PAGEDKV_MODEL_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert model_cache_dir() == Path.home() / ".cache" / "pagedkv" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "pagedkv" / "models"
    monkeypatch.setenv("PAGEDKV_MODEL_CACHE", str(tmp_path / "mine"))
    assert model_cache_dir() == tmp_path / "mine"


def test_fingerprint_tracks_content(tmp_path) -> None:
    f = tmp_path / "a.gguf"
    f.write_bytes(b"x" * (3 << 20))
    fp = file_fingerprint(f)
    assert fp == file_fingerprint(f)
    f.write_bytes(b"x" * (3 << 20) + b"y")  # size changes
    assert file_fingerprint(f) != fp
    f.write_bytes(b"x" * (3 << 20 - 1) + b"z")  # same size, different tail
    assert file_fingerprint(f) != fp


def test_publish_and_marker(tmp_path) -> None:
    final = tmp_path / "root" / "m"
    assert atomic_write_folder(final, "fp1", _writer("one")) == final
    assert is_valid_cache(final, "fp1")
    assert not is_valid_cache(final, "fp2")
    assert read_marker(final) == {"name": "one", "format": cache.CACHE_FORMAT, "fingerprint": "fp1"}
    expected = sorted(["config.json", MARKER, "model.safetensors"])
    assert sorted(p.name for p in final.iterdir()) == expected
    assert [p.name for p in final.parent.iterdir()] == ["m"]


def test_interrupted_write_publishes_nothing(tmp_path) -> None:
    final = tmp_path / "m"

    def crash(tmp: Path) -> dict[str, str]:
        (tmp / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_folder(final, "fp", crash)
    assert list(tmp_path.iterdir()) == []


def test_existing_valid_copy_wins_and_stale_copy_is_replaced(tmp_path) -> None:
    final = tmp_path / "m"
    atomic_write_folder(final, "fp", _writer("first"))
    # Same fingerprint published meanwhile (lost race): the existing copy is kept.
    atomic_write_folder(final, "fp", _writer("second"))
    assert read_marker(final)["name"] == "first"
    # Source changed: the stale copy is replaced.
    atomic_write_folder(final, "fp-new", _writer("third"))
    assert read_marker(final)["name"] == "third"
    assert is_valid_cache(final, "fp-new")
    # A folder without a marker (never published by us) is not trusted and gets replaced.
    os.remove(final / MARKER)
    atomic_write_folder(final, "fp-new", _writer("fourth"))
    assert read_marker(final)["name"] == "fourth"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_concurrent_writers_leave_one_complete_copy(tmp_path) -> None:
    final = tmp_path / "m"
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run(i: int) -> None:
        try:
            start.wait()
            atomic_write_folder(final, "fp", _writer(f"w{i}", delay=0.05))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    _run_threads(run, 4)
    assert errors == []
    assert is_valid_cache(final, "fp")
    name = read_marker(final)["name"]
    assert (final / "model.safetensors").read_text() == name  # files and marker from one writer
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_stale_temporaries_are_cleaned(tmp_path) -> None:
    old, fresh = tmp_path / ".tmp-m-old1", tmp_path / ".tmp-m-fresh"
    old.mkdir()
    fresh.mkdir()
    os.utime(old, (time.time() - 2 * cache._STALE_TEMP_S,) * 2)
    atomic_write_folder(tmp_path / "m", "fp", _writer("x"))
    assert not old.exists()
    assert fresh.exists()


def test_conversion_lock_serializes_and_leaves_no_file(tmp_path) -> None:
    """Holders never overlap, a waiter whose locked file was deleted takes a fresh one, and the
    last holder leaves the cache root as it found it."""
    inside: list[int] = []
    overlaps: list[int] = []
    start = threading.Barrier(3)

    def run(i: int) -> None:
        start.wait()
        with cache._conversion_lock(tmp_path, "m"):
            inside.append(i)
            if len(inside) > 1:
                overlaps.append(i)
            time.sleep(0.05)
            inside.remove(i)

    _run_threads(run, 3)
    assert overlaps == []
    assert list(tmp_path.iterdir()) == []


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAGEDKV_MODEL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + bytes(64))

    def convert(gguf: Path, dest: Path, name: str) -> dict[str, str]:
        (dest / "half-written").write_text("x")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(cache, "convert_gguf", convert)
    with pytest.raises(RuntimeError, match="conversion failed"):
        cache.cached_gguf_folder(src, "m")
    assert list((tmp_path / "cache").iterdir()) == []  # no folder, no temporary, no lock file
