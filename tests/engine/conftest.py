"""Engine-test fixtures. Helpers live in ``engine_helpers`` (importable by name from the tests,
which a ``conftest`` module is not reliably)."""

from __future__ import annotations

import pytest
from engine_helpers import tiny_model

from pagedkv.models import LoadedModel


@pytest.fixture(scope="session")
def lm() -> LoadedModel:
    return tiny_model()
