"""The forest of cached blocks: each cached block's parent is the block cached under its parent
hash, so a cached suffix can be dropped together with (never outlive) its prefix.

``parent[b]`` is the cached parent of block ``b`` (-1 for a root; stale, and unused, once ``b``
leaves the cache). ``children[b]`` is ``None``, one block id (the common chain case: no set
allocated) or a set of ids, and is truthy iff ``b`` has cached children.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

Children = int | set[int] | None


def kids_of(children: Children) -> tuple[int, ...] | set[int]:
    """The block ids in one ``children`` entry."""
    if children is None:
        return ()
    return (children,) if isinstance(children, int) else children


def detach(children: list[Children], parent: int, child: int) -> None:
    """Remove ``child`` from ``children[parent]`` (no-op for a root, ``parent < 0``). The one
    unlink of the forest; ``PrefixCache._pop_queue_leaves`` inlines it (its hot loop)."""
    if parent < 0:
        return
    kids = children[parent]
    if type(kids) is set:
        kids.discard(child)
    else:
        children[parent] = None


class BlockForest:
    """Parent/child links between cached blocks (``num_blocks`` entries, indexed by block id)."""

    def __init__(self, num_blocks: int) -> None:
        self.parent: list[int] = [-1] * num_blocks
        self.children: list[Children] = [None] * num_blocks

    def link(self, parent: int, child: int) -> None:
        """Record ``child`` (just cached) under ``parent`` (-1: ``child`` is a root)."""
        self.parent[child] = parent
        if parent < 0:
            return
        kids = self.children[parent]
        if kids is None:
            self.children[parent] = child
        elif isinstance(kids, int):
            self.children[parent] = {kids, child}
        else:
            kids.add(child)

    def unlink(self, block_id: int) -> None:
        """Detach a cached block from its cached parent (it is about to leave the cache)."""
        detach(self.children, self.parent[block_id], block_id)

    def post_order(self, root: int) -> Iterator[int]:
        """``root`` and its cached descendants, children before parents (iteratively: chains
        are thousands of blocks deep). Read lazily: a caller may drop visited blocks."""
        children = self.children
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                yield node
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in kids_of(children[node]))

    def problem(self, block_hash: Sequence[Hashable | None]) -> str | None:
        """What breaks the forest's invariants, if anything: a cached block's parent is cached
        and lists it; an uncached block lists no children; every listed child points back."""
        parent, children = self.parent, self.children
        for b, h in enumerate(block_hash):
            p = parent[b]
            if (
                h is not None
                and p >= 0
                and (block_hash[p] is None or b not in kids_of(children[p]))
            ):
                return f"block {b} parent {p} is not cached or does not list it"
            if h is None and children[b]:
                return f"uncached block {b} lists cached children {children[b]}"
            for c in kids_of(children[b]):
                if block_hash[c] is None or parent[c] != b:
                    return (
                        f"block {b} lists child {c} (cached {block_hash[c] is not None}, "
                        f"parent {parent[c]})"
                    )
        return None
