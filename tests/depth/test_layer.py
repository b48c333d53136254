import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from infdepth.depth import InfiniteDepth, UnregisteredGrowthWarning, total_penalty
from infdepth.depth.merges import MERGES


class Counting(nn.Module):
    """A linear sub-layer that counts its calls."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x)


def make_layer(w0: float, merge: str = "residual", h: str = "relu", **kw) -> InfiniteDepth:
    return InfiniteDepth(lambda i: Counting(6), h=h, w0=w0, merge=merge, seed=3, **kw).double()


def explicit(layer: InfiniteDepth, x: torch.Tensor) -> torch.Tensor:
    """The paper's recursion written out by hand."""
    h = torch.relu if isinstance(layer.h, nn.ReLU) else (lambda v: v)
    w = layer.w.item()
    n = max(0, math.ceil(w))
    g = x
    for i in range(n):
        d = max(0.0, 1.0 - math.exp(i - w))
        f = layer.blocks[i](g)
        if layer.merge_name == "residual":
            g = h(g + f * d)
        elif layer.merge_name == "convex":
            g = h(g * (1 - d) + f * d)
        else:
            g = h(g * torch.sqrt(f**2 + 1e-8) ** d)
    return h(g)


@pytest.mark.parametrize("merge", MERGES)
@given(w=st.floats(-1.5, 7.5, allow_nan=False), h=st.sampled_from(["relu", "identity"]))
def test_forward_equals_explicit_recursion(merge: str, w: float, h: str) -> None:
    layer = make_layer(w, merge, h)
    layer.grow(8)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), explicit(layer, x), rtol=1e-10, atol=1e-12)


@given(w=st.floats(-3, 12, allow_nan=False))
def test_only_ceil_w_blocks_run(w: float) -> None:
    layer = make_layer(w)
    layer(torch.randn(4, 6, dtype=torch.float64))
    calls = [b.calls for b in layer.blocks]
    n = max(0, math.ceil(layer.w.item()))
    assert calls[:n] == [1] * n and sum(calls) == n
    assert layer.active_blocks == n
    assert layer.built_blocks == math.ceil(n / 5) * 5


def test_non_positive_w_gives_h_of_x() -> None:
    layer = make_layer(-0.3)
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), torch.relu(x))
    assert layer.built_blocks == 0 and layer.used_parameters == 1


def test_unused_blocks_get_no_gradient_and_no_penalty() -> None:
    layer = make_layer(2.4, w_l2=1e-2, block_l2=1e-1)
    layer.grow(10)
    loss = layer(torch.randn(8, 6, dtype=torch.float64)).square().sum() + layer.penalty()
    loss.backward()
    for i, block in enumerate(layer.blocks):
        for p in block.parameters():
            if i < 3:
                assert p.grad is not None and p.grad.abs().sum() > 0
            else:
                assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert layer.w.grad is not None and layer.w.grad != 0
    # the penalty does not change when unused blocks change
    before = layer.penalty().item()
    with torch.no_grad():
        for block in list(layer.blocks)[3:]:
            block.lin.weight.mul_(100)
    assert layer.penalty().item() == before


def test_penalty_is_w_l2_plus_gated_block_l2() -> None:
    layer = make_layer(1.7, w_l2=0.5, block_l2=0.25)
    w = layer.w.item()
    expected = 0.5 * w * w
    for i in range(2):
        gate = max(0.0, 1 - math.exp(i + 1e-8 - w))
        expected += 0.25 * gate * layer.blocks[i].lin.weight.square().sum().item()
    assert math.isclose(layer.penalty().item(), expected, rel_tol=1e-9)
    assert math.isclose(total_penalty(nn.Sequential(layer, nn.ReLU())).item(), expected, rel_tol=1e-9)


def test_batchnorm_gamma_uses_shifted_form() -> None:
    layer = InfiniteDepth(
        lambda i: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
        w0=1.0,
        block_l2=2.0,
        gamma_shift=0.5,
        seed=0,
    ).double()
    with torch.no_grad():
        layer.blocks[0][1].weight.copy_(torch.tensor([0.1, 1.0, 2.0, -3.0]))
    gate = 1 - math.exp(1e-8 - 1.0)
    expected = 2.0 * gate * (0 + 0.5 + 3.5 + 8.5)
    assert math.isclose(layer.penalty().item(), expected, rel_tol=1e-9)


