"""The block manager: the public API (``BlockManager``) composing the roles in ``blocks/`` and
``prefix_cache/`` with the sequence table and admission kept here."""

from pagedkv.core.manager.block_manager import BlockManager
from pagedkv.core.manager.pins import PrefixPin

__all__ = ["BlockManager", "PrefixPin"]
