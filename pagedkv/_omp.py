"""OpenMP wait policy for torch's threads, set before torch loads libgomp.

torch's OpenMP threads (libgomp) spin up to 300,000 times while they wait for each other. On
cores shared with other processes a spinning thread burns the time slice its partner needs,
and every parallel region waits for the descheduled thread: with 3 busy processes on this
project's 2 cores a 2-thread GEMM ran at 15 GFLOP/s by default, 43 with 20,000 spins (38 with
no spinning, 33 on 1 thread). An engine step has a few hundred short regions, so there the
spinning costs more: a round of the peers workload under the same load ran at 53.2 tok/s with
20,000 spins, 60.5 with 2,000 (its CPU time 29.7 -> 24.5 s) and 62.1 with none, and on a
quiet machine at 177.7, 173.7 (-2%, inside the run-to-run noise) and 159 (-11%;
docs/performance.md, ninth round). 2,000 spins (~35 us) still catch the short waits of a
quiet step. libgomp reads this when torch loads it, so it works when pagedkv is imported first
(the CLI does); a wait policy or spin count the user set wins. :func:`release_thread_pool`
frees a thread's workers before another thread takes over the stepping.
"""

import ctypes
import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "2000")


_OPENMP_NAMES = ("libgomp", "libiomp", "libomp")
_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP workers (``omp_pause_resource_all(omp_pause_soft)`` in
    every OpenMP runtime loaded in the process); the next parallel region in this thread starts
    new ones. Returns whether any runtime did it (False: none is loaded, or all refused).

    Why: libgomp keeps a pool of workers for every thread that ever started a parallel region,
    and once more threads are pooled than there are CPUs it throttles their spinning between
    regions, so every op wakes its workers with a futex. An
    :class:`~pagedkv.engine.async_engine.AsyncLLMEngine` steps in its own thread after the
    model was loaded (parallel regions) in the caller's: on this project's 2 cores its decode
    steps took 46-53 ms against 34-46 ms for the same steps in the loading thread, and 33-44 ms
    once the loading thread's pool was released (``benchmarks/engine_thread.py``; an
    element-wise add of 200k floats: 0.05-0.09 against 0.016 ms). Releasing is cheap and safe;
    a thread that runs parallel regions again later gets a pool again."""
    done = False
    for lib in _openmp_libraries():
        try:
            done |= lib.omp_pause_resource_all(_OMP_PAUSE_SOFT) == 0
        except AttributeError:  # a runtime older than OpenMP 5.0
            continue
    return done


def _openmp_libraries() -> list[ctypes.CDLL]:
    """The OpenMP runtimes already loaded into this process (torch's, and any other), found in
    ``/proc/self/maps``; none where there is no ``/proc``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if ".so" in line}
    except OSError:
        return []
    libs = []
    for path in sorted(paths):
        if os.path.basename(path).startswith(_OPENMP_NAMES):
            try:
                libs.append(ctypes.CDLL(path))
            except OSError:
                continue
    return libs
