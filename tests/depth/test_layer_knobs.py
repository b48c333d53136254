"""The learned-depth knobs of InfiniteDepth (issue 24): zero-initialised sub-layers, a detached
penalty gate and learn-then-fix (``fix_depth``); each default keeps the paper's layer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from infdepth.depth import InfiniteDepth
from infdepth.errors import InputError


def bn_block(i: int) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))


def linear_block(i: int) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))


def layer(w0: float, block=bn_block, **kw) -> InfiniteDepth:
    return InfiniteDepth(block, h="relu", w0=w0, seed=5, **kw).double()


X = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("block", [bn_block, linear_block])
@given(w=st.floats(0.05, 9.5))
@settings(max_examples=15, deadline=None)
def test_zero_init_sub_layers_enter_as_the_zero_function(block, w: float) -> None:
    g = layer(0.5, block, zero_init=True)
    with torch.no_grad():
        g.w.fill_(w)
    g.grow()  # the sub-layers beyond the first chunk
    out = g(X)
    assert g.built_blocks >= math.ceil(w)
    for b in g.blocks:
        assert torch.count_nonzero(b(X)) == 0
    # f_i = 0 everywhere: every sub-layer is relu(g + 0), so the layer is relu(x) at any depth
    torch.testing.assert_close(out, torch.relu(X), rtol=0, atol=0)


def test_zero_init_off_keeps_the_paper_initialisation() -> None:
    default, zero = layer(2.5), layer(2.5, zero_init=True)
    assert all(torch.count_nonzero(b(X)) > 0 for b in default.blocks)
    # the same seed draws the same weights: only the last parameterised module is zeroed
    for a, b in zip(default.blocks, zero.blocks):
        torch.testing.assert_close(a[0].weight, b[0].weight)
        assert torch.count_nonzero(b[1].weight) == 0 and torch.count_nonzero(a[1].weight) == 6


def test_zero_init_sub_layer_still_trains() -> None:
    g = layer(1.5, zero_init=True)
    loss = g(X).square().sum() + (g(X) * X).sum()
    loss.backward()
    assert g.blocks[0][1].weight.grad is not None and g.blocks[0][1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
@given(w=st.floats(0.1, 6.0), w_l2=st.floats(0.0, 1e-2), block_l2=st.floats(1e-4, 1.0))
@settings(max_examples=20, deadline=None)
def test_detached_penalty_gate_leaves_w_to_its_own_l2(fused: bool, w: float, w_l2: float,
                                                       block_l2: float) -> None:
    # gamma_shift != 0 takes the unfused path
    kw = {"w_l2": w_l2, "block_l2": block_l2, "gamma_shift": 0.0 if fused else 1e-12}
    attached, detached = layer(w, **kw), layer(w, penalty_gate="detached", **kw)
    pa, pd = attached.penalty(), detached.penalty()
    torch.testing.assert_close(pa, pd)  # the same value: only the derivative in w changes
    (ga,) = torch.autograd.grad(pa, attached.w)
    (gd,) = torch.autograd.grad(pd, detached.w)
    expected = torch.tensor(2 * w_l2 * detached.depth, dtype=torch.float64)
    torch.testing.assert_close(gd, expected, rtol=1e-12, atol=1e-15)
    assert float(ga) > float(gd)  # the attached gate pulls w down on top of the l2
    # the sub-layers' gammas still get the gated penalty's gradient
    (gg,) = torch.autograd.grad(detached.penalty(), detached.blocks[0][1].weight)
    assert gg.abs().sum() > 0


def test_penalty_gate_is_checked() -> None:
    with pytest.raises(InputError, match="penalty_gate"):
        layer(1.0, penalty_gate="sometimes")


@given(w=st.floats(0.2, 6.8), threshold=st.sampled_from([0.0, 0.25, 0.5]))
@settings(max_examples=25, deadline=None)
def test_fix_depth_keeps_the_function_and_stops_w(w: float, threshold: float) -> None:
    g = layer(w, block_l2=1e-3).eval()
    before = g(X)
    n_active = g.active_blocks
    last_gate = float(g.gates()[-1].detach())
    n = g.fix_depth(threshold)
    assert n == (n_active if last_gate >= threshold else n_active - 1)
    assert g.active_blocks == n and len(g.frozen_gates) == n
    if n == n_active:  # nothing dropped: the same function
        torch.testing.assert_close(g(X), before, rtol=1e-12, atol=1e-12)
    g.train()
    assert not g.w.requires_grad
    if n > 0:
        (g(X).sum() + g.penalty()).backward()
        assert g.w.grad is None and g.blocks[0][0].weight.grad is not None
    else:  # nothing left to train: the layer is relu(x)
        torch.testing.assert_close(g(X), torch.relu(X), rtol=0, atol=0)
    with torch.no_grad():
        g.w.fill_(w + 3)  # w no longer decides anything
    g.eval()
    assert g.active_blocks == n


def test_fix_depth_travels_in_state_dict() -> None:
    g = layer(2.6, block_l2=1e-3).eval()
    n = g.fix_depth(0.25)
    fresh = layer(1.0, block_l2=1e-3).eval()
    fresh.load_state_dict(g.state_dict())
    assert fresh.active_blocks == n and not fresh.w.requires_grad
    torch.testing.assert_close(fresh(X), g(X), rtol=0, atol=0)
    torch.testing.assert_close(fresh.penalty(), g.penalty())
    # a layer that was never fixed has no extra state entry
    assert "fixed_gates" not in layer(2.6).state_dict()


def test_fix_depth_drops_a_barely_open_last_sub_layer() -> None:
    g = layer(2.05)  # last gate 1 - exp(-0.05) ~ 0.049
    assert g.fix_depth(0.25) == 2
    assert layer(2.05).fix_depth(0.0) == 3
    with pytest.raises(InputError, match="threshold"):
        layer(1.0).fix_depth(1.5)
