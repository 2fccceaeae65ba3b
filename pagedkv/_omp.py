"""OpenMP wait policy for torch's threads, set before torch loads libgomp.

torch's OpenMP threads (libgomp) spin up to 300,000 times while they wait for each other. On
cores shared with other processes a spinning thread burns the time slice its partner needs,
and every parallel region waits for the descheduled thread: with 3 busy processes on this
project's 2 cores a 2-thread GEMM ran at 15 GFLOP/s by default, 43 with 20,000 spins (38 with
no spinning, 33 on 1 thread), while a quiet machine loses ~2% (docs/performance.md). libgomp
reads this when torch loads it, so it works when pagedkv is imported first (the CLI does); a
wait policy or spin count the user set wins.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")
