"""``release_thread_pool``: a thread's OpenMP workers are freed before another thread steps.

The pool is per thread and process-wide state, so each check runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import pagedkv._omp as omp
from pagedkv.engine import AsyncLLMEngine, LLMEngine
from pagedkv.models import tiny_random_llama

TASKS = "len(os.listdir('/proc/self/task'))"


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: OpenMP starts no worker")
def test_release_frees_the_calling_threads_workers_and_a_new_region_restarts_them() -> None:
    code = (
        "import os, torch\n"
        "from pagedkv._omp import release_thread_pool\n"
        "torch.set_num_threads(2)\n"
        "a = torch.randn(1 << 20)\n"
        f"before = {TASKS}\n"
        "a.add(1.0)  # a parallel region: the pool's worker starts\n"
        f"pooled = {TASKS}\n"
        "assert release_thread_pool() is True\n"
        f"released = {TASKS}\n"
        "a.add(1.0)\n"
        f"again = {TASKS}\n"
        "print(before, pooled, released, again)\n"
    )
    before, pooled, released, again = map(int, _run(code).split())
    assert pooled > before  # the worker thread exists while pooled
    assert released == pooled - 1  # ... and is gone once released
    assert again == pooled  # the next region starts it again


def test_without_an_openmp_runtime_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omp, "_openmp_libraries", list)
    assert omp.release_thread_pool() is False


def test_the_async_engine_releases_the_constructing_threads_pool_before_its_loop_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, int]] = []

    def record() -> bool:
        calls.append((threading.current_thread().name, threading.active_count()))
        return True

    monkeypatch.setattr("pagedkv.engine.async_engine.release_thread_pool", record)
    threads = threading.active_count()
    engine = AsyncLLMEngine(LLMEngine(tiny_random_llama(0)))
    try:
        # once, from this thread, before the engine's own thread existed
        assert calls == [(threading.current_thread().name, threads)]
        assert engine.is_running
    finally:
        engine.shutdown()
