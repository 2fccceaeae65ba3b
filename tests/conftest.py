"""Suite-wide settings. torch runs with one thread: the suite runs as ``pytest -n 2`` on a
2-core machine, and workers that each spin one thread per core fight over the cores (a tiny
model ran ~15x slower that way). One thread also keeps a serial run deterministic in speed."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
