"""The continuous adjoint with a step size per sample (``solve(..., adjoint=Adjoint())``).

Gradients with respect to ``y0``, the parameters of ``f`` and the output times agree with
closed forms (linear ODEs), float64 central differences and per-sample backprop at tight
tolerances; one sample equals the shared-step adjoint with the seminorm; a sample's
gradient does not depend on its batch; the combinations left out are refused.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from infdepth.errors import InputError
from infdepth.ode import (
    Adjoint,
    Backprop,
    Bosh3,
    Dopri5,
    Dopri8,
    SolverError,
    Tsit5,
    odeint,
    solve,
)
from infdepth.ode._adjoint import GradientMethod

F64 = torch.float64


class Linear(nn.Module):
    """``dy/dt = a * y`` with a learnable scalar ``a``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a * y


class PerRowRate(nn.Module):
    """``dy_b/dt = -rate_b * y_b``: per-sample data indexed by row (needs ``compact=False``)."""

    def __init__(self, rate: torch.Tensor) -> None:
        super().__init__()
        self.rate = nn.Parameter(rate)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.rate.unsqueeze(1) * y


class MLP(nn.Module):
    def __init__(self, width: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(),
                                 nn.Linear(hidden, width)).double()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class StiffVdP(nn.Module):
    """Van der Pol with its ``mu`` carried as a constant third component, a learnable
    frequency and a small MLP term (rows independent)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.0, dtype=F64))
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v, mu = y.unbind(1)
        base = torch.stack([v, mu * (1 - x * x) * v - self.w * x], 1)
        return torch.cat([base + 0.1 * self.net(y), torch.zeros_like(mu).unsqueeze(1)], 1)


def _grads(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [torch.zeros_like(q) if q.grad is None else q.grad.clone() for q in tensors]
    for q in tensors:
        q.grad = None
    return out


@pytest.mark.parametrize(("solver", "tol", "close"), [
    (Dopri5(), 1e-10, 1e-7), (Tsit5(), 1e-10, 1e-7), (Dopri8(), 1e-11, 1e-8),
    (Bosh3(), 1e-8, 1e-5)])
def test_linear_ode_gradients_match_the_closed_form(solver: object, tol: float,
                                                    close: float) -> None:
    """y_b(T_b) = y0_b exp(a (T_b - t0_b)), each sample on its own grid and start time."""
    torch.manual_seed(0)
    field = Linear(-0.7)
    y0 = torch.randn(5, 3, dtype=F64, requires_grad=True)
    t = torch.stack([torch.tensor([0.0, 0.2, -0.3, 0.1, 0.0]),
                     torch.tensor([0.5, 0.9, 0.4, 1.2, 0.3]),
                     torch.tensor([1.0, 2.5, 0.8, 1.7, 3.0])]).to(F64).requires_grad_(True)
    w = torch.randn(3, 5, 3, dtype=F64)
    sol = solve(field, y0, t, solver=solver, rtol=tol, atol=tol * 1e-2,  # type: ignore[arg-type]
                adjoint=Adjoint())
    (sol.ys * w).sum().backward()
    a = field.a.detach()
    tau = (t - t[0]).detach()  # (3, 5)
    growth = torch.exp(a * tau).unsqueeze(2)  # (3, 5, 1)
    y = y0.detach() * growth
    torch.testing.assert_close(y0.grad, (w * growth).sum(0), rtol=close, atol=close)
    torch.testing.assert_close(field.a.grad, (w * y * tau.unsqueeze(2)).sum(), rtol=close,
                               atol=close)
    t_expected = (a * w * y).sum(2)
    t_expected[0] = -t_expected[1:].sum(0)  # a later time's gain is the start's loss
    torch.testing.assert_close(t.grad, t_expected, rtol=close, atol=close)


def test_per_row_parameters_under_compact_false() -> None:
    """Rates over two decades, one per sample, indexed by row: d y_b(T)/d rate_b in closed
    form; every sample's parameter gradient is its own (the sum over samples is per entry)."""
    rate = torch.logspace(-1, 1, 8, dtype=F64)
    field = PerRowRate(rate.clone())
    y0 = torch.linspace(0.5, 2.0, 8, dtype=F64).unsqueeze(1).requires_grad_(True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)
    sol = solve(field, y0, t, rtol=1e-11, atol=1e-13, adjoint=Adjoint(), compact=False)
    sol.ys[-1].sum().backward()
    torch.testing.assert_close(field.rate.grad, -1.5 * y0.detach()[:, 0] * torch.exp(-1.5 * rate),
                               rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(y0.grad[:, 0], torch.exp(-1.5 * rate), rtol=1e-8, atol=0)


def _mlp_problem() -> tuple[MLP, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    field = MLP()
    y0 = torch.randn(6, 2, dtype=F64)
    start = torch.tensor([0.0, 0.1, -0.2, 0.0, 0.3, 0.05], dtype=F64)
    t = torch.stack([start, start + 0.4, start + torch.linspace(0.6, 1.4, 6, dtype=F64),
                     start + 2.0])
    w = torch.randn(4, 6, 2, dtype=F64)
    return field, y0, t, w


def _mlp_loss(field: MLP, y0: torch.Tensor, t: torch.Tensor, w: torch.Tensor,
              method: GradientMethod, tol: float = 1e-11) -> torch.Tensor:
    sol = solve(field, y0, t, rtol=tol, atol=tol * 1e-2, adjoint=method, dense=False)
    return (sol.ys * w).sum() + sol.event_y.square().sum()


def test_mlp_gradients_match_backprop_and_central_differences() -> None:
    field, y0, t, w = _mlp_problem()
    y0.requires_grad_(True)
    t.requires_grad_(True)
    tensors = [y0, t, *field.parameters()]
    grads = {}
    for method in (Backprop(), Adjoint()):
        _mlp_loss(field, y0, t, w, method).backward()
        grads[type(method).__name__] = _grads(tensors)
    for adj, bp in zip(grads["Adjoint"], grads["Backprop"], strict=True):
        torch.testing.assert_close(adj, bp, rtol=1e-7, atol=1e-8)
    # float64 central differences of the forward solve, y0 and the first layer's weight
    eps = 1e-6
    weight = field.net[0].weight
    with torch.no_grad():
        for target, grad in ((y0, grads["Adjoint"][0]), (weight, grads["Adjoint"][2])):
            flat = target.view(-1)
            for j in range(0, flat.numel(), 3):
                keep = float(flat[j])
                flat[j] = keep + eps
                up = _mlp_loss(field, y0, t, w, Backprop(), 1e-12)
                flat[j] = keep - eps
                down = _mlp_loss(field, y0, t, w, Backprop(), 1e-12)
                flat[j] = keep
                fd = (up - down) / (2 * eps)
                assert abs(float(grad.view(-1)[j]) - float(fd)) < 1e-6 * (1 + abs(float(fd)))


def test_one_sample_equals_the_shared_adjoint_with_the_seminorm() -> None:
    """Alone, a sample's error norm is the shared seminorm's (max RMS of y and dL/dy) and its
    steps the shared loop's: the same gradients to rounding."""
    torch.manual_seed(2)
    field = MLP(3)
    y0 = torch.randn(1, 3, dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.3, 2.0], dtype=F64, requires_grad=True)
    tensors = [y0, t, *field.parameters()]
    out = []
    for per_sample in (True, False):
        ys = odeint(field, y0, t, rtol=1e-6, atol=1e-8, per_sample_steps=per_sample,
                    adjoint=Adjoint(seminorm=True, rtol=1e-7, atol=1e-9))
        ys.square().sum().backward()
        out.append(_grads(tensors))
    for ps, shared in zip(*out, strict=True):
        torch.testing.assert_close(ps, shared, rtol=1e-10, atol=1e-12)


def test_a_samples_gradient_does_not_depend_on_its_batch() -> None:
    """64 Van der Pol samples, mu over [0.5, 10] (step counts differ tenfold): a sample's
    y0-gradient alone equals its gradient in the batch; the batch's parameter gradient is
    the sum of the samples' alone."""
    torch.manual_seed(3)
    field = StiffVdP()
    batch = 64
    mu = torch.logspace(math.log10(0.5), 1.0, batch, dtype=F64)
    y0 = torch.cat([torch.randn(batch, 2, dtype=F64), mu.unsqueeze(1)], 1)
    t = torch.linspace(0, 1, 5, dtype=F64)
    weights = torch.zeros(batch, dtype=F64)
    chosen = [0, 21, 42, 63]
    weights[chosen] = torch.tensor([1.0, -0.5, 2.0, 0.7], dtype=F64)
    params = list(field.parameters())

    def grads(rows: list[int], only: list[int] | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = y0[rows].clone().requires_grad_(True)
        sol = solve(field, y, t, rtol=1e-9, atol=1e-11, adjoint=Adjoint())
        wr = torch.ones(len(rows), dtype=F64) if only is None else weights[rows]
        (sol.ys[..., :2].square().sum((0, 2)) * wr).sum().backward()
        assert y.grad is not None
        return y.grad, _grads(params)

    g_all, _ = grads(list(range(batch)), None)
    _, p_chosen = grads(list(range(batch)), chosen)
    p_alone = [torch.zeros_like(q) for q in params]
    for b in chosen:
        g_b, p_b = grads([b], None)
        torch.testing.assert_close(g_b[0], g_all[b], rtol=1e-10, atol=1e-10)
        p_alone = [acc + float(weights[b]) * q for acc, q in zip(p_alone, p_b, strict=True)]
    for q_batch, q_alone in zip(p_chosen, p_alone, strict=True):
        torch.testing.assert_close(q_batch, q_alone, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("compact", [True, False])
def test_a_failed_sample_keeps_the_gradient_of_what_it_reached(compact: bool) -> None:
    """throw=False: sample 0 blows up at t = 0.5; the others' gradients are unaffected, its
    own comes from the outputs it reached, as with backprop."""

    def blowup(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, k = y.unbind(1)
        return torch.stack([k * x * x - (1 - k) * x, torch.zeros_like(k)], 1)

    y0 = torch.tensor([[2.0, 1.0], [1.0, 0.0], [0.5, 0.0]], dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=F64)
    out = []
    for method in (Backprop(), Adjoint()):
        sol = solve(blowup, y0, t, rtol=1e-10, atol=1e-12, throw=False, max_steps=300,
                    compact=compact, adjoint=method)
        assert int(sol.status[0]) != 0 and sol.status[1:].tolist() == [0, 0]
        reached = torch.isfinite(sol.ys)
        torch.where(reached, sol.ys, 0.0).square().sum().backward()
        out.append(_grads([y0])[0])
    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1], out[0], rtol=1e-7, atol=1e-9)


def test_output_times_and_odeint_route() -> None:
    """odeint(per_sample_steps=True, adjoint=Adjoint()) is solve's adjoint; shared (T,) times
    get the sum over samples of dL/dy . f."""
    field, y0, _, _ = _mlp_problem()
    t = torch.tensor([0.0, 0.8, 1.5], dtype=F64, requires_grad=True)
    ys = odeint(field, y0, t, rtol=1e-10, atol=1e-12, per_sample_steps=True, adjoint=Adjoint())
    ys.sum().backward()
    assert t.grad is not None
    with torch.no_grad():
        expected = torch.stack([field(t[i], ys[i]).sum() for i in range(3)])
    torch.testing.assert_close(t.grad[1:], expected[1:], rtol=1e-12, atol=1e-12)
    # the start time's gradient involves the adjoint at t0: against backprop's
    t2 = t.detach().clone().requires_grad_(True)
    odeint(field, y0, t2, rtol=1e-10, atol=1e-12, per_sample_steps=True).sum().backward()
    assert t2.grad is not None
    torch.testing.assert_close(t.grad, t2.grad, rtol=1e-6, atol=1e-8)


def test_backward_counts_its_calls_and_uses_the_adjoints_tolerances() -> None:
    field, y0, t, _ = _mlp_problem()
    y0.requires_grad_(True)
    ref = None
    nfes = []
    for tol in (1e-11, 1e-4):
        sol = solve(field, y0, t, rtol=1e-11, atol=1e-13, adjoint=Adjoint(rtol=tol, atol=tol))
        assert sol.backward_nfe == 0
        sol.ys.sum().backward()
        nfes.append(sol.backward_nfe)
        g = _grads([y0])[0]
        if ref is None:
            ref = g
        else:
            err = float((g - ref).abs().max())
            assert 1e-9 < err < 1e-2  # looser tolerances, larger error
    assert nfes[1] < nfes[0] / 3


def test_float32_runs_close_to_float64() -> None:
    field, y0, t, w = _mlp_problem()
    y32 = y0.float().requires_grad_(True)
    field32 = MLP()
    field32.load_state_dict(field.state_dict())
    field32.float()
    sol = solve(field32, y32, t.float(), rtol=1e-5, atol=1e-6, adjoint=Adjoint())
    (sol.ys * w.float()).sum().backward()
    y64 = y0.clone().requires_grad_(True)
    (solve(field, y64, t, rtol=1e-10, atol=1e-12, adjoint=Adjoint()).ys * w).sum().backward()
    assert y32.grad is not None and y64.grad is not None
    torch.testing.assert_close(y32.grad.double(), y64.grad, rtol=1e-3, atol=1e-4)


def test_backward_failure_raises_naming_the_adjoint() -> None:
    field, y0, _, _ = _mlp_problem()
    y0.requires_grad_(True)
    t = torch.tensor([0.0, 4.0], dtype=F64)
    sol = solve(field, y0, t, rtol=1e-3, atol=1e-5, max_steps=20,
                adjoint=Adjoint(rtol=1e-13, atol=1e-15))
    assert int(sol.stats.n_accepted.max()) < 20
    with pytest.raises(SolverError, match="adjoint's backward solve failed.*max_steps"):
        sol.ys.sum().backward()


def test_hidden_parameters_are_refused() -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(InputError, match="cannot see"):
        solve(lambda t, y: net(y), torch.ones(3, 2), torch.tensor([0.0, 1.0]),
              adjoint=Adjoint())
    y0 = torch.ones(3, 2, requires_grad=True)
    sol = solve(lambda t, y: net(y), y0, torch.tensor([0.0, 1.0]),
                adjoint=Adjoint(params=list(net.parameters())))
    sol.ys.sum().backward()
    assert net.weight.grad is not None and y0.grad is not None


def test_memory_does_not_grow_with_the_steps() -> None:
    """What autograd keeps for backward: the outputs and the parameters, whatever the
    number of steps (backprop keeps every step's activations)."""
    field, y0, t, _ = _mlp_problem()
    y0.requires_grad_(True)

    def saved_bytes(method: GradientMethod, tol: float) -> int:
        total = 0

        def pack(x: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += x.numel() * x.element_size()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            solve(field, y0, t, rtol=tol, atol=tol * 1e-2, adjoint=method, dense=False)
        return total

    loose, tight = saved_bytes(Adjoint(), 1e-4), saved_bytes(Adjoint(), 1e-10)
    assert loose == tight
    assert saved_bytes(Backprop(), 1e-10) > 10 * tight


@pytest.mark.parametrize("shape", [(4,), (4, 2, 3)])
def test_backwards_in_time_and_other_state_shapes(shape: tuple[int, ...]) -> None:
    """Decreasing per-sample times and states of shape (batch,) or (batch, 2, 3): the
    closed form of dy/dt = a y still holds."""
    torch.manual_seed(4)
    field = Linear(0.4)
    y0 = torch.randn(*shape, dtype=F64, requires_grad=True)
    t = torch.stack([torch.full((4,), 1.0), torch.tensor([0.5, 0.2, 0.7, -0.3]),
                     torch.tensor([-0.5, -0.1, 0.0, -1.2])]).to(F64)
    sol = solve(field, y0, t, rtol=1e-11, atol=1e-13, adjoint=Adjoint())
    sol.ys[-1].sum().backward()
    tau = (t[-1] - t[0]).view(-1, *([1] * (len(shape) - 1)))
    torch.testing.assert_close(y0.grad, torch.exp(0.4 * tau).expand(shape), rtol=1e-8, atol=0)
    expected = (y0.detach() * tau * torch.exp(0.4 * tau)).sum()
    torch.testing.assert_close(field.a.grad, expected, rtol=1e-8, atol=1e-12)
