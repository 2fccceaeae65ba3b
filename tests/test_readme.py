"""The README's Python snippets run as written (except those that say they need a running
server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    runnable = [b for b in blocks if not b.startswith("# needs a running server")]
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
