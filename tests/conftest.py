"""Suite-wide settings. Under ``pytest -n N`` every worker runs torch with one thread: N
workers that each spin up one thread per core fight over the cores (a tiny model ran ~15x
slower that way on the 2-core CI machine)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)
