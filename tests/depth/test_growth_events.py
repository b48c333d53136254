"""Every path that builds sub-layers records a growth event, so an attached optimizer takes them.

:func:`infdepth.attach`'s step hook looks the model over only when the process-wide count
of growth events (:mod:`infdepth.depth.events`) moved since its last look.  A build path
that did not record its event would leave the new sub-layers out of the optimizer: they
would get gradients and never be stepped.  One test per path: ``load_state_dict`` of a
grown layer, ``w`` set by hand (the next ``forward`` builds), ``prune`` then regrowth, and
:meth:`InfiniteDepth.grow` called directly.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infdepth import InfiniteDepth, attach, model_penalty
from infdepth.depth.events import growth_events


def make(w0: float = 1.5) -> tuple[nn.Sequential, InfiniteDepth, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(5, 5), nn.Tanh()), h="relu", w0=w0,
                          w_l2=1e-3, block_l2=1e-3, grow_step=2, seed=3)
    model = nn.Sequential(nn.Linear(3, 5), layer, nn.Linear(5, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    attach(model, opt)
    return model, layer, opt


def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    loss = model(x).square().mean() + model_penalty(model)
    opt.zero_grad()
    loss.backward()
    opt.step()


def assert_stepped(opt: torch.optim.Optimizer, blocks: list[nn.Module]) -> None:
    """Every parameter of ``blocks`` is in ``opt`` and has optimizer state (it was stepped)."""
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    params = [p for b in blocks for p in b.parameters()]
    assert params and all(id(p) in held for p in params), "a built sub-layer never joined the optimizer"
    assert all(p in opt.state for p in params), "a built sub-layer was not stepped"


def test_sub_layers_built_by_load_state_dict_join_the_attached_optimizer() -> None:
    grown, grown_layer, _ = make(w0=3.5)  # 4 sub-layers
    model, layer, opt = make()  # 2 sub-layers, optimizer made and attached first
    train_step(model, opt)
    before = growth_events()
    model.load_state_dict(grown.state_dict())
    assert layer.built_blocks == 4 and growth_events() > before
    train_step(model, opt)
    assert_stepped(opt, list(layer.blocks))


def test_sub_layers_built_after_w_is_set_by_hand_join_the_attached_optimizer() -> None:
    model, layer, opt = make()
    train_step(model, opt)
    with torch.no_grad():
        layer.w.fill_(3.4)  # the next forward builds sub-layers 2 and 3
    train_step(model, opt)
    assert layer.built_blocks == 4
    assert_stepped(opt, list(layer.blocks))


def test_sub_layers_regrown_after_prune_join_the_attached_optimizer() -> None:
    model, layer, opt = make(w0=3.5)
    train_step(model, opt)
    with torch.no_grad():
        layer.w.fill_(1.5)
    assert layer.prune() == 2
    train_step(model, opt)
    with torch.no_grad():
        layer.w.fill_(3.5)
    train_step(model, opt)  # the forward builds new sub-layers 2 and 3 (new tensors)
    assert layer.built_blocks == 4
    assert_stepped(opt, list(layer.blocks))


def test_sub_layers_built_by_grow_join_the_attached_optimizer() -> None:
    model, layer, opt = make()
    train_step(model, opt)
    layer.grow(4)  # explicit target: no forward involved
    with torch.no_grad():
        layer.w.fill_(3.5)  # and used from the next step on
    train_step(model, opt)
    assert_stepped(opt, list(layer.blocks))


def test_grow_scans_the_optimizer_only_when_something_was_built(monkeypatch) -> None:
    import infdepth.depth.growth as growth

    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(5, 5), nn.Tanh()), w0=1.5, grow_step=2, seed=3)
    model = nn.Sequential(nn.Linear(3, 5), layer)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scans = []
    original = growth.register_built
    monkeypatch.setattr(growth, "register_built", lambda m, o: scans.append(1) or original(m, o))
    for _ in range(3):
        growth.grow(model, opt)
    assert len(scans) == 1  # the first look; then no growth anywhere: one comparison each
    with torch.no_grad():
        layer.w.fill_(3.5)
    with pytest.warns(UserWarning):
        model(torch.randn(4, 3))  # a forward builds sub-layers 2, 3 (no optimizer attached)
    growth.grow(model, opt)  # grows nothing itself, but the event moved: it looks again
    assert len(scans) == 2
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in held for p in layer.blocks.parameters())
