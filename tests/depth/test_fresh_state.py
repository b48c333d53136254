"""The layer computes from ``w`` as it is now, whoever changed it.

Every ``torch.optim`` optimizer in each implementation torch offers on this device
(for-loop, ``foreach=True``, ``fused=True``) and every in-place way of writing a
parameter must leave ``layer.depth``, ``active_blocks``, the output, the gates
and the penalty in agreement with the paper's recursion evaluated at the
parameter's current value.  A cached copy of ``w`` (the bug behind a README job
that stopped learning its depth) fails these tests.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from infdepth.depth import ExpGate, InfiniteDepth, StretchedGate, UnregisteredGrowthWarning
from infdepth.depth.layer import PENALTY_EPS

W0 = 1.3
W_L2 = 0.05
BLOCK_L2 = 0.02

# every optimizer of torch.optim that takes a plain list of dense parameters
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "SGD": lambda p, **kw: torch.optim.SGD(p, lr=0.05, momentum=0.9, **kw),
    "Adam": lambda p, **kw: torch.optim.Adam(p, lr=0.05, **kw),
    "AdamW": lambda p, **kw: torch.optim.AdamW(p, lr=0.05, **kw),
    "Adagrad": lambda p, **kw: torch.optim.Adagrad(p, lr=0.2, **kw),
    "Adadelta": lambda p, **kw: torch.optim.Adadelta(p, lr=20.0, **kw),
    "Adamax": lambda p, **kw: torch.optim.Adamax(p, lr=0.05, **kw),
    "NAdam": lambda p, **kw: torch.optim.NAdam(p, lr=0.05, **kw),
    "RAdam": lambda p, **kw: torch.optim.RAdam(p, lr=0.05, **kw),
    "RMSprop": lambda p, **kw: torch.optim.RMSprop(p, lr=0.02, **kw),
    "Rprop": lambda p, **kw: torch.optim.Rprop(p, lr=0.05, **kw),
    "ASGD": lambda p, **kw: torch.optim.ASGD(p, lr=0.2, t0=1.0, **kw),
}
if hasattr(torch.optim, "Adafactor"):
    OPTIMIZERS["Adafactor"] = lambda p, **kw: torch.optim.Adafactor(p, lr=0.05, **kw)


def _variants() -> list[tuple[str, str]]:
    """(optimizer, implementation) pairs that torch offers on the CPU."""
    out = []
    probe = [nn.Parameter(torch.zeros(2))]
    for name, make in OPTIMIZERS.items():
        out.append((name, "default"))
        params = inspect.signature(getattr(torch.optim, name)).parameters
        for impl in ("foreach", "fused"):
            if impl not in params:
                continue
            try:
                make(probe, **{impl: True}).step()
            except (RuntimeError, ValueError, TypeError):
                continue  # not offered on this device: nothing to test
            out.append((name, impl))
    return out


VARIANTS = _variants()


def test_every_fused_optimizer_torch_offers_on_cpu_is_covered() -> None:
    fused = {name for name, impl in VARIANTS if impl == "fused"}
    assert {"Adam", "AdamW", "SGD", "Adagrad"} <= fused  # torch 2.13 offers these on the CPU


PATHS = {
    # the fused fast path: a fixed-alpha gate with the residual merge
    "fast": dict(gate="exp", merge="residual"),
    # the plain autograd path: a convex merge, or a gate with a trainable alpha
    "plain-convex": dict(gate="exp", merge="convex"),
    "plain-alpha": dict(gate=StretchedGate(1.7, trainable=True), merge="residual"),
}


def make_layer(path: str, w0: float = W0) -> InfiniteDepth:
    kw = dict(PATHS[path])
    if isinstance(kw["gate"], nn.Module):
        kw["gate"] = copy.deepcopy(kw["gate"])
    return InfiniteDepth(
        lambda i: nn.Sequential(nn.Linear(6, 6), nn.Tanh()),
        h="relu",
        w0=w0,
        w_l2=W_L2,
        block_l2=BLOCK_L2,
        grow_step=2,
        seed=4,
        **kw,
    )


def alpha_of(layer: InfiniteDepth) -> float:
    gate = layer.gate
    return float(gate.alpha.detach()) if isinstance(gate, StretchedGate) else 1.0


def delta(x: float, w: float, alpha: float) -> float:
    return max(0.0, 1.0 - math.exp(alpha * (x - w)))


def explicit_forward(layer: InfiniteDepth, x: torch.Tensor) -> torch.Tensor:
    """``g_{i+1} = h(merge(g_i, f_i(g_i), delta_w(i)))`` from the parameter's current value."""
    w, alpha = layer.w.item(), alpha_of(layer)
    g = x
    for i in range(max(0, math.ceil(w))):
        d = delta(i, w, alpha)
        f = layer.blocks[i](g)
        g = torch.relu(g + d * f if layer.merge_name == "residual" else (1 - d) * g + d * f)
    return torch.relu(g)  # g_inf = h(g_ceil(w)); h is idempotent


