"""Projections packed once for a fast GEMM: fused where they share an input, re-packed when changed.

Why: on CPU the forward is mostly GEMMs, and their speed depends on the layout of the weight.
Projections that read the same input (q/k/v, gate/up) are concatenated into one GEMM with more
columns, and the weight is packed once, in the first of these that applies:

1. float32 with the compiled CPU kernel (``compiled=True``: the attention backend ``"cpu"``) on
   an AVX-512 CPU: the kernel's panel GEMM (:mod:`pagedkv.integrations.panel_gemm`), which runs
   decode-sized row counts near these cores' peak where oneDNN did not.
2. float32 or bfloat16 with oneDNN: the weight reordered into its blocked layout
   (``torch.ops.mkldnn._reorder_linear_weight``, the op inductor's CPU weight pre-packing uses)
   and run with ``_linear_pointwise``, measured on 2 threads of this project's CPU against
   ``F.linear`` (MKL): ``[48, 576] x [576, 3072]`` 208 against 142 GFLOP/s,
   ``[48, 576] x [576, 49152]`` (a decode step's ``lm_head``) 177 against 80.
3. otherwise (another device, float16, a torch without oneDNN) each projection runs through
   ``F.linear`` on the model's own weight and the outputs are concatenated: nothing is copied,
   so a large model on a GPU does not hold its q/k/v and gate/up weights twice.

A pack is checked against ``F.linear`` on a few rows when it is made and dropped (the next
option taken) if it computes something else. The cost of 1 and 2 is a second copy of the
projected weights (the model keeps its own). ``pack=False`` asks for the fused copy through
``F.linear`` (the ablation's "unpacked" row).

Freshness: a pack is a snapshot. Before each step :meth:`PackedLinear.stale` compares every
source tensor's identity, storage pointer and version counter (torch bumps it on every in-place
write: ``copy_`` / ``mul_`` under ``no_grad``, ``load_state_dict``); a changed source is packed
again before the step runs. An edit through ``.data`` bypasses that counter and is not seen:
use ``load_state_dict`` or an in-place op under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as nnf

from pagedkv.integrations.panel_gemm import pack_panels, panel_gemm, panel_gemm_usable

_PACKED_DTYPES = (torch.float32, torch.bfloat16)


def _fingerprint(t: torch.Tensor | None) -> tuple[int, int, int]:
    if t is None:
        return (0, 0, 0)
    return (id(t), t.data_ptr(), t._version)


def onednn_usable(weight: torch.Tensor) -> bool:
    """Whether ``weight`` (``[N, K]``) can be packed for ``_linear_pointwise`` here: a CPU
    tensor of float32 or bfloat16 and a torch built with oneDNN."""
    return (
        weight.device.type == "cpu"
        and weight.dtype in _PACKED_DTYPES
        and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear:
    """``F.linear`` of several ``nn.Linear`` sharing one input, as one packed GEMM.

    ``__call__(x)``: ``x`` ``[T, K]`` in the weights' dtype → ``[T, sum(out_features)]``, the
    outputs side by side in the order the linears were given (split them with :attr:`splits`).
    ``compiled``: the compiled CPU kernel is built (the step's backend is ``"cpu"``), so its
    panel GEMM may be used.
    """

    def __init__(
        self, linears: Sequence[torch.nn.Linear], *, pack: bool = True, compiled: bool = False
    ) -> None:
        self.linears = list(linears)
        self.splits = [int(lin.out_features) for lin in self.linears]
        self._pack = pack
        self._compiled = compiled
        self._build()

    def _sources(self) -> list[torch.Tensor | None]:
        return [t for lin in self.linears for t in (lin.weight, lin.bias)]

    def _build(self) -> None:
        with torch.no_grad():
            weights = [lin.weight.detach() for lin in self.linears]
            weight = weights[0] if len(weights) == 1 else torch.cat(weights, 0)
            biases = [lin.bias for lin in self.linears]
            bias: torch.Tensor | None = None
            if len(biases) == 1:
                bias = None if biases[0] is None else biases[0].detach()  # the model's own
            elif any(b is not None for b in biases):
                bias = torch.cat(
                    [
                        b.detach() if b is not None else weight.new_zeros(n)
                        for b, n in zip(biases, self.splits, strict=True)
                    ]
                )
            self.bias = bias
            self.panels: torch.Tensor | None = None  # the panel GEMM's layout
            self.packed: torch.Tensor | None = None  # oneDNN's blocked layout
            self.weight = weight.contiguous()
            self.split_calls = False  # one F.linear per source linear (nothing copied)
            if self._pack and self._compiled and panel_gemm_usable(weight):
                self.panels = pack_panels(self.weight)
                if not self._agrees():  # a kernel that computes something else: do not use it
                    self.panels = None
            if self.panels is None and self._pack and onednn_usable(weight):
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)
                if not self._agrees():
                    self.packed = None
            held = self.panels is not None or self.packed is not None
            if held or (self._pack and len(weights) > 1):
                self.weight = weight if len(weights) == 1 else torch.empty(0)  # not kept twice
                self.split_calls = not held
                if self.split_calls:
                    self.bias = None  # each call uses its own linear's bias
        self._seen = [_fingerprint(t) for t in self._sources()]

    def _agrees(self) -> bool:
        x = torch.randn(3, self.weight.shape[1], generator=torch.Generator().manual_seed(0))
        x = x.to(self.weight.dtype)
        ref = nnf.linear(x, self.weight, self.bias).float()
        got = self(x).float()
        tol = 1e-4 if self.weight.dtype == torch.float32 else 5e-2
        scale = float(ref.abs().max()) + 1.0
        return bool(torch.isfinite(got).all()) and float((got - ref).abs().max()) <= tol * scale

    def stale(self) -> bool:
        """True if a source weight or bias was replaced or written since it was packed."""
        return any(
            _fingerprint(t) != seen for t, seen in zip(self._sources(), self._seen, strict=True)
        )

    def refresh(self) -> None:
        """Pack again if a source changed (cheap when none did)."""
        if self.stale():
            self._build()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[T, K]`` → ``[T, N]`` (``N = sum(splits)``), in ``x.dtype``."""
        if self.panels is not None:
            return panel_gemm(x, self.panels, self.bias, sum(self.splits))
        if self.packed is not None:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.packed, self.bias, "none", [], ""
            )
            return out
        if self.split_calls:
            return torch.cat([nnf.linear(x, lin.weight, lin.bias) for lin in self.linears], -1)
        return nnf.linear(x, self.weight, self.bias)

    @property
    def nbytes(self) -> int:
        """Bytes this pack holds beyond the model's own weights."""
        held = [t for t in (self.panels, self.packed) if t is not None]
        if len(self.linears) > 1 and not self.split_calls:  # a fused copy of weights, biases
            held += [self.weight] if not held else []
            held += [self.bias] if self.bias is not None else []
        return sum(t.numel() * t.element_size() for t in held)
