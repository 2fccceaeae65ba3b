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

An MLP's gate|up pair is a :class:`GateUpLinear`: the same pack, plus :meth:`GateUpLinear.
silu_mul`, which with panels runs the SiLU-and-multiply as the GEMM's epilogue (one kernel
call, the ``[T, 2I]`` gate|up output never written; bit for bit the unfused result).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as nnf

from pagedkv.integrations import fused_rows
from pagedkv.integrations.panel_gemm import (
    gate_up_gemm,
    pack_gate_up,
    pack_panels,
    panel_gemm,
    panel_gemm_usable,
    panel_silu_mul,
)

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
                self.panels = self._pack_panels()
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

    def _pack_panels(self) -> torch.Tensor:
        """:attr:`weight` (float32 ``[N, K]``) in the layout :meth:`_panel_gemm` reads."""
        return pack_panels(self.weight)

    def _panel_gemm(self, x: torch.Tensor, panels: torch.Tensor) -> torch.Tensor:
        """``x`` ``[T, K]`` float32 → ``[T, N]`` float32 through the panels."""
        return panel_gemm(x, panels, self.bias, sum(self.splits))

    def _probe(self) -> torch.Tensor:
        """A few rows ``[3, K]`` in the weight's dtype to check a fresh pack on."""
        x = torch.randn(3, self.weight.shape[1], generator=torch.Generator().manual_seed(0))
        return x.to(self.weight.dtype)

    def _agrees(self) -> bool:
        x = self._probe()
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
            return self._panel_gemm(x, self.panels)
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


class GateUpLinear(PackedLinear):
    """An MLP's ``gate_proj | up_proj`` (equal widths ``I``) as one :class:`PackedLinear` that
    also gives ``silu(gate) * up`` in one call (:meth:`silu_mul`).

    Why: with the panel GEMM the SiLU-and-multiply can run as the GEMM's epilogue
    (:func:`~pagedkv.integrations.panel_gemm.panel_silu_mul`), so the ``[T, 2I]`` gate|up
    output is never written and read back. For that the panels are in the pair layout (gate's,
    then up's: the same bytes as the concatenation's when ``I % 48 == 0``, else ``__call__``
    runs one GEMM per half); ``I`` not a multiple of 16 keeps the plain layout. Everywhere
    else (bfloat16, oneDNN, no AVX-512, ``F.linear``) :meth:`silu_mul` is
    ``fused_rows.silu_mul(self(x))``, as before.
    """

    def __init__(
        self,
        gate: torch.nn.Linear,
        up: torch.nn.Linear,
        *,
        pack: bool = True,
        compiled: bool = False,
    ) -> None:
        if gate.out_features != up.out_features:
            raise ValueError(
                f"GateUpLinear: gate and up widths differ ({gate.out_features}, {up.out_features})"
            )
        self._pair = gate.out_features % 16 == 0  # the fused kernel's (and fused_rows') rule
        super().__init__([gate, up], pack=pack, compiled=compiled)

    @property
    def fused(self) -> bool:
        """Whether :meth:`silu_mul` runs the panel GEMM's fused epilogue (panels are in use)."""
        return self.panels is not None and self._pair

    def _pack_panels(self) -> torch.Tensor:
        if not self._pair:
            return super()._pack_panels()
        return pack_gate_up(self.weight, self.splits[0])

    def _panel_gemm(self, x: torch.Tensor, panels: torch.Tensor) -> torch.Tensor:
        if not self._pair:
            return super()._panel_gemm(x, panels)
        return gate_up_gemm(x, panels, self.bias, self.splits[0])

    def _agrees(self) -> bool:
        """The GEMM as :class:`PackedLinear` checks it, and with panels the fused epilogue bit
        for bit against the unfused pair of calls."""
        if not super()._agrees():
            return False
        x = self._probe()
        return not self.fused or torch.equal(self.silu_mul(x), fused_rows.silu_mul(self(x)))

    def silu_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[T, K]`` → ``silu(x @ gate.T + bg) * (x @ up.T + bu)`` ``[T, I]`` in
        ``x.dtype``, through the compiled kernel (so a CPU float32/bfloat16 ``x``, ``I`` a
        multiple of 16, as :func:`~pagedkv.integrations.fused_rows.silu_mul` requires): fused
        into the GEMM when :attr:`fused`, else the GEMM then the row pass (the same bits)."""
        if self.fused:
            assert self.panels is not None  # what `fused` checks (for the type checker)
            return panel_silu_mul(x, self.panels, self.bias, self.splits[0])
        return fused_rows.silu_mul(self(x))