def explicit_penalty(layer: InfiniteDepth) -> float:
    w, alpha = layer.w.item(), alpha_of(layer)
    total = W_L2 * w * w
    for i in range(max(0, math.ceil(w))):
        weight = layer.blocks[i][0].weight
        total += BLOCK_L2 * delta(i + PENALTY_EPS, w, alpha) * float(weight.detach().square().sum())
    return total


@contextlib.contextmanager
def growth_without_optimizer(layer: InfiniteDepth) -> Iterator[None]:
    """These layers have no optimizer: a call that builds sub-layers may warn (once per layer,
    so not on every growth), and a call that builds none must not."""
    before = layer.built_blocks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnregisteredGrowthWarning)
        yield
    said = [w for w in caught if issubclass(w.category, UnregisteredGrowthWarning)]
    assert len(said) <= (1 if layer.built_blocks > before else 0), [str(w.message) for w in said]
    for w in caught:  # anything else goes on to the test's own filters
        if w not in said:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def assert_reflects_w(layer: InfiniteDepth) -> None:
    w = layer.w.item()
    assert layer.depth == w
    assert layer.active_blocks == max(0, math.ceil(w))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(9), dtype=layer.w.dtype)
    with torch.no_grad():
        with growth_without_optimizer(layer):
            out = layer(x)
        assert layer.built_blocks >= layer.active_blocks
        torch.testing.assert_close(out, explicit_forward(layer, x), rtol=1e-5, atol=1e-6)
        gates = layer.gates()
        expected = [delta(i, w, alpha_of(layer)) for i in range(layer.active_blocks)]
        torch.testing.assert_close(
            gates,
            torch.tensor(expected, dtype=gates.dtype),
            rtol=1e-5,
            atol=1e-7,
        )
        assert layer.penalty().item() == pytest.approx(explicit_penalty(layer), rel=1e-5, abs=1e-8)


def train(layer: InfiniteDepth, optimizer: torch.optim.Optimizer, steps: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        loss = (layer(x) - 0.7 * x.roll(1, dims=1)).square().mean() + layer.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("opt", "impl"), VARIANTS, ids=[f"{o}-{i}" for o, i in VARIANTS])
def test_depth_follows_every_optimizer(opt: str, impl: str, path: str) -> None:
    layer = make_layer(path)
    layer.grow(6)  # every sub-layer w may reach is in the optimizer from the start
    kw = {} if impl == "default" else {impl: True}
    optimizer = OPTIMIZERS[opt](list(layer.parameters()), **kw)
    assert_reflects_w(layer)  # read w (and any cache of it) before the steps
    train(layer, optimizer, 12)
    assert abs(layer.w.item() - W0) > 1e-3, "the optimizer must have moved w"
    assert_reflects_w(layer)


def _fill(layer: InfiniteDepth, value: float) -> None:
    with torch.no_grad():
        layer.w.fill_(value)


def _copy(layer: InfiniteDepth, value: float) -> None:
    with torch.no_grad():
        layer.w.copy_(torch.tensor(value))


def _data_fill(layer: InfiniteDepth, value: float) -> None:
    layer.w.data.fill_(value)


def _data_copy(layer: InfiniteDepth, value: float) -> None:
    layer.w.data.copy_(torch.tensor(value))


def _data_assign(layer: InfiniteDepth, value: float) -> None:
    layer.w.data = torch.tensor(value)


def _load_state_dict(layer: InfiniteDepth, value: float) -> None:
    other = copy.deepcopy(layer)
    other.w.data.fill_(value)
    layer.load_state_dict(other.state_dict())


