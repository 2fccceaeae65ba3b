"""``import pagedkv`` bounds libgomp's spinning (GOMP_SPINCOUNT) unless the user chose a wait
policy or a spin count: checked in fresh interpreters, since libgomp reads it at load time."""

from __future__ import annotations

import pytest
from subprocess_python import python_output

PROBE = "import os, pagedkv; print(os.environ.get('GOMP_SPINCOUNT'))"


def _spincount(**env: str) -> str:
    return python_output(PROBE, unset=("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"), **env).strip()


def test_bounded_spin_by_default():
    assert _spincount() == "2000"


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"GOMP_SPINCOUNT": "7"}, "7"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "None")],
)
def test_user_choice_wins(env, expected):
    assert _spincount(**env) == expected
