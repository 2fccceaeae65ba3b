"""``import pagedkv`` bounds libgomp's spinning (GOMP_SPINCOUNT) unless the user chose a wait
policy or a spin count: checked in fresh interpreters, since libgomp reads it at load time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import os, pagedkv; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spincount(**env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_bounded_spin_by_default():
    assert _spincount() == "20000"


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"GOMP_SPINCOUNT": "7"}, "7"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")],
)
def test_user_choice_wins(env, expected):
    assert _spincount(**env) == expected