def test_param_scaled_w_penalty() -> None:
    layer = make_layer(2.0, w_l2=1e-3, w_penalty="param_scaled")
    assert layer.params_per_block == 6 * 6 + 6
    assert math.isclose(layer.penalty().item(), 1e-3 * 42 * 4.0, rel_tol=1e-9)


def test_state_dict_of_grown_layer_loads_into_fresh_layer() -> None:
    layer = make_layer(1.0)
    with torch.no_grad():
        layer.w.fill_(7.2)
    layer.grow()
    state = layer.state_dict()
    fresh = InfiniteDepth(lambda i: Counting(6), h="relu", seed=99).double()
    fresh.load_state_dict(state)
    assert fresh.built_blocks == layer.built_blocks == 10
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(fresh(x), layer(x))


def test_blocks_initialise_from_seed_and_index_whenever_built() -> None:
    a = make_layer(1.0)
    a.grow(10)
    b = make_layer(9.5)  # built all at once
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.shape == pb.shape and pa.dim() > 0:
            assert torch.equal(pa, pb)


def test_prune_drops_unused_blocks_and_keeps_output() -> None:
    layer = make_layer(3.5)
    layer.grow(10)
    x = torch.randn(3, 6, dtype=torch.float64)
    before = layer(x)
    assert layer.prune() == 6
    assert layer.built_blocks == 4
    torch.testing.assert_close(layer(x), before)


def test_forward_grows_when_w_is_set_past_built_blocks() -> None:
    layer = make_layer(1.0)
    with torch.no_grad():
        layer.w.fill_(11.0)
    with pytest.warns(UnregisteredGrowthWarning, match="built sub-layers 5..14"):
        layer(torch.randn(2, 6, dtype=torch.float64))
    assert layer.built_blocks == 15


def test_parameter_counts() -> None:
    layer = make_layer(2.2)
    assert layer.used_parameters == 3 * 42 + 1
    assert layer.built_parameters == 5 * 42 + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_w(dtype: torch.dtype) -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(3, 3), w0=1.0, seed=0).to(dtype)
    with torch.no_grad():
        layer.w.fill_(6.0)
    layer.grow()
    assert all(p.dtype == dtype for p in layer.parameters())
    assert layer(torch.randn(2, 3, dtype=dtype)).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_and_growth() -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(3, 3), w0=1.0, seed=0).cuda()
    with torch.no_grad():
        layer.w.fill_(6.0)
    layer.grow()
    assert all(p.is_cuda for p in layer.parameters())
    assert layer(torch.randn(2, 3, device="cuda")).is_cuda


def test_conv_blocks() -> None:
    layer = InfiniteDepth(lambda i: nn.Conv2d(3, 3, 3, padding=1), h="batchnorm", w0=2.5, seed=0)
    out = layer(torch.randn(4, 3, 5, 5))
    assert out.shape == (4, 3, 5, 5)


def test_shape_changing_block_names_index_and_shapes() -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(4, 4 if i < 2 else 5), w0=3.0, seed=0)
    with pytest.raises(ValueError, match=r"block 2 changed the shape from \(2, 4\) to \(2, 5\)"):
        layer(torch.randn(2, 4))


def test_non_idempotent_h_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="not idempotent"):
        InfiniteDepth(lambda i: nn.Linear(4, 4), h=nn.Tanh())
    with pytest.raises(ValueError, match="'identity', 'relu', 'batchnorm'"):
        InfiniteDepth(lambda i: nn.Linear(4, 4), h="tanh")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grow_step": 0}, "grow_step=0"),
        ({"grow_step": 2.5}, "grow_step=2.5"),
        ({"merge": "sum"}, "'residual', 'convex', 'geometric'"),
        ({"gate": "step"}, "'exp', 'stretched'"),
        ({"w0": float("nan")}, "w0=nan"),
        ({"w_l2": -1.0}, "w_l2=-1.0"),
        ({"w_penalty": "l1"}, "'l2', 'param_scaled'"),
    ],
)
def test_invalid_arguments_name_accepted_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InfiniteDepth(lambda i: nn.Linear(4, 4), **kwargs)
