"""Engine-test fixtures. Helpers live in ``engine_helpers`` (importable by name from the tests,
which a ``conftest`` module is not reliably)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import tiny_model

from pagedkv.core import BlockManager
from pagedkv.models import LoadedModel

# remove when core lands commit
if not hasattr(BlockManager, "commit"):
    BlockManager.commit = lambda self, ids: [self.register_prefix(s) for s in ids]

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lm() -> LoadedModel:
    return tiny_model()
