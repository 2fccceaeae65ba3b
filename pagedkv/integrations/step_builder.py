"""One forward's inputs: the pending tokens of a step's sequences packed into one varlen row.

A paged batch is ragged (each sequence has its own length, block table and prefix hit), so the
step's new tokens of all sequences go into one row (``input_ids [1, T]`` with per-token
``position_ids``) and :class:`AttentionMetadata` (built once per step) tells every layer where
each sequence's queries, keys and cache slots are. No padding.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from pagedkv.attention import AttentionBackend, AttentionMetadata
from pagedkv.core import BlockManager
from pagedkv.errors import InvalidArgumentError
from pagedkv.integrations.hf_attention import PagedStep
from pagedkv.storage import KVStorage


def build_paged_step(
    seq_ids: Sequence[Hashable],
    pending: Mapping[Hashable, tuple[int, list[int]]],
    *,
    manager: BlockManager,
    storage: KVStorage,
    backend: AttentionBackend,
    device: torch.device,
) -> tuple[PagedStep, torch.Tensor, torch.Tensor]:
    """Step metadata for the ``pending`` tokens of ``seq_ids`` (slots and block tables from
    ``manager``; the step writes into ``storage`` and attends with ``backend``).

    Returns:
        (step, input_ids int64 ``[1, T]``, position_ids int64 ``[1, T]``), on ``device``.
    """
    if not seq_ids:
        raise InvalidArgumentError("seq_ids: expected at least one sequence, got none")
    if len(set(seq_ids)) != len(seq_ids):
        raise InvalidArgumentError(f"seq_ids: expected distinct ids, got {list(seq_ids)}")
    missing = [s for s in seq_ids if s not in pending]
    if missing:
        raise InvalidArgumentError(
            f"forward: expected pending tokens for every sequence, got none for {missing}"
        )
    starts, tokens, slots = [], [], []
    for s in seq_ids:
        start, toks = pending[s]
        starts.append(start)
        tokens.append(toks)
        slots.append(manager.slot_mapping(s, start, start + len(toks)))
    return paged_step(
        starts,
        tokens,
        block_tables=manager.block_table_array(seq_ids),
        slot_mapping=np.concatenate(slots),
        block_size=manager.block_size,
        storage=storage,
        backend=backend,
        device=device,
    )


def paged_step(
    starts: Sequence[int],
    tokens: Sequence[Sequence[int]],
    *,
    block_tables: np.ndarray,
    slot_mapping: np.ndarray,
    block_size: int,
    storage: KVStorage,
    backend: AttentionBackend,
    device: torch.device,
) -> tuple[PagedStep, torch.Tensor, torch.Tensor]:
    """Step metadata for sequences whose tokens ``tokens[b]`` sit at positions
    ``starts[b]..`` (what a :class:`~pagedkv.engine.scheduler_output.SchedulerOutput` holds).

    Args:
        block_tables: int ``[B, M]`` block ids per sequence, padded with the null block 0.
        slot_mapping: int64 ``[T]`` cache slot of every token, in batch order.
    Returns:
        (step, input_ids int64 ``[1, T]``, position_ids int64 ``[1, T]``), on ``device``.
    """
    ids: list[int] = []
    pos: list[np.ndarray] = []
    qlens, slens = [], []
    for start, toks in zip(starts, tokens, strict=True):
        end = start + len(toks)
        ids.extend(toks)
        pos.append(np.arange(start, end))
        qlens.append(len(toks))
        slens.append(end)
    meta = AttentionMetadata.build(
        block_size=block_size,
        block_tables=block_tables,
        seq_lens=slens,
        query_lens=qlens,
        slot_mapping=slot_mapping,
        device=device,
    )
    step = PagedStep(storage=storage, metadata=meta, backend=backend)
    input_ids = torch.tensor([ids], dtype=torch.int64, device=device)
    position_ids = torch.from_numpy(np.concatenate(pos)[None]).to(device)
    return step, input_ids, position_ids
