"""The fused fast path (host-side gates, hand-written backward) against plain autograd."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from infdepth.depth import ExpGate, InfiniteDepth, StretchedGate
from infdepth.depth.fused import GatedPenalty, GatedResidual, host_gate


class PlainExpGate(ExpGate):
    """The same gate, forced onto the generic autograd path."""

    @property
    def fixed_alpha(self) -> None:
        return None


class PlainStretchedGate(StretchedGate):
    @property
    def fixed_alpha(self) -> None:
        return None


def block(i: int) -> nn.Module:
    return nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))


def grads(layer: InfiniteDepth, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    layer.zero_grad()
    out = layer(x)
    loss = out.sin().sum() + layer.penalty()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("fast", "plain"),
    [(ExpGate, PlainExpGate), (lambda: StretchedGate(2.5), lambda: PlainStretchedGate(2.5))],
)
@given(w=st.floats(0.05, 9.5), h=st.sampled_from(["relu", "identity"]))
def test_fast_path_matches_autograd(fast, plain, w: float, h: str) -> None:
    kw = dict(h=h, w0=w, w_l2=0.3, block_l2=0.7, seed=1)
    a = InfiniteDepth(block, gate=fast(), **kw).double()
    b = InfiniteDepth(block, gate=plain(), **kw).double()
    assert a.gate.fixed_alpha is not None and b.gate.fixed_alpha is None
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out_a, g_a = grads(a, x)
    out_b, g_b = grads(b, x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    assert g_a.keys() == g_b.keys() and "w" in g_a
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(a.penalty(), b.penalty(), rtol=1e-10, atol=1e-14)


def test_gradcheck_gated_residual() -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    fx = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)

    def f(x, fx, w):
        d, dd = host_gate(1.0, float(w.detach()), 1.0)
        return GatedResidual.apply(x, fx, w, d, dd)

    # w enters through the host-side delta too: check the analytic w-gradient separately
    assert torch.autograd.gradcheck(lambda x, fx: f(x, fx, w), (x, fx))
    out = f(x, fx, w).sum()
    (gw,) = torch.autograd.grad(out, w)
    eps = 1e-6
    num = (f(x, fx, w + eps).sum() - f(x, fx, w - eps).sum()) / (2 * eps)
    assert torch.allclose(gw, num, rtol=1e-6)


def test_gradcheck_gated_penalty() -> None:
    t0 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    t1 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(1.6, dtype=torch.float64, requires_grad=True)

    def f(w, t0, t1):
        pairs = [host_gate(i + 1e-8, float(w.detach()), 1.0) for i in range(2)]
        return GatedPenalty.apply(w, [p[0] for p in pairs], [p[1] for p in pairs], 0.4, 0.9, t0, t1)

    assert torch.autograd.gradcheck(lambda t0, t1: f(w, t0, t1), (t0, t1))
    (gw,) = torch.autograd.grad(f(w, t0, t1), w)
    eps = 1e-6
    num = (f(w + eps, t0, t1) - f(w - eps, t0, t1)) / (2 * eps)
    assert torch.allclose(gw, num, rtol=1e-6)
