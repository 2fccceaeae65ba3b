"""Victim ordering for preemption under memory pressure, pluggable through a registry.

Each policy sorts running sequences, first victim first:

* ``priority`` - largest ``priority`` value first (smaller value = more important, as in vLLM),
  ties newest arrival first.
* ``lru`` - least recently appended to first.
* ``longest`` - most blocks first (frees the most memory per preemption).
* ``newest`` - latest arrival first (FCFS fairness: vLLM's default).
"""

from __future__ import annotations

from collections.abc import Callable

from pagedkv.core.sequence import Sequence

VictimOrder = Callable[[list[Sequence]], list[Sequence]]
PREEMPTION_POLICIES: dict[str, VictimOrder] = {}


def register_preemption_policy(name: str) -> Callable[[VictimOrder], VictimOrder]:
    def wrap(fn: VictimOrder) -> VictimOrder:
        PREEMPTION_POLICIES[name] = fn
        return fn

    return wrap


@register_preemption_policy("priority")
def _by_priority(seqs: list[Sequence]) -> list[Sequence]:
    return sorted(seqs, key=lambda s: (-s.priority, -s.arrival))


@register_preemption_policy("lru")
def _by_lru(seqs: list[Sequence]) -> list[Sequence]:
    return sorted(seqs, key=lambda s: (s.last_used, s.arrival))


@register_preemption_policy("longest")
def _by_length(seqs: list[Sequence]) -> list[Sequence]:
    return sorted(seqs, key=lambda s: (-len(s.block_table), -s.arrival))


@register_preemption_policy("newest")
def _by_newest(seqs: list[Sequence]) -> list[Sequence]:
    return sorted(seqs, key=lambda s: -s.arrival)
