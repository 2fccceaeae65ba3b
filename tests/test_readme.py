"""Every Python snippet of the README and of ``docs/*.md`` runs as written.

A snippet is skipped only by design: one whose first line is ``# needs a running server``
(it talks to ``pagedkv serve`` over HTTP). The README's snippets run here, in one namespace,
and their results are checked; each docs page runs in a fresh interpreter (snippets register
backends, start servers, set torch threads: nothing leaks into other tests), its snippets in
one namespace, in order, like a reader pasting them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKER = "# needs a running server"
DOCS = sorted((ROOT / "docs").glob("*.md"))
# what a page's snippets print that shows they did what they say (beyond running)
EXPECTED_OUTPUT = {
    "engine.md": ["The capital of France is Paris.", "c True abort"],
    "tiers.md": ["'stored_blocks': 2"],
}
RUN_PAGE = """
import re, sys
page, marker = sys.argv[1:]
blocks = re.findall(r"```python\\n(.*?)```", open(page).read(), re.S)
ns = {}
for i, block in enumerate(blocks):
    if not block.startswith(marker):
        exec(compile(block, f"{page} snippet {i + 1}", "exec"), ns)
"""


def snippets(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_readme_snippets_run() -> None:
    runnable = [b for b in snippets(README) if not b.startswith(SKIP_MARKER)]
    assert len(runnable) >= 3
    ns: dict[str, Any] = {}
    for block in runnable:
        exec(block, ns)
    mgr = ns["mgr"]
    mgr.check_integrity()
    assert mgr.stats().forks == 1
    out = ns["out"]
    assert [len(o) for o in out] == [8, 8]
    answer = ns["outs"][0].outputs[0].text
    assert answer.startswith("The capital of France is Paris")


def test_only_server_snippets_are_skipped() -> None:
    """The skip marker stays rare: only snippets that need a server over HTTP use it."""
    for path in [README, *DOCS]:
        for block in snippets(path):
            if block.startswith(SKIP_MARKER):
                assert "base_url=" in block or "http://" in block, (path.name, block[:80])


@pytest.mark.parametrize("page", [p.name for p in DOCS if snippets(p)])
def test_docs_snippets_run(page: str) -> None:
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, "-c", RUN_PAGE, str(ROOT / "docs" / page), SKIP_MARKER],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in EXPECTED_OUTPUT.get(page, []):
        assert text in proc.stdout, proc.stdout[-2000:]
