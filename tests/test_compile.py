"""torch.compile of models holding InfiniteDepth layers and ODEBlocks: same numbers as eager.

The g-infinity layer reads ``w`` on the host to decide how many sub-layers run: that read
is the one graph break (it runs eagerly and hands the graph the active depth, an integer
dynamo guards on); the sub-layers and the gates, computed from the ``w`` tensor, are
compiled, and a graph is compiled once per depth.  AOTAutograd's ``aot_eager`` backend
traces forward and backward like inductor does, without a C++ build, so these tests stay
fast.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn
from torch._dynamo.utils import counters

from infdepth import InfiniteDepth, ODEBlock, attach, model_penalty
from infdepth.depth import CompiledDepth
from infdepth.ode import RK4
from infdepth.train import WithPenalty

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


def _read_breaks_only() -> bool:
    """Whether every graph break dynamo recorded is the layer's one host read of ``w``."""
    return all("enter_compiled" in reason for reason in counters["graph_break"])


def test_compiled_infinite_depth_recompiles_only_when_the_depth_changes() -> None:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(8, 8), nn.Tanh()), h="relu", w0=1.5,
                          w_l2=1e-3, block_l2=1e-3, grow_step=2, seed=0)
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    attach(model, optimizer)  # sub-layers built in a forward join it (and it warns of none)
    x = torch.randn(16, 4)
    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=BACKEND)
    # depths 2, 2, 3, 3, 4, 2, 5, 3: the forward grows 2 -> 4 -> 6 built sub-layers; depths
    # 2 and 3 come back after growths and must reuse their graphs
    ws = (1.5, 1.8, 2.5, 2.7, 3.5, 1.2, 4.2, 2.2)
    graphs = []
    for w in ws:
        with torch.no_grad():
            layer.w.fill_(w)
        ours = _step(compiled, x)
        ours_grads = _grads(model)
        eager = _step(model, x)
        torch.testing.assert_close(ours, eager, rtol=1e-6, atol=1e-6)
        eager_grads = _grads(model)
        assert ours_grads.keys() == eager_grads.keys() and "1.w" in ours_grads
        for name in eager_grads:
            torch.testing.assert_close(ours_grads[name], eager_grads[name], rtol=1e-5, atol=1e-6)
        graphs.append(counters["stats"]["unique_graphs"])
    new_depths = len({math.ceil(w) for w in ws}) - 1  # depths never seen before, after the first
    recompiles = graphs[-1] - graphs[0]
    assert layer.built_blocks == 6
    assert recompiles <= new_depths, f"graphs {graphs} for depths {[math.ceil(w) for w in ws]}"
    assert graphs[1] == graphs[0] and graphs[3] == graphs[2], "a change of w within a depth recompiled"
    assert _read_breaks_only(), dict(counters["graph_break"])

    # fit's step on the compiled model: one read of w, the penalty produced with it
    reads = []
    read = InfiniteDepth.depth.fget
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InfiniteDepth, "depth", property(lambda self: reads.append(1) or read(self)))
        out, penalty = WithPenalty(compiled)(x)
    assert len(reads) == 1
    torch.testing.assert_close(penalty, layer.penalty(), rtol=0, atol=0)


def test_compiled_depth_makes_no_graph_break_and_one_graph_per_depth() -> None:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(8, 8), nn.Tanh()), h="relu", w0=1.5,
                          w_l2=1e-3, block_l2=1e-3, grow_step=2, seed=0)
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    attach(model, optimizer)
    x = torch.randn(16, 4)
    dynamo.reset()
    counters.clear()
    net = WithPenalty(CompiledDepth(model, backend=BACKEND, fullgraph=True))  # fullgraph: no break
    ws = (1.5, 1.8, 2.5, 3.5, 1.2, 2.2)  # depths 2, 2, 3, 4, 2, 3: two growths, two returns
    graphs, reads = [], []
    read = InfiniteDepth.depth.fget
    for w in ws:
        with torch.no_grad():
            layer.w.fill_(w)
        model.zero_grad(set_to_none=True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(InfiniteDepth, "depth", property(lambda self, w=w: reads.append(w) or read(self)))
            out, penalty = net(x)
        (out.square().mean() + penalty).backward()
        ours_grads = _grads(model)
        eager = _step(model, x)
        torch.testing.assert_close(out.detach(), eager, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(penalty, layer.penalty(), rtol=0, atol=0)
        eager_grads = _grads(model)
        assert ours_grads.keys() == eager_grads.keys() and "1.w" in ours_grads
        for name in eager_grads:
            torch.testing.assert_close(ours_grads[name], eager_grads[name], rtol=1e-5, atol=1e-6)
        graphs.append(counters["stats"]["unique_graphs"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert reads == list(ws), "one read of w per call"
    assert graphs[-1] - graphs[0] <= 2 and graphs[1] == graphs[0], graphs  # new depths: 3 and 4


class _TanhField(nn.Module):
    """``dh/dt = net(h)``: a small tanh MLP of ``width`` features, ``hidden`` units."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, width))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def test_compiled_ode_block_matches_eager() -> None:
    torch.manual_seed(0)

    block = ODEBlock(_TanhField(3, 16), t1=0.7, learn_t1=True, t1_l2=0.1, solver=RK4(), step_size=0.1)
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


@pytest.mark.parametrize("learn_t1", [False, True])
def test_a_fixed_step_ode_block_breaks_the_graph_only_to_read_its_times(learn_t1: bool) -> None:
    block = ODEBlock(_TanhField(2, 8), t1=1.5, learn_t1=learn_t1, solver=RK4(), step_size=0.05)
    dynamo.reset()
    explained = dynamo.explain(block)(torch.randn(16, 2))
    # the one host read of the time grid (t1's value decides the number of steps), seen from
    # each frame it passes through; the 30 steps and their stages are traced, not broken up
    assert explained.break_reasons, "the host read of the times is a graph break"
    for reason in explained.break_reasons:
        assert reason.user_stack[-1].name == "_output_grid", reason.reason
    assert explained.graph_count <= 4
    assert explained.op_count >= 30 * 4  # four stages a step, each at least one operation


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
