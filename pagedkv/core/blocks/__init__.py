"""Where blocks live: the device block pool (reference counts, free stack), the host pool that
swapped sequences use, and the copy-on-write queue."""

from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.blocks.copy_on_write import PendingCopies
from pagedkv.core.blocks.host_pool import HostPool

__all__ = ["BlockPool", "HostPool", "PendingCopies"]
