from __future__ import annotations

from typing import Any

import pytest

from pagedkv.core import BlockManager, CacheConfig


@pytest.fixture
def make_mgr():
    """Build a manager on a tiny pool; every test calls check_integrity after each step."""

    def make(block_size: int = 4, num_blocks: int = 10, **kw: Any) -> BlockManager:
        mgr = BlockManager(CacheConfig(block_size=block_size, num_blocks=num_blocks, **kw))
        mgr.check_integrity()
        return mgr

    return make
