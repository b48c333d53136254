"""Learned depth in a user's own training loop: the optimizer follows growth by itself.

A plain loop (``loss.backward(); optimizer.step()``) on a model whose ``w`` is pushed
past the built sub-layers by the optimizer itself, so sub-layers are built in ``forward``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from infdepth import InfiniteDepth, grow, model_penalty


def make(seed: int = 0) -> tuple[nn.Module, InfiniteDepth, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(6, 6), nn.Tanh()), h="relu", w0=1.0,
                          w_l2=1e-3, block_l2=1e-4)
    model = nn.Sequential(nn.Linear(3, 6), layer, nn.Linear(6, 1))
    others = [p for n, p in model.named_parameters() if n != "1.w"]
    # a large step on w: it passes a chunk of 5 built sub-layers within a few steps
    opt = torch.optim.Adam([{"params": others, "lr": 1e-2}, {"params": [layer.w], "lr": 1.0}])
    return model, layer, opt


def step(model: nn.Module, layer: InfiniteDepth, opt: torch.optim.Optimizer, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(32, 3, generator=gen)
    # the -w term rewards depth, so Adam moves w up by about 1 a step
    loss = model(x).square().mean() + model_penalty(model) - 0.1 * layer.w
    opt.zero_grad()
    loss.backward()
    opt.step()


def state_of(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    moments = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    return {n: p.detach().clone() for n, p in model.state_dict().items()
            if isinstance(p, torch.Tensor)}, moments


def assert_same(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    for k in a[1]:
        for kk in a[1][k]:
            assert torch.equal(a[1][k][kk], b[1][k][kk]), (k, kk)


def test_attached_optimizer_steps_sub_layers_built_in_forward() -> None:
    from infdepth import attach

    model, layer, opt = make()
    attach(model, opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attached: no warning
        for k in range(8):
            used_now = layer.active_blocks  # what this step's forward runs
            step(model, layer, opt, k)
    assert layer.built_blocks >= 10 and used_now > 5, layer.depth
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    used = [p for b in layer.blocks[:used_now] for p in b.parameters()]
    assert all(id(p) in held and p in opt.state for p in used)
    # the same trajectory, bit for bit, as growing by hand after every step
    ref_model, ref_layer, ref_opt = make()
    for k in range(8):
        step(ref_model, ref_layer, ref_opt, k)
        grow(ref_model, ref_opt)
    assert_same(state_of(model, opt), state_of(ref_model, ref_opt))


def test_a_forward_that_builds_sub_layers_no_optimizer_holds_warns_once() -> None:
    model, layer, opt = make()
    with pytest.warns(UserWarning) as record:
        for k in range(8):
            step(model, layer, opt, k)
    messages = [str(r.message) for r in record if "sub-layers" in str(r.message)]
    assert len(messages) == 1, messages
    assert "InfiniteDepth layer '1'" in messages[0]
    assert "infdepth.attach(model, optimizer)" in messages[0]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert any(id(p) not in held for p in layer.blocks.parameters())  # what it warned about


def test_natural_resume_order_loads_the_optimizer_of_a_grown_model() -> None:
    from infdepth import attach

    model, layer, opt = make()
    attach(model, opt)
    for k in range(6):
        step(model, layer, opt, k)
    assert layer.built_blocks > 5
    ck, ck_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for k in range(6, 9):
        step(model, layer, opt, k)

    fresh, fresh_layer, fresh_opt = make(seed=1)  # an ungrown model, another process' RNG
    attach(fresh, fresh_opt)
    fresh.load_state_dict(ck)
    fresh_opt.load_state_dict(ck_opt)  # torch's "doesn't match the size" before attach
    for k in range(6, 9):
        step(fresh, fresh_layer, fresh_opt, k)
    assert_same(state_of(fresh, fresh_opt), state_of(model, opt))


def test_optimizer_state_loaded_before_the_model_grows_the_model() -> None:
    from infdepth import attach

    model, layer, opt = make()
    attach(model, opt)
    for k in range(6):
        step(model, layer, opt, k)
    fresh, fresh_layer, fresh_opt = make(seed=1)
    attach(fresh, fresh_opt)
    fresh_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh_layer.built_blocks == layer.built_blocks
    fresh.load_state_dict(copy.deepcopy(model.state_dict()))
    for k in range(6, 9):
        step(fresh, fresh_layer, fresh_opt, k)
        step(model, layer, opt, k)
    assert_same(state_of(fresh, fresh_opt), state_of(model, opt))


def test_ema_of_every_parameter_tracks_the_parameter_of_the_same_name_after_growth() -> None:
    from infdepth import attach, update_average

    model, layer, opt = make()
    attach(model, opt)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    expected: dict[str, torch.Tensor] = {}
    for k in range(8):
        step(model, layer, opt, k)
        update_average(ema, model)
        for name, p in model.named_parameters():  # the EMA of each name, by hand
            v = p.detach()
            expected[name] = v.clone() if name not in expected else expected[name].lerp(v, 0.1)
    assert layer.built_blocks >= 10
    averaged = dict(ema.module.named_parameters())
    assert averaged.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_model_penalty_is_a_zero_tensor_on_the_models_device_and_dtype() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).double()
    loss = model(torch.randn(4, 3, dtype=torch.float64)).square().mean()
    penalty = model_penalty(model)
    total = loss + penalty
    assert isinstance(penalty, torch.Tensor) and penalty.dtype == torch.float64
    assert penalty.device == next(model.parameters()).device and penalty.shape == ()
    assert float(penalty) == 0.0 and torch.equal(total, loss)
    assert model_penalty(nn.ReLU()).shape == ()  # no parameters at all
