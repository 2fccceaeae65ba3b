"""The block manager: ``BlockManager``, the public API over the roles that keep paged-KV
metadata.

Roles, each an object with its own state (built in ``ManagerQueries.__init__``, ``queries.py``;
the ones without a folder live here)::

    BlockManager ─┬─ Admission        prompt -> prefix lookup -> room check -> new sequence
                  ├─ PrefixPins       held prefixes (never evicted while pinned)
                  ├─ SequenceTable    block tables: growth, windows, truncate, fork, swap
                  │    ├─ PendingCopies   copy-on-write queue            (blocks/)
                  │    ├─ HostPool        host blocks of swapped sequences (blocks/)
                  │    └─ Registrar       hashes sealed blocks, registers committed ones
                  └─ BlockPool        ref counts, free stack             (blocks/)
                       └─ PrefixCache hash map, forest, eviction order, hashing (prefix_cache/)

Pure metadata. Storage executes what the manager decides: after every step, call
``take_copies()`` and run those block copies (copy-on-write) before writing the step's new KV;
``swap_out``/``swap_in`` return the block copies between device and host pools likewise.

Visibility of cached blocks: a full block is findable by other sequences' prefix lookups only
after the caller reports its KV written - ``commit(seq_ids)`` once per step after the forward,
or ``register_prefix(seq_id, n)`` for a prefix (chunked prefill). A sequence freed, truncated,
preempted or swapped out before that leaves nothing in the cache.

Every public method validates its arguments first (``block_manager.py``) and either succeeds
or raises a ``PagedKVError`` leaving the manager unchanged; the roles trust what they are given.
"""

from pagedkv.core.manager.block_manager import BlockManager
from pagedkv.core.manager.pins import PrefixPin

__all__ = ["BlockManager", "PrefixPin"]
