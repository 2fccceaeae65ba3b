"""The attention package has no import cycle: ``registry.py`` imports no backend, backends
register themselves on import, and whichever module a fresh interpreter imports first, every
built-in backend is registered."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pagedkv.attention

PACKAGE = Path(pagedkv.attention.__file__).parent
ROOT = PACKAGE.parent.parent


def test_registry_imports_no_backend() -> None:
    tree = ast.parse((PACKAGE / "registry.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    }
    assert not {m for m in imported if m and m.startswith("pagedkv.attention.")} - {
        "pagedkv.attention.metadata"
    }


@pytest.mark.parametrize(
    "first",
    [
        "pagedkv.attention.registry",
        "pagedkv.attention.reference",
        "pagedkv.attention.cpu_kernel",
        "pagedkv.attention.metadata",
    ],
)
def test_any_module_can_be_imported_first(first: str) -> None:
    code = (
        f"import {first}\n"
        "from pagedkv.attention.registry import get_attention_backend, "
        "list_attention_backends\n"
        "assert list_attention_backends() == ['cpu', 'reference', 'torch'], "
        "list_attention_backends()\n"
        "assert get_attention_backend('torch').name == 'torch'\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
