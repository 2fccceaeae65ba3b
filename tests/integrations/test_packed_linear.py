"""Packed projections: the same values as ``F.linear`` on the model's weights, fused groups in
order, and a weight written or replaced after packing is packed again before it is used."""

from __future__ import annotations

import pytest
import torch
from hf_helpers import hf_greedy, seeded_prompts
from torch.nn import functional as nnf

from pagedkv.integrations import PagedModelRunner
from pagedkv.integrations.packed_linear import PackedLinear, onednn_usable
from pagedkv.models.random_llama import tiny_random_llama

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}


def _linears(dtype: torch.dtype, biases: tuple[bool, ...]) -> list[torch.nn.Linear]:
    torch.manual_seed(0)
    outs = (48, 16, 16)
    return [torch.nn.Linear(32, n, bias=b).to(dtype) for n, b in zip(outs, biases, strict=False)]


def _reference(linears: list[torch.nn.Linear], x: torch.Tensor) -> torch.Tensor:
    return torch.cat([nnf.linear(x, lin.weight, lin.bias) for lin in linears], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("biases", [(False,), (True,), (False, False, False), (True, False, True)])
@pytest.mark.parametrize("pack", [True, False])
def test_packed_equals_f_linear_side_by_side(dtype, biases, pack):
    linears = _linears(dtype, biases)
    p = PackedLinear(linears, pack=pack)
    assert p.splits == [lin.out_features for lin in linears]
    # float16 has no packed path here; float32 / bfloat16 pack where oneDNN is present
    assert (p.packed is not None) == (pack and onednn_usable(linears[0].weight))
    with torch.no_grad():
        x = torch.randn(5, 32).to(dtype)
        got, ref = p(x), _reference(linears, x)
    assert got.shape == (5, sum(p.splits))
    if p.packed is None and pack:  # not packable here: one F.linear per projection, no copy
        assert p.nbytes == 0
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_in_place_write_and_replacement_are_packed_again():
    linears = _linears(torch.float32, (True, False))
    p = PackedLinear(linears)
    x = torch.randn(3, 32)
    assert not p.stale()
    with torch.no_grad():
        linears[0].weight.mul_(-2.0)  # in place: torch bumps the version counter
    assert p.stale()
    p.refresh()
    assert not p.stale()
    with torch.no_grad():
        torch.testing.assert_close(p(x), _reference(linears, x), atol=1e-5, rtol=1e-5)
    linears[1].bias = torch.nn.Parameter(torch.ones(16))  # a bias where there was none
    assert p.stale()
    p.refresh()
    with torch.no_grad():
        torch.testing.assert_close(p(x), _reference(linears, x), atol=1e-5, rtol=1e-5)


def test_native_forward_sees_weights_edited_between_steps():
    """In-place edits and ``load_state_dict`` after the runner was built: the next step runs the
    new weights (greedy equal to HF ``generate`` on the edited model)."""
    model = tiny_random_llama(3).model
    runner = PagedModelRunner(model, block_size=4, num_blocks=128)
    assert runner.native is not None
    assert runner.native.packed_bytes > 0
    prompt = seeded_prompts([9], seed=7, vocab=300)[0]
    before = runner.generate([prompt], 6)[0]
    assert before == hf_greedy(model, prompt, 6)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(3.0)
        model.lm_head.weight.add_(0.05)
    runner.manager.reset_prefix_cache()  # KV cached under the old weights must not be reused
    edited = runner.generate([prompt], 6)[0]
    assert edited == hf_greedy(model, prompt, 6)
    other = tiny_random_llama(11).model
    model.load_state_dict(other.state_dict())
    runner.manager.reset_prefix_cache()
    assert runner.generate([prompt], 6)[0] == hf_greedy(other, prompt, 6)
    runner.check_integrity()
