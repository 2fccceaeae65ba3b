"""pagedkv._malloc: a CPU engine's freed step buffers stay mapped for the next step (glibc)."""

from __future__ import annotations

import platform

import pytest
from subprocess_python import python_output

from pagedkv import _malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Four "steps", each writing five buffers of 6-24 MiB (78 MiB, as a prompt step's activations)
# and freeing them; prints the minor page faults of steps 2-4. With glibc's defaults the freed
# top of the heap exceeds its trim threshold (twice the largest block) and is unmapped, so later
# steps fault it in again (14,000-20,000 pages a step here); kept, it is reused.
_REUSE = """
import resource, torch
from pagedkv._malloc import keep_freed_memory
print(keep_freed_memory())
faults = 0
for step in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bufs = [torch.ones(n << 18) for n in (24, 12, 24, 6, 12)]
    faults += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) if step else 0
    del bufs
print(faults)
"""


# What keep_freed_memory() reads: unset, so the user's own settings do not change the outcome.
_SETTINGS = (
    "PAGEDKV_KEEP_FREED_MEMORY",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
)


def _reuse_faults(**env: str) -> tuple[str, int]:
    out = python_output(_REUSE, unset=_SETTINGS, **env).split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_freed_step_buffers_are_reused_without_page_faults():
    applied, faults = _reuse_faults()
    assert applied == "True"
    assert faults < 10_000
    applied, faults = _reuse_faults(PAGEDKV_KEEP_FREED_MEMORY="0")
    assert applied == "False"
    assert faults > 15_000  # glibc's defaults: the freed buffers were unmapped, faulted in again


@pytest.mark.parametrize(
    "env",
    [
        {"PAGEDKV_KEEP_FREED_MEMORY": "0"},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ],
)
def test_the_users_settings_win(monkeypatch, env):
    monkeypatch.setitem(_malloc._STATE, "applied", False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _malloc.keep_freed_memory() is False
    assert _malloc._STATE["applied"] is False


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_an_engine_on_the_cpu_applies_them():
    code = (
        "from pagedkv import _malloc\n"
        "from pagedkv.engine import LLMEngine\n"
        "from pagedkv.models import tiny_random_llama\n"
        "print(_malloc._STATE['applied'])\n"
        "LLMEngine(tiny_random_llama(0), num_blocks=8)\n"
        "print(_malloc._STATE['applied'])\n"
    )
    out = python_output(code, unset=_SETTINGS)
    assert out.split() == ["False", "True"]