WRITES = {
    "no_grad-fill_": _fill,
    "no_grad-copy_": _copy,
    "data-fill_": _data_fill,
    "data-copy_": _data_copy,
    "data-assign": _data_assign,
    "load_state_dict": _load_state_dict,
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize("value", [3.4, 0.6, -0.5, 7.2])
def test_depth_follows_in_place_writes(write: str, path: str, value: float) -> None:
    layer = make_layer(path)
    assert_reflects_w(layer)
    WRITES[write](layer, value)
    assert layer.w.item() == pytest.approx(value)
    assert_reflects_w(layer)  # 7.2 also checks that forward builds the missing sub-layers


@pytest.mark.parametrize("path", PATHS)
def test_deepcopy_and_dtype_changes_keep_their_own_w(path: str) -> None:
    layer = make_layer(path)
    assert_reflects_w(layer)
    twin = copy.deepcopy(layer)
    twin.w.data.fill_(4.5)
    assert_reflects_w(twin)
    assert_reflects_w(layer)  # the original is untouched by its copy
    assert layer.depth == pytest.approx(W0)
    wide = layer.to(torch.float64)
    assert wide.w.dtype == torch.float64
    wide.w.data.fill_(2.25)
    assert_reflects_w(wide)


@pytest.mark.parametrize("path", PATHS)
def test_penalty_acts_on_the_tensors_in_the_model_now(path: str) -> None:
    """After prune + grow, deepcopy or a replaced sub-layer, the penalty uses the live tensors."""
    layer = make_layer(path, w0=3.5)
    layer.grow(6)
    assert_reflects_w(layer)
    layer.w.data.fill_(1.5)
    assert layer.prune() == 4
    layer.w.data.fill_(3.5)
    layer.grow()  # new sub-layers at indices 2, 3 (fresh tensors)
    assert_reflects_w(layer)
    grads = torch.autograd.grad(layer.penalty(), [b[0].weight for b in layer.blocks[:4]])
    for i, g in enumerate(grads):
        expected = 2 * BLOCK_L2 * delta(i + PENALTY_EPS, 3.5, alpha_of(layer)) * layer.blocks[i][0].weight
        torch.testing.assert_close(g, expected.detach())
    layer.blocks[1] = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    assert_reflects_w(layer)
    twin = copy.deepcopy(layer)
    (g_twin,) = torch.autograd.grad(twin.penalty(), [twin.blocks[0][0].weight])
    assert g_twin.abs().sum() > 0  # the copy's penalty reaches the copy's tensors


def test_penalty_alone_builds_missing_sub_layers() -> None:
    """``penalty()`` before any forward after ``w`` moved past the built sub-layers (fast path)."""
    layer = make_layer("fast")
    assert layer.built_blocks == 2
    layer.w.data.fill_(4.4)
    with pytest.warns(UnregisteredGrowthWarning, match="built sub-layers 2..5"):
        penalty = layer.penalty().item()
    assert penalty == pytest.approx(explicit_penalty(layer), rel=1e-6)
    assert layer.built_blocks == 6


class _PlainExpGate(ExpGate):
    """The paper's gate forced onto the plain autograd path."""

    @property
    def fixed_alpha(self) -> None:
        return None


@pytest.mark.parametrize("impl", ["default", "fused"])
def test_fast_and_plain_paths_agree_after_training(impl: str) -> None:
    """Values and every gradient of the fused fast path equal plain autograd on a trained layer."""
    fast = make_layer("fast")
    fast.grow(6)
    kw = {} if impl == "default" else {impl: True}
    train(fast, torch.optim.Adam(fast.parameters(), lr=0.05, **kw), 15)
    assert abs(fast.w.item() - W0) > 1e-3
    plain = make_layer("fast")
    plain.gate = _PlainExpGate()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    grads = []
    for layer in (fast, plain):
        layer.zero_grad()
        out = layer(x)
        (out.sin().sum() + layer.penalty()).backward()
        named = layer.named_parameters()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in named if p.grad is not None}))
    (out_f, g_f), (out_p, g_p) = grads
    torch.testing.assert_close(out_f, out_p)
    assert g_f.keys() == g_p.keys() and "w" in g_f
    for name in g_f:
        torch.testing.assert_close(g_f[name], g_p[name], rtol=1e-4, atol=1e-6)
