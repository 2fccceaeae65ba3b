"""Contiguous-allocation baselines: what KV memory looks like *without* paging.

Before PagedAttention, engines (FasterTransformer, Orca) stored each request's KV in one
contiguous chunk reserved at admission, because the final length is unknown while decoding. The
vLLM paper (Kwon et al., SOSP'23, Fig. 2) compared three reservation rules, reproduced here:

* ``max``    — reserve the model's maximum sequence length (``max_model_len``) for every request;
* ``pow2``   — reserve the next power of two of the request's final length;
* ``oracle`` — reserve exactly the final length (an impossible lower bound on reservation).

Reserved-but-unused slots are internal fragmentation; this model is generous to the baselines:
it ignores external fragmentation (as if free space were always compactable), and a reservation
never has to grow, so baselines never preempt. Only a sequence's prompt plus generated tokens so
far are "token states"; the rest of its reservation is waste.
"""

from __future__ import annotations

from collections.abc import Sequence

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.trace import Trace

RESERVATIONS = ("max", "pow2", "oracle")


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ContiguousBackend:
    """Reservation-based memory with ``capacity_tokens`` token slots (see module docstring)."""

    def __init__(
        self, trace: Trace, capacity_tokens: int, reservation: str, max_model_len: int
    ) -> None:
        if reservation not in RESERVATIONS:
            raise InvalidArgumentError(
                f"unknown reservation {reservation!r}; expected one of {RESERVATIONS}"
            )
        if capacity_tokens <= 0:
            raise InvalidArgumentError(f"capacity_tokens must be > 0, got {capacity_tokens}")
        self.name = f"contiguous-{reservation}"
        self.capacity_tokens = capacity_tokens
        self._final = [r.input_len + max(1, r.output_len) - 1 for r in trace.requests]
        if reservation == "max":
            longest = max(self._final, default=0)
            if max_model_len < longest:
                raise InvalidArgumentError(
                    f"max_model_len {max_model_len} is shorter than the longest request "
                    f"({longest} tokens of prompt + output)"
                )
            self._reserve = [max_model_len] * len(self._final)
        elif reservation == "pow2":
            self._reserve = [_next_pow2(f) for f in self._final]
        else:
            self._reserve = list(self._final)
        self._held: dict[int, int] = {}
        self._used = 0

    def fits_ever(self, rid: int, num_tokens: int) -> bool:
        return self._reserve[rid] <= self.capacity_tokens

    def admit(self, rid: int, num_tokens: int) -> int | None:
        need = self._reserve[rid]
        if self._used + need > self.capacity_tokens:
            return None
        self._held[rid] = need
        self._used += need
        return 0

    def grow(self, running: list[int], idle: Sequence[int] = ()) -> list[int]:
        return []  # a reservation covers the final length: decode never needs new memory

    def commit(self, computed: Sequence[tuple[int, int]]) -> None:
        pass  # no sharing between reservations: nothing becomes visible

    def free(self, rid: int) -> None:
        self._used -= self._held.pop(rid)

    def allocated_tokens(self) -> int:
        return self._used

    def shared_tokens(self) -> int:
        return 0  # every request has its own reservation


def default_max_model_len(trace: Trace) -> int:
    """``max(2048, next power of two of the longest prompt + output)`` — 2048 is the OPT/LLaMA-1
    context the vLLM paper used; longer traces need a longer model context. Counted as the
    engine counts a request (prompt + max_tokens), so the serve mode refuses none of the trace's
    requests by this default."""
    longest = max((r.input_len + max(1, r.output_len) for r in trace.requests), default=1)
    return max(2048, _next_pow2(longest))
