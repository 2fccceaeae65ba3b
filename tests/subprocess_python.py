"""Run a Python snippet in a fresh interpreter (settings read once per process: libgomp's spin
count, glibc's malloc thresholds), with some variables of this environment removed."""

from __future__ import annotations

import os
import subprocess
import sys


def python_output(code: str, *, unset: tuple[str, ...] = (), **env: str) -> str:
    """stdout of ``python -c code`` run with this environment minus ``unset``, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
