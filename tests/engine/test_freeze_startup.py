"""``freeze_startup_objects``: what a one-engine process calls after start-up (the server does)."""

from __future__ import annotations

import subprocess
import sys


def test_freeze_moves_live_objects_out_of_collection():
    """In a fresh interpreter (freezing here would pin the test process's objects): nothing is
    frozen before, the live objects are after, and new garbage is still collected."""
    code = (
        "import gc\n"
        "from pagedkv.engine.llm_engine import freeze_startup_objects\n"
        "assert gc.get_freeze_count() == 0\n"
        "freeze_startup_objects()\n"
        "frozen = gc.get_freeze_count()\n"
        "assert frozen > 1000, frozen\n"
        "class C: pass\n"
        "a = C(); a.me = a; del a\n"
        "assert gc.collect() >= 1\n"
        "print(frozen)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 1000
