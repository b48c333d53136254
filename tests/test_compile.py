"""torch.compile of models holding InfiniteDepth layers and ODEBlocks: same numbers as eager.

The g-infinity layer reads ``w`` on the host to decide how many sub-layers run, so dynamo
breaks the graph there and runs that control flow in Python; everything around it is
compiled.  AOTAutograd's ``aot_eager`` backend traces forward and backward like inductor
does, without a C++ build, so these tests stay fast.
"""

from __future__ import annotations

import torch
import torch._dynamo as dynamo
from torch import nn
from torch._dynamo.utils import counters

from infdepth import InfiniteDepth, ODEBlock, grow, model_penalty
from infdepth.ode import RK4

BACKEND = "aot_eager"


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = model(x)
    penalty = model_penalty(model)
    loss = out.square().mean() + (0 if penalty is None else penalty)
    loss.backward()
    return out.detach()


def test_compiled_infinite_depth_matches_eager_across_growth() -> None:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(8, 8), nn.Tanh()), h="relu", w0=1.5,
                          w_l2=1e-3, grow_step=2, seed=0)
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 1))
    x = torch.randn(16, 4)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=BACKEND)
    graphs = []
    for w in (1.5, 1.8, 2.5, 2.7, 3.5, 4.2):  # 1.5 -> 2.5 -> 3.5 -> 4.2: growth to 4, then 6 sub-layers
        with torch.no_grad():
            layer.w.fill_(w)
        grow(model)
        ours = _step(compiled, x)
        ours_grads = _grads(model)
        eager = _step(model, x)
        torch.testing.assert_close(ours, eager, rtol=1e-6, atol=1e-6)
        eager_grads = _grads(model)
        assert ours_grads.keys() == eager_grads.keys() and "1.w" in ours_grads
        for name in eager_grads:
            torch.testing.assert_close(ours_grads[name], eager_grads[name], rtol=1e-5, atol=1e-6)
        graphs.append(counters["stats"]["unique_graphs"])
    growths = 2  # built sub-layers went 2 -> 4 -> 6
    assert graphs[-1] == graphs[0], f"growth ({growths} events) recompiled: graphs {graphs}"


def test_compiled_ode_block_matches_eager() -> None:
    torch.manual_seed(0)

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return self.net(h)

    block = ODEBlock(Field(), t1=0.7, learn_t1=True, t1_l2=0.1, solver=RK4(), step_size=0.1)
    model = nn.Sequential(nn.Linear(2, 3), block, nn.Linear(3, 1))
    x = torch.randn(8, 2)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=BACKEND)
    _step(compiled, x)
    graphs = counters["stats"]["unique_graphs"]
    for _ in range(3):  # later steps reuse the graph: nothing in the block is a changing guard
        _step(compiled, x)
    assert counters["stats"]["unique_graphs"] == graphs
    ours = _step(compiled, x)
    ours_grads = _grads(model)
    eager = _step(model, x)
    torch.testing.assert_close(ours, eager, rtol=1e-6, atol=1e-6)
    eager_grads = _grads(model)
    assert "1.t1" in eager_grads and ours_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(ours_grads[name], eager_grads[name], rtol=1e-5, atol=1e-6)


def test_compiled_ode_block_adaptive_with_the_adjoint() -> None:
    from infdepth.ode import Adjoint, Dopri5

    torch.manual_seed(1)
    field = nn.Sequential(nn.Linear(3, 3), nn.Tanh())

    class F(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = field

        def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return self.f(h)

    block = ODEBlock(F(), t1=1.0, adjoint=Adjoint(), solver=Dopri5(), rtol=1e-6, atol=1e-8)
    x = torch.randn(5, 3)
    dynamo.reset()
    ours = _step(torch.compile(block, backend=BACKEND), x)
    ours_grads = _grads(block)
    eager = _step(block, x)
    torch.testing.assert_close(ours, eager, rtol=1e-6, atol=1e-6)
    for name, g in _grads(block).items():
        torch.testing.assert_close(ours_grads[name], g, rtol=1e-5, atol=1e-6)
