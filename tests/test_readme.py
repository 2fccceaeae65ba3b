"""The README's Python snippets run as written (with the inputs they leave to the reader)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    ns: dict[str, Any] = {"prompt_ids": list(range(40)), "next_tokens": np.array([7, 8]),
                             "n": 41}
    for block in blocks:
        exec(block, ns)
    mgr = ns["mgr"]
    mgr.check_integrity()
    assert mgr.stats().forks == 1
    out = ns["out"]
    assert [len(o) for o in out] == [8, 8]
