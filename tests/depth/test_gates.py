import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from infdepth.depth.gates import ExpGate, StretchedGate, make_gate

finite = st.floats(-20, 20, allow_nan=False)
alphas = st.floats(0.05, 20, allow_nan=False)


def _gate(alpha: float | None):
    return ExpGate() if alpha is None else StretchedGate(alpha)


@given(x=finite, w=finite, alpha=st.none() | alphas)
def test_gate_is_zero_from_w_on_and_below_one(x: float, w: float, alpha: float | None) -> None:
    g = _gate(alpha)(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64))
    assert 0.0 <= g.item() < 1.0 or math.isclose(g.item(), 1.0)
    if x >= w:
        assert g.item() == 0.0
    else:
        assert g.item() > 0.0 or (w - x) * (alpha or 1.0) < 1e-15


@given(a=finite, b=finite, w=finite, alpha=st.none() | alphas)
def test_gate_non_increasing_in_x(a: float, b: float, w: float, alpha) -> None:
    lo, hi = sorted((a, b))
    gate = _gate(alpha)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert gate(t(lo), t(w)) >= gate(t(hi), t(w))


@given(x=finite, a=finite, b=finite, alpha=st.none() | alphas)
def test_gate_non_decreasing_in_w(x: float, a: float, b: float, alpha) -> None:
    """A deeper layer switches every sub-layer on at least as much: delta_w1(x) <= delta_w2(x), w1 <= w2."""
    w1, w2 = sorted((a, b))
    gate = _gate(alpha)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert gate(t(x), t(w1)) <= gate(t(x), t(w2))
    k = alpha or 1.0
    if x < w1 < w2 and math.exp(k * (x - w1)) - math.exp(k * (x - w2)) > 1e-12:
        assert gate(t(x), t(w1)) < gate(t(x), t(w2))  # strictly, where the gate is not saturated


@given(x=finite, w=finite)
def test_exp_gate_matches_paper_formula(x: float, w: float) -> None:
    got = ExpGate()(torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64)).item()
    assert math.isclose(got, max(0.0, 1.0 - math.exp(x - w)), rel_tol=1e-12, abs_tol=1e-12)


@given(x=finite, w=finite)
def test_stretched_gate_with_alpha_one_is_exp_gate(x: float, w: float) -> None:
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    a = StretchedGate(1.0).double()(t(x), t(w))
    b = ExpGate()(t(x), t(w))
    assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_gradient_with_respect_to_w_flows_through_active_gates() -> None:
    w = torch.tensor(2.5, requires_grad=True)
    x = torch.arange(4.0)
    ExpGate()(x, w).sum().backward()
    expected = sum(math.exp(i - 2.5) for i in range(3))  # d/dw (1 - e^{i-w}) for i < w
    assert w.grad is not None and math.isclose(w.grad.item(), expected, rel_tol=1e-6)


def test_trainable_alpha_gets_a_gradient_and_stays_positive() -> None:
    gate = StretchedGate(2.0, trainable=True)
    out = gate(torch.tensor([0.0, 1.0]), torch.tensor(1.5)).sum()
    out.backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs() > 0
    assert math.isclose(gate.alpha.item(), 2.0, rel_tol=1e-6)


def test_unknown_gate_names_accepted_values() -> None:
    import pytest

    with pytest.raises(ValueError, match="'exp', 'stretched'"):
        make_gate("sigmoid")
    with pytest.raises(ValueError, match="alpha"):
        StretchedGate(-1.0)
