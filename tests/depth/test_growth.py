import pytest
import torch
from torch import nn

from infdepth.depth import InfiniteDepth, UnregisteredGrowthWarning, grow


def model_and_optimizer() -> tuple[nn.Module, InfiniteDepth, torch.optim.Optimizer]:
    layer = InfiniteDepth(lambda i: nn.Linear(5, 5), h="relu", w0=1.0, seed=0)
    model = nn.Sequential(nn.Linear(3, 5), layer, nn.Linear(5, 1))
    return model, layer, torch.optim.Adam(model.parameters(), lr=1e-2)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(16, 3, generator=gen)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_growth_keeps_adam_state_bit_for_bit_and_registers_new_blocks() -> None:
    model, layer, opt = model_and_optimizer()
    train_steps(model, opt, 3)
    before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    with torch.no_grad():
        layer.w.fill_(7.5)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grown = grow(model, opt)
    assert grown == {"1": 5}
    assert layer.built_blocks == 10
    for p, s in opt.state.items():
        for k, v in s.items():
            assert torch.equal(v, before[id(p)][k])
    for name, p in model.named_parameters():
        if name in params_before:
            assert torch.equal(p, params_before[name])
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in layer.blocks.parameters())
    # canonical order: an optimizer built afresh on the grown model has the same layout
    fresh = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in fresh.param_groups[0]["params"]]
    train_steps(model, opt, 1)
    assert all(p in opt.state for p in layer.blocks[7].parameters())


def test_no_growth_when_w_stays_inside_built_blocks() -> None:
    model, layer, opt = model_and_optimizer()
    with torch.no_grad():
        layer.w.fill_(4.9)
    assert grow(model, opt) == {}
    assert layer.built_blocks == 5


def test_blocks_built_lazily_in_forward_are_registered_after_the_step() -> None:
    model, layer, opt = model_and_optimizer()
    with torch.no_grad():
        layer.w.fill_(6.0)
    with pytest.warns(UnregisteredGrowthWarning, match="no optimizer is attached"):
        model(torch.randn(2, 3))  # forward builds the blocks (no optimizer there)
    grow(model, opt)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in layer.blocks.parameters())
