"""Victim ordering for preemption under memory pressure, pluggable through a registry
(``PREEMPTION_POLICIES``, a ``pagedkv.registry.Registry``).

Each policy sorts running sequences, first victim first:

* ``priority`` - largest ``priority`` value first (smaller value = more important, as in vLLM),
  ties newest arrival first.
* ``lru`` - least recently appended to first.
* ``longest`` - most blocks first (frees the most memory per preemption).
* ``newest`` - latest arrival first (FCFS fairness: vLLM's default).
"""

from __future__ import annotations

from collections.abc import Callable

from pagedkv.core.seq_state import SeqState
from pagedkv.registry import Registry

VictimOrder = Callable[[list[SeqState]], list[SeqState]]
PREEMPTION_POLICIES: Registry[VictimOrder] = Registry("preemption policy")


def register_preemption_policy(
    name: str, *, replace: bool = False
) -> Callable[[VictimOrder], VictimOrder]:
    """Decorator adding a victim order to ``PREEMPTION_POLICIES`` under ``name``. A taken name
    raises ``RegistryError`` unless ``replace=True``."""
    return PREEMPTION_POLICIES.register(name, replace=replace)


@register_preemption_policy("priority")
def _by_priority(seqs: list[SeqState]) -> list[SeqState]:
    return sorted(seqs, key=lambda s: (-s.priority, -s.arrival))


@register_preemption_policy("lru")
def _by_lru(seqs: list[SeqState]) -> list[SeqState]:
    return sorted(seqs, key=lambda s: (s.last_used, s.arrival))


@register_preemption_policy("longest")
def _by_length(seqs: list[SeqState]) -> list[SeqState]:
    return sorted(seqs, key=lambda s: (-len(s.block_table), -s.arrival))


@register_preemption_policy("newest")
def _by_newest(seqs: list[SeqState]) -> list[SeqState]:
    return sorted(seqs, key=lambda s: -s.arrival)
