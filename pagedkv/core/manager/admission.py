"""Admission, staged: the prompt's keys, the prefix lookup, the room check, the allocation.

``parse`` validates a prompt and hashes it once into a ``Prompt``; ``admit`` then runs the
stages, none of which changes anything before the last (``create``). vLLM splits the same way
(``get_computed_blocks`` looks up, ``allocate_slots`` allocates).
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Sequence

from pagedkv.core import validate as check
from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.manager.sequence_table import SequenceTable
from pagedkv.core.prefix_cache.block_tokens import TOKEN_BYTES
from pagedkv.core.prefix_cache.hashing import HashedPrompt, genuine, is_genuine
from pagedkv.core.seq_state import SeqState, SlidingWindow
from pagedkv.core.stats import Counters
from pagedkv.core.tokens import TokenIds, as_token_array
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError


class Prompt:
    """A validated prompt: ``tokens`` (None when admitted by length, or kept in ``hashed``), its
    length ``n``, the
    ``root`` hash (None when caller-keyed or uncached) and one cache key per full block
    (``hashes``: empty when prefix caching is off); ``hashed`` is the ``HashedPrompt`` it came
    from, if any."""

    __slots__ = ("hashed", "hashes", "n", "root", "tokens")

    def __init__(
        self,
        tokens: array[int] | None,
        n: int,
        root: bytes | None,
        hashes: list[Hashable],
        hashed: HashedPrompt | None = None,
    ) -> None:
        self.tokens, self.n, self.root, self.hashes, self.hashed = tokens, n, root, hashes, hashed


class Admission:
    """Creates sequences from prompts, reusing their longest cached prefix."""

    def __init__(
        self,
        table: SequenceTable,
        pool: BlockPool,
        counters: Counters,
        *,
        watermark_blocks: int,
        min_cache_tokens: int,
        caching: bool,
        hash_algo: str,
    ) -> None:
        self.table, self.pool, self.counters = table, pool, counters
        self.cache = pool.cache
        self.block_size = pool.cache.block_size
        self.watermark_blocks = watermark_blocks
        self.min_cache_tokens = min_cache_tokens
        self.caching = caching
        self.hash_algo = hash_algo

    # ---------------------------------------------------------------- prompts
    def hash_prompt(self, token_ids: TokenIds, cache_salt: object, lora_id: object) -> HashedPrompt:
        """Validate and hash a token prompt (``BlockManager.hash_prompt``)."""
        tokens = as_token_array(token_ids)
        root, hashes = self.hash_tokens(tokens, cache_salt, lora_id)
        return genuine(
            HashedPrompt(tokens.tobytes(), tuple(hashes), root, self.hash_algo, self.block_size)
        )

    def hash_tokens(
        self, tokens: array[int], cache_salt: object, lora_id: object
    ) -> tuple[bytes, list[bytes]]:
        """The root hash of (validated) ``cache_salt``/``lora_id`` and the tokens' block hashes."""
        hasher = self.cache.hasher
        root = hasher.root(check.salt(cache_salt), check.lora(lora_id))
        return root, hasher.hash_blocks(root, tokens, len(tokens) // self.block_size)

    def parse(self, prompt: TokenIds | HashedPrompt, cache_salt: object, lora_id: object) -> Prompt:
        """A token prompt (or a ``HashedPrompt`` made by a manager like this one) with its
        cache keys, hashed once; no keys when prefix caching is off."""
        if not isinstance(prompt, HashedPrompt):
            tokens = as_token_array(prompt)
            if not self.caching:  # validate as a hashing call would, but hash nothing
                check.salt(cache_salt)
                check.lora(lora_id)
                return Prompt(tokens, len(tokens), None, [])
            root, hashes = self.hash_tokens(tokens, cache_salt, lora_id)
            return Prompt(tokens, len(tokens), root, list(hashes))
        if not is_genuine(prompt):
            raise InvalidArgumentError(
                "a HashedPrompt must come from BlockManager.hash_prompt (or its prefix); one built "
                "by hand could pair tokens with another prompt's hashes"
            )
        if cache_salt is not None or lora_id is not None:
            raise InvalidArgumentError(
                "a HashedPrompt carries its cache_salt/lora_id: pass them to hash_prompt"
            )
        if (prompt.hash_algo, prompt.block_size) != (self.hash_algo, self.block_size):
            raise InvalidArgumentError(
                f"prompt hashed with {prompt.hash_algo!r} and block_size {prompt.block_size}, "
                f"but this manager uses {self.hash_algo!r} and {self.block_size}"
            )
        if not self.caching:
            return Prompt(None, len(prompt), None, [], prompt)
        return Prompt(None, len(prompt), prompt.root, list(prompt.hashes), prompt)

    def parse_keyed(
        self, num_tokens: int | None, block_hashes: Sequence[Hashable] | None
    ) -> Prompt:
        """A prompt admitted by length, with the caller's own block keys (if any)."""
        if num_tokens is None:
            raise InvalidArgumentError(f"need token_ids or num_tokens >= 0, got {num_tokens}")
        n = check.count("num_tokens", num_tokens)
        bs = self.block_size
        keys = None if block_hashes is None else check.block_hashes(block_hashes, n // bs, n, bs)
        return Prompt(None, n, None, keys if keys is not None and self.caching else [])

    @staticmethod
    def check_options(priority: object, sliding_window: object) -> None:
        """``admit``'s scheduling options; the common all-default case costs two tests."""
        if type(priority) is not int:
            check.priority(priority)
        if sliding_window is not None:
            check.instance("sliding_window", sliding_window, SlidingWindow, optional=True)

    # -------------------------------------------------------------- admission
    def admit(
        self,
        seq_id: Hashable,
        p: Prompt,
        priority: int,
        window: SlidingWindow | None,
        compute_last_token: bool,
        partial: bool = False,
    ) -> int:
        """Allocate ``seq_id``'s blocks; returns its cached tokens. Layout for ``n = 10``
        tokens, ``block_size = 4``, ``compute_last_token``, block 0 cached as ``b7``::

            tokens    | t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9 .  .  |
            hashes    |     h0      |     h1      | (partial)   |
            lookup    |  hit: b7    |  miss       |             |   max_hit = (n-1) // bs
            table     |     b7      |  new b1     |  new b2     |   need = 3 - 1 = 2
                      |<- cached -->|<-- computed by the caller -->|

        With ``partial`` (a partial-block hit), if ``b7`` has a cached child ``b9`` holding
        ``t4 t5 x x``, rows 0-1 of ``b9`` are queued to be copied into ``b1`` (with the rest of
        ``b9``, which the caller overwrites) and 6 tokens are returned as cached.

        The last token's block is never a hit when the last token must be computed (its
        logits are needed), nor is the last token itself a partial hit. A hit on an
        unreferenced cached block takes it out of the evictable set, so it counts against the
        room as a new block would (``reclaimed``); so does a partial hit's source, held until
        its copy runs.
        """
        hit = self.cache.lookup(p.hashes, self.max_hit(p.n, compute_last_token))
        src, extra = self.partial_source(p, hit, compute_last_token) if partial else (-1, 0)
        need = -(-p.n // self.block_size) - len(hit)
        self.check_room(need, hit if src < 0 else [*hit, src])
        seq = self.create(seq_id, p, hit, need, priority, window, src)
        seq.num_computed += extra
        self.count(seq, need, extra)
        return seq.num_computed

    def partial_source(
        self, p: Prompt, hit: list[int], compute_last_token: bool
    ) -> tuple[int, int]:
        """The cached child of the last ``hit`` block whose first tokens agree longest with
        the prompt's next ones, and how many agree (at most the tokens after the hit, less the
        last one when it must be computed): ``(block, n)``, or ``(-1, 0)``. Only after a hit
        (the roots of the cached forest are not indexed) and for a prompt with tokens."""
        bs, start = self.block_size, len(hit) * self.block_size
        limit = min(bs - 1, p.n - start - (1 if compute_last_token else 0))
        if not hit or limit <= 0:
            return -1, 0
        if p.hashed is not None:
            data = p.hashed.data
        elif p.tokens is not None:
            data = p.tokens.tobytes()
        else:
            return -1, 0
        cache = self.cache
        want = data[start * TOKEN_BYTES : (start + limit) * TOKEN_BYTES]
        src, n = cache.tokens.best_child(cache.forest.children[hit[-1]], cache.block_hash, want)
        return (src, n) if n else (-1, 0)

    def max_hit(self, n: int, compute_last_token: bool) -> int:
        """Most leading blocks of an ``n``-token prompt that may come from the cache."""
        bs = self.block_size
        return max(0, (n - 1) // bs) if compute_last_token else n // bs

    def check_room(self, need: int, hit: list[int]) -> None:
        """Raise ``OutOfBlocksError`` if ``need`` new blocks (plus the unreferenced ``hit``
        blocks reclaimed from the evictable set) would dip below the watermark."""
        ref_cnt = self.pool.ref_cnt
        reclaimed = sum(1 for b in hit if not ref_cnt[b])
        available = self.pool.num_available - reclaimed - self.watermark_blocks
        if need > available and need > 0:  # needing no block never fails, reserve or not
            raise OutOfBlocksError(need, max(available, 0))

    def create(
        self,
        seq_id: Hashable,
        p: Prompt,
        hit: list[int],
        need: int,
        priority: int,
        window: SlidingWindow | None,
        partial_src: int = -1,
    ) -> SeqState:
        """Take the hits (and ``partial_src``, the hold of a partial hit's copy into the first
        new block), allocate the rest and register the new ``SeqState``."""
        bs, table = self.block_size, self.table
        tokens = p.tokens if p.hashed is None else p.hashed.token_array()  # its own copy
        if hit:
            self.pool.touch(hit)
        if partial_src >= 0:  # before allocating: the allocation must not evict it
            self.pool.touch((partial_src,))
        num_hit = len(hit)
        table.clock += 1
        caching = (bool(p.hashes) or p.root is not None) and p.n >= self.min_cache_tokens
        seq = SeqState(
            seq_id,
            tokens,
            p.root,
            priority,
            table.clock,
            window,
            hit + self.pool.allocate(need),
            p.n,
            p.hashes,
            num_hit,
            caching,
        )
        seq.prompt = None if p.hashed is None else p.hashed.whole or p.hashed
        seq.num_computed = num_hit * bs  # hit blocks were committed by whoever cached them
        if partial_src >= 0:
            table.copies.add_held(partial_src, seq.block_table[num_hit])
        table.seqs[seq_id] = seq
        table.registrar.track(seq)
        if window is not None:
            # Nothing is released yet: the prompt's own prefill still reads every block in its
            # tokens' windows. Blocks behind the window go from the next append on.
            seq.window_next = window.first_droppable_block(bs)
        return seq

    def count(self, seq: SeqState, need: int, partial: int = 0) -> None:
        """Counters, peak usage and pressure after an admission (``partial``: tokens of a
        partial-block hit)."""
        c = self.counters
        c.allocations += need
        if self.caching:
            c.prefix_queries += 1
            c.prefix_query_tokens += seq.num_tokens
            if seq.num_hashed:
                c.prefix_hit_tokens += seq.num_hashed * self.block_size + partial
                c.prefix_hit_requests += 1
                c.partial_hit_tokens += partial
        self.table.after_alloc()

    def admit_batch(
        self,
        seq_ids: list[Hashable],
        prompts: list[Prompt],
        priority: int,
        window: SlidingWindow | None,
        compute_last_token: bool,
    ) -> list[int]:
        """Admit every prompt, or raise ``OutOfBlocksError`` before the first if the batch might
        not fit (``worst_case_need``)."""
        worst = self.worst_case_need(prompts)
        available = max(self.pool.num_available - self.watermark_blocks, 0)
        if worst > available:
            raise OutOfBlocksError(worst, available)
        return [
            self.admit(sid, p, priority, window, compute_last_token)
            for sid, p in zip(seq_ids, prompts, strict=True)
        ]

    def worst_case_need(self, prompts: list[Prompt]) -> int:
        """Blocks a batch of prompts needs if every unreferenced cached block a prompt would
        hit were evicted by an earlier prompt of the batch (``admit_batch``'s up-front check):
        only leading hits already referenced are safe."""
        ref_cnt, worst = self.pool.ref_cnt, 0
        for p in prompts:
            hit = self.cache.lookup(p.hashes, max(0, p.n - 1) // self.block_size)
            safe = next((i for i, b in enumerate(hit) if not ref_cnt[b]), len(hit))
            worst += -(-p.n // self.block_size) - safe
        return worst
