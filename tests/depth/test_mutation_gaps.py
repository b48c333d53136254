"""Behaviours of the learned-depth layer that mutation testing found undefended (docs/mutation.md).

Each test states a property of the g-infinity layer (Meier 2018, section III) or of its
public helpers: the host-side gate of the fused path equals the gate module and its
derivative, the penalty's value for every kind of penalised tensor, growth into an
optimizer with several parameter groups, ``load_state_dict`` reporting like any module,
the lazy idempotence check of a custom ``h``, and errors that name what is wrong.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from infdepth.depth import ExpGate, FixedBatchNorm, InfiniteDepth, StretchedGate, grow, total_penalty
from infdepth.depth.fused import host_gate
from infdepth.depth.gates import make_gate
from infdepth.depth.idempotent import check_idempotent
from infdepth.depth.layer import PENALTY_EPS
from infdepth.depth.merges import make_merge
from infdepth.errors import DivergenceError, InputError

D = torch.float64


def t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=D)


def delta(x: float, w: float, alpha: float = 1.0) -> float:
    return max(0.0, 1.0 - math.exp(alpha * (x - w)))


def lin_layer(w0: float, **kw) -> InfiniteDepth:
    kw.setdefault("seed", 5)
    return InfiniteDepth(lambda i: nn.Linear(4, 4), w0=w0, **kw).double()


def x4(rows: int = 6) -> torch.Tensor:
    return torch.randn(rows, 4, dtype=D, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------- the host-side gate


@given(
    x=st.floats(-6, 6),
    w=st.floats(-6, 6),
    alpha=st.sampled_from([1.0, 0.3, 2.5]),
)
@example(x=2.0, w=2.0, alpha=1.0)  # the kink: off, with a zero derivative, as autograd says
@example(x=1.0 + 1e-8, w=1.0 + 1e-8, alpha=2.5)
def test_host_gate_is_the_gate_and_its_w_derivative(x: float, w: float, alpha: float) -> None:
    gate = ExpGate() if alpha == 1.0 else StretchedGate(alpha).double()
    wt = t(w).requires_grad_()
    value = gate(t(x), wt)
    (dw,) = torch.autograd.grad(value, wt)
    got, dgot = host_gate(x, w, alpha)
    rel = 1e-10 if alpha == 1.0 else 1e-6  # the stretched gate stores log(alpha) in float32
    assert got == pytest.approx(value.item(), rel=rel, abs=1e-15)
    assert dgot == pytest.approx(dw.item(), rel=rel, abs=1e-15)
    if x >= w:
        assert (got, dgot) == (0.0, 0.0)


# ---------------------------------------------------------------- gates


def test_stretched_gate_defaults_to_the_papers_gate_with_a_fixed_alpha() -> None:
    gate = StretchedGate()
    assert list(gate.parameters()) == [] and gate.fixed_alpha == 1.0
    x = torch.linspace(-3, 3, 13, dtype=D)
    torch.testing.assert_close(gate.double()(x, t(0.7)), ExpGate()(x, t(0.7)))


@pytest.mark.parametrize("alpha", [0.0, -0.5, float("inf"), float("nan")])
def test_stretched_gate_refuses_alpha_that_is_not_positive_and_finite(alpha: float) -> None:
    with pytest.raises(InputError, match=r"alpha=.* expected a finite number > 0"):
        StretchedGate(alpha)


def test_explicit_gate_count_includes_switched_off_sub_layers() -> None:
    layer = lin_layer(2.5)
    got = layer.gates(6)
    expected = torch.tensor([delta(i, 2.5) for i in range(6)], dtype=D)
    torch.testing.assert_close(got, expected)
    assert got[3:].eq(0).all()


# ---------------------------------------------------------------- forward


def explicit(layer: InfiniteDepth, x: torch.Tensor, h) -> torch.Tensor:
    w = layer.w.item()
    g = x
    for i in range(max(0, math.ceil(w))):
        g = h(g + delta(i, w) * layer.blocks[i](g))
    return h(g)


@given(w=st.floats(0.1, 6.5))
def test_batchnorm_h_forward_is_the_recursion(w: float) -> None:
    """``h = "batchnorm"`` is applied after every sub-layer (not replaced by another map)."""
    layer = lin_layer(w, h="batchnorm")
    x = x4()
    ref = FixedBatchNorm()
    # FixedBatchNorm is idempotent up to its eps: the final h(g_n) is not re-applied
    torch.testing.assert_close(layer(x), explicit(layer, x, ref), rtol=1e-4, atol=1e-4)


def test_custom_idempotent_h_is_accepted_and_applied() -> None:
    layer = lin_layer(3.2, h=nn.Hardtanh())
    x = 3 * x4()
    torch.testing.assert_close(layer(x), explicit(layer, x, lambda v: v.clamp(-1, 1)))


class Only4d(nn.Module):
    """A map that needs 4-D input (so the constructor's 2-D probe cannot check it); counts calls."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise RuntimeError("expected a 4-D input")
        self.calls += 1
        return torch.relu(x) * self.scale


def conv_layer(h: nn.Module, w0: float = 2.5) -> InfiniteDepth:
    return InfiniteDepth(lambda i: nn.Conv2d(2, 2, 3, padding=1), h=h, w0=w0, seed=0)


def test_h_that_cannot_take_the_probe_is_checked_on_the_first_input() -> None:
    layer = conv_layer(Only4d(2.0))  # not idempotent, but the 2-D probe cannot tell
    with pytest.raises(InputError, match=r"is not idempotent: max \|h\(h\(x\)\) - h\(x\)\| = "):
        layer(torch.randn(3, 2, 4, 4))


def test_deferred_idempotence_check_runs_once() -> None:
    h = Only4d(1.0)
    layer = conv_layer(h, w0=2.5)
    x = torch.randn(3, 2, 4, 4)
    layer(x)  # the check (two calls of h), then one call per active sub-layer
    h.calls = 0
    out = layer(x)
    assert h.calls == layer.active_blocks == 3
    assert out.shape == x.shape


def test_plain_path_refuses_a_shape_changing_sub_layer_naming_it() -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(4, 4 if i < 1 else 1), w0=3.0, merge="convex", seed=0)
    with pytest.raises(InputError, match=r"block 1 changed the shape from \(2, 4\) to \(2, 1\); every"):
        layer(torch.randn(2, 4))


def test_fast_path_shape_error_says_what_is_required() -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(4, 3), w0=1.0, seed=0)
    with pytest.raises(InputError, match="every sub-layer of an InfiniteDepth layer must keep the shape"):
        layer(torch.randn(2, 4))


def test_non_finite_w_is_a_divergence_naming_the_layer_and_value() -> None:
    layer = lin_layer(1.0)
    layer.w.data.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="w of InfiniteDepth is nan"):
        layer(x4())
    assert "active_blocks=?" in repr(layer)  # a diverged model can still be printed


def test_repr_reports_depth_and_blocks() -> None:
    layer = lin_layer(2.25, grow_step=3, merge="convex")
    assert "w=2.25, active_blocks=3, built_blocks=3, merge='convex', grow_step=3" in repr(layer)


def test_factory_returning_a_non_module_is_named() -> None:
    with pytest.raises(InputError, match=r"block factory returned Tensor for i=0; expected an nn.Module"):
        InfiniteDepth(lambda i: torch.zeros(3), w0=1.0)


def test_sub_layers_start_from_distinct_values() -> None:
    """Distinct indices and distinct layer seeds give distinct sub-layer initialisations."""
    layer = InfiniteDepth(lambda i: nn.Linear(2, 2), w0=0.0, seed=7)
    by_index = {tuple(layer._build(i).weight.flatten().tolist()) for i in range(300)}
    assert len(by_index) == 300
    by_seed = {
        tuple(InfiniteDepth(lambda i: nn.Linear(2, 2), w0=1.0, seed=s).blocks[0].weight.flatten().tolist())
        for s in range(300)
    }
    assert len(by_seed) == 300


# ---------------------------------------------------------------- growth, prune, state dicts


def test_grow_to_a_target_builds_exactly_that_many() -> None:
    layer = lin_layer(0.0)
    assert len(layer.grow(3)) == 3 and layer.built_blocks == 3
    assert layer.grow() == []  # ceil(w) = 0 <= 3


def test_prune_removes_a_single_extra_block_and_reports_zero_when_nothing_to_do() -> None:
    layer = lin_layer(2.5, grow_step=4)
    assert layer.built_blocks == 4
    assert layer.prune() == 1 and layer.built_blocks == 3
    assert layer.prune() == 0 and layer.built_blocks == 3
    assert layer.grow() == []  # nothing missing after a prune: no chunk rounding


def test_pruned_sub_layers_never_reach_the_optimizer() -> None:
    layer = lin_layer(4.5)  # 5 sub-layers built, none handed to an optimizer yet
    model = nn.Sequential(nn.Linear(4, 4), layer).double()
    opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
    layer.w.data.fill_(1.5)
    assert layer.prune() == 3
    grow(model, opt)
    in_model = {id(p) for p in model.parameters()}
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert all(id(p) in in_model for p in in_opt)
    assert {id(p) for p in layer.blocks.parameters()} <= {id(p) for p in in_opt}


def test_exported_layer_loads_into_an_empty_one_with_exactly_its_sub_layers() -> None:
    layer = lin_layer(2.5)
    layer.prune()
    fresh = lin_layer(0.0, seed=11)
    assert fresh.built_blocks == 0
    fresh.load_state_dict(layer.state_dict())
    assert fresh.built_blocks == 3
    torch.testing.assert_close(fresh(x4()), layer(x4()))


def test_load_state_dict_reports_missing_unexpected_and_mismatched_keys() -> None:
    layer = lin_layer(1.5)
    state = layer.state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key.*extra"):
        layer.load_state_dict({**state, "extra": torch.zeros(1)})
    bad = dict(state)
    del bad["w"]
    result = layer.load_state_dict(bad, strict=False)
    assert result.missing_keys == ["w"]
    with pytest.raises(RuntimeError, match="size mismatch for w"):
        layer.load_state_dict({**state, "w": torch.zeros(2, dtype=D)})


def test_grow_without_optimizer_keeps_pending_blocks_for_a_later_one() -> None:
    layer = lin_layer(1.0)
    model = nn.Sequential(layer)
    layer.w.data.fill_(7.0)
    assert grow(model) == {"0": 5}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # blocks 0-9 are in it already
    assert grow(model, opt) == {}
    assert not hasattr(layer, "pending")  # growth.grow finds new parameters itself
    assert grow(layer) == {}
    layer.w.data.fill_(12.0)
    assert grow(layer) == {"<root>": 5}  # a layer that is the model itself


def groups_model() -> tuple[nn.Module, InfiniteDepth]:
    layer = lin_layer(1.0)
    return nn.Sequential(nn.Linear(4, 4), layer).double(), layer


def test_new_sub_layers_join_the_group_holding_the_old_ones() -> None:
    model, layer = groups_model()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": layer.blocks.parameters(), "lr": 0.2},
            {"params": [layer.w], "lr": 0.3},
        ]
    )
    layer.w.data.fill_(7.0)
    grow(model, opt)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 20, 1]


def test_first_sub_layers_join_the_group_of_w() -> None:
    layer = lin_layer(0.0)
    model = nn.Sequential(nn.Linear(4, 4), layer).double()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": [layer.w], "lr": 0.5}], lr=0.1)
    layer.w.data.fill_(2.0)
    grow(model, opt)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 11]


def test_sub_layers_of_a_layer_the_optimizer_does_not_train_join_the_first_group() -> None:
    model, layer = groups_model()
    opt = torch.optim.SGD([{"params": [model[0].weight]}, {"params": [model[0].bias], "lr": 0.5}], lr=0.1)
    layer.w.data.fill_(7.0)
    grow(model, opt)
    assert [len(g["params"]) for g in opt.param_groups] == [21, 1]  # the 5 built before and 5 new


def test_growth_keeps_an_optimizer_parameter_that_is_not_in_the_model() -> None:
    model, layer = groups_model()
    temperature = nn.Parameter(torch.ones((), dtype=D))  # e.g. a learned loss scale
    opt = torch.optim.Adam([*model.parameters(), temperature], lr=0.1)
    layer.w.data.fill_(7.0)
    grow(model, opt)
    params = opt.param_groups[0]["params"]
    assert params[-1] is temperature
    assert [id(p) for p in params[:-1]] == [id(p) for p in model.parameters()]


# ---------------------------------------------------------------- the penalty


class ScaleShift(nn.Module):
    """A parameterised module without a ``weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((4,), 1.5))
        self.shift = nn.Parameter(torch.full((4,), -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def analytic_penalty(w: float, w_l2: float, block_l2: float, norms: list[float]) -> float:
    return w_l2 * w * w + block_l2 * sum(delta(i + PENALTY_EPS, w) * n for i, n in enumerate(norms))


@pytest.mark.parametrize("gamma_shift", [0.0, 0.7])
@pytest.mark.parametrize("merge", ["residual", "convex"])
def test_penalty_of_a_module_without_weight_is_its_own_parameters(gamma_shift: float, merge: str) -> None:
    layer = InfiniteDepth(
        lambda i: nn.Sequential(nn.Linear(4, 4), ScaleShift()),
        w0=2.4,
        w_l2=0.1,
        block_l2=0.3,
        gamma_shift=gamma_shift,
        merge=merge,
        seed=0,
    ).double()
    norms = [4 * 1.5**2 + 4 * 0.5**2] * 3  # scale and shift: not a BatchNorm gamma, so never shifted
    assert layer.penalty().item() == pytest.approx(
        analytic_penalty(layer.w.item(), 0.1, 0.3, norms), rel=1e-12
    )


@pytest.mark.parametrize("gamma_shift", [0.0, 0.5, 1.0, 4.0])
def test_gamma_shift_applies_to_batchnorm_gamma_only(gamma_shift: float) -> None:
    def block(i: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) if i % 2 == 0 else nn.Linear(4, 4)

    layer = InfiniteDepth(block, w0=2.6, w_l2=0.05, block_l2=0.2, gamma_shift=gamma_shift, seed=1).double()
    gamma = torch.tensor([0.5, 1.0, 1.5, 3.0], dtype=D)
    with torch.no_grad():
        for i in (0, 2):
            layer.blocks[i][1].weight.copy_(gamma)
    norms = [
        float(torch.relu(gamma.square() - gamma_shift).sum()),
        float(layer.blocks[1].weight.detach().square().sum()),
        float(torch.relu(gamma.square() - gamma_shift).sum()),
    ]
    assert layer.penalty().item() == pytest.approx(
        analytic_penalty(layer.w.item(), 0.05, 0.2, norms), rel=1e-12
    )


@pytest.mark.parametrize("merge", ["residual", "convex"])
def test_custom_penalised_tensors_value_and_gradient(merge: str) -> None:
    """``penalised(block)`` may give several tensors (summed) or none; ``gamma_shift`` does not apply."""

    def penalised(block: nn.Module) -> list[torch.Tensor]:
        return [] if block.out_features == 4 and block.bias[0] > 10 else [block.weight, block.bias]

    layer = InfiniteDepth(
        lambda i: nn.Linear(4, 4),
        w0=2.3,
        w_l2=0.1,
        block_l2=0.4,
        gamma_shift=0.9,
        penalised=penalised,
        merge=merge,
        seed=3,
    ).double()
    w = layer.w.item()
    blocks = layer.blocks
    norms = [float(b.weight.detach().square().sum() + b.bias.detach().square().sum()) for b in blocks[:3]]
    value = layer.penalty()
    assert value.item() == pytest.approx(analytic_penalty(w, 0.1, 0.4, norms), rel=1e-12)
    grads = torch.autograd.grad(value, [layer.w, blocks[0].weight, blocks[1].bias])
    dw = 2 * 0.1 * w + 0.4 * sum(math.exp(i + PENALTY_EPS - w) * n for i, n in enumerate(norms))
    assert grads[0].item() == pytest.approx(dw, rel=1e-10)
    torch.testing.assert_close(grads[1], 2 * 0.4 * delta(PENALTY_EPS, w) * blocks[0].weight.detach())
    torch.testing.assert_close(grads[2], 2 * 0.4 * delta(1 + PENALTY_EPS, w) * blocks[1].bias.detach())
    with torch.no_grad():
        blocks[1].bias.fill_(11.0)  # sub-layer 1 now penalises nothing
    del norms[1]
    expected = 0.1 * w * w + 0.4 * (delta(PENALTY_EPS, w) * norms[0] + delta(2 + PENALTY_EPS, w) * norms[1])
    assert layer.penalty().item() == pytest.approx(expected, rel=1e-12)


def test_block_without_parameters_is_refused_by_the_block_penalty_only() -> None:
    for merge in ("residual", "convex"):
        free = InfiniteDepth(lambda i: nn.Tanh(), w0=2.0, w_l2=0.5, merge=merge, seed=0)
        assert free.penalty().item() == pytest.approx(0.5 * 4.0)
        taxed = InfiniteDepth(lambda i: nn.Tanh(), w0=2.0, block_l2=0.5, merge=merge, seed=0)
        with pytest.raises(InputError, match=r"block Tanh\(\) has no parameters to penalise"):
            taxed.penalty()


def test_total_penalty_sums_every_layer() -> None:
    a = lin_layer(1.5, w_l2=0.2, block_l2=0.1)
    b = lin_layer(2.5, w_l2=0.3, block_l2=0.05, seed=9)
    model = nn.Sequential(a, nn.ReLU(), b)
    total = total_penalty(model)
    assert total is not None
    assert total.item() == pytest.approx(a.penalty().item() + b.penalty().item(), rel=1e-12)
    assert total_penalty(nn.Linear(2, 2)) is None


# ---------------------------------------------------------------- merges, h


def test_merge_name_error_names_the_argument() -> None:
    with pytest.raises(InputError, match=r"merge='sum' is not accepted"):
        InfiniteDepth(lambda i: nn.Linear(4, 4), merge="sum")


def test_geometric_merge_default_eps_is_tiny() -> None:
    x = torch.tensor([1.0, -2.0, 3.0], dtype=D)
    fx = torch.tensor([0.5, -4.0, 0.0], dtype=D)
    one = torch.ones((), dtype=D)
    torch.testing.assert_close(make_merge("geometric")(x, fx, one), x * fx.abs(), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("eps", [None, 1e-5, 0.5])
def test_fixed_batchnorm_normalises_with_its_eps(eps: float | None) -> None:
    bn = FixedBatchNorm() if eps is None else FixedBatchNorm(eps)
    x = torch.randn(50, 3, dtype=D, generator=torch.Generator().manual_seed(0)) * 2 + 1
    var = x.var(0, unbiased=False)
    expected = (x - x.mean(0)) / torch.sqrt(var + (1e-5 if eps is None else eps))
    torch.testing.assert_close(bn(x), expected)


@pytest.mark.parametrize("error", [0.0, 2e-5, 5e-5])
def test_idempotence_check_tolerates_relative_and_absolute_error_of_1e_4(error: float) -> None:
    sample = torch.linspace(-3, 3, 61)
    shrink = lambda v: v.clamp(-1, 1) * (1 - error)  # relative error per application  # noqa: E731
    lift = lambda v: torch.relu(v) + error  # absolute error per application  # noqa: E731
    check_idempotent(shrink, sample)
    check_idempotent(lift, sample)
    with pytest.raises(InputError, match="not idempotent"):
        check_idempotent(lambda v: v.clamp(-1, 1) * 0.99, sample)


def test_idempotence_error_reports_the_gap_and_the_accepted_maps() -> None:
    with pytest.raises(
        InputError, match=r"max \|h\(h\(x\)\) - h\(x\)\| = 2 on a sample of shape \(3,\)"
    ) as info:
        check_idempotent(lambda v: 2 * v, torch.ones(3))
    assert str(info.value).endswith("'identity', 'relu', 'batchnorm' or any module with h(h(x)) == h(x)")
    with pytest.raises(InputError, match=r"= nan on a sample of shape \(4,\)"):
        check_idempotent(lambda v: v[1:], torch.ones(4))  # changes the shape every time


# ---------------------------------------------------------------- construction


def test_defaults_are_the_papers_layer() -> None:
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), block_l2=1.0, seed=0)
    assert layer.depth == 1.0 and layer.built_blocks == 5 and layer.active_blocks == 1
    assert isinstance(layer.gate, ExpGate) and layer.merge_name == "residual"
    assert [n for n, _ in layer.named_parameters() if not n.startswith("blocks.")] == ["w"]
    with torch.no_grad():
        layer.blocks[0][1].weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    # no gamma shift by default: the plain l2 of gamma
    assert layer.penalty().item() == pytest.approx(delta(PENALTY_EPS, 1.0) * 5.25, rel=1e-6)
    stretched = InfiniteDepth(lambda i: nn.Linear(3, 3), gate="stretched", seed=0)
    assert stretched.gate.fixed_alpha == 1.0 and list(stretched.gate.parameters()) == []
    made = make_gate("stretched")
    assert made.fixed_alpha == 1.0 and list(made.parameters()) == []
    assert type(make_gate("exp")) is ExpGate


def test_stretched_gate_arguments_reach_the_gate() -> None:
    layer = InfiniteDepth(
        lambda i: nn.Linear(3, 3), gate="stretched", alpha=2.5, trainable_alpha=True, seed=0
    )
    assert layer.gate.alpha.item() == pytest.approx(2.5)
    assert "gate.log_alpha" in dict(layer.named_parameters())
    fixed = InfiniteDepth(lambda i: nn.Linear(3, 3), gate="stretched", alpha=0.5, seed=0)
    assert fixed.gate.fixed_alpha == pytest.approx(0.5)


def test_grow_step_one_builds_exactly_ceil_w() -> None:
    layer = lin_layer(2.5, grow_step=1)
    assert layer.built_blocks == 3


@given(w=st.floats(0.2, 4.5), eps=st.sampled_from([1e-8, 0.25, 2.0]))
def test_geometric_merge_uses_geometric_eps(w: float, eps: float) -> None:
    layer = lin_layer(w, merge="geometric", geometric_eps=eps)
    x = x4()
    w = layer.w.item()
    g = x
    for i in range(math.ceil(w)):
        g = g * torch.sqrt(layer.blocks[i](g).square() + eps) ** delta(i, w)
    torch.testing.assert_close(layer(x), g, rtol=1e-10, atol=1e-12)


def test_default_seeds_differ_between_layers() -> None:
    torch.manual_seed(0)
    seeds = {InfiniteDepth(lambda i: nn.Linear(1, 1), w0=0.0).seed for _ in range(200)}
    assert len(seeds) == 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"block": 5}, r"^block=5 is not accepted; expected a callable f\(i\) -> nn.Module$"),
        ({"block_l2": -1.0}, r"^block_l2=-1.0 is not accepted; expected a finite number >= 0$"),
        ({"w_l2": float("inf")}, r"^w_l2=inf is not accepted"),
        ({"w_penalty": "l1"}, r"^w_penalty='l1' is not accepted; choose one of 'l2', 'param_scaled'$"),
        ({"gate": "step"}, r"^gate='step' is not accepted"),
        ({"h": 5}, r"^h=5 is not accepted; expected a name, an nn.Module or a callable$"),
        ({"h": "tanh"}, r"or pass an idempotent module \(h\(h\(x\)\) == h\(x\)\)$"),
    ],
)
def test_constructor_errors_name_the_argument(kwargs: dict, match: str) -> None:
    kw = {"block": lambda i: nn.Linear(4, 4), **kwargs}
    block = kw.pop("block")
    with pytest.raises(InputError, match=match):
        InfiniteDepth(block, **kw)


def test_example_input_checks_h_and_sub_layer_zero_at_construction() -> None:
    x = torch.randn(3, 2, 4, 4)
    with pytest.raises(InputError, match="not idempotent"):
        conv_layer_with(Only4d(2.0), example_input=x)
    with pytest.raises(RuntimeError, match="expected a 4-D input"):
        conv_layer_with(Only4d(1.0), example_input=torch.randn(3, 2))
    h = Only4d(1.0)
    layer = conv_layer_with(h, example_input=x)  # checked now: no second check in forward
    h.calls = 0
    layer(x)
    assert h.calls == layer.active_blocks
    with pytest.raises(InputError, match=r"^block 0 changed the shape from \(2, 4\) to \(2, 3\); every"):
        InfiniteDepth(lambda i: nn.Linear(4, 3 if i == 0 else 4), w0=2.0, example_input=torch.randn(2, 4))


def conv_layer_with(h: nn.Module, example_input: torch.Tensor) -> InfiniteDepth:
    return InfiniteDepth(
        lambda i: nn.Conv2d(2, 2, 3, padding=1), h=h, w0=2.5, seed=0, example_input=example_input
    )


def test_idempotent_custom_h_is_checked_once_at_construction() -> None:
    calls = {"n": 0}

    class Counting(nn.Hardtanh):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            return super().forward(x)

    layer = lin_layer(2.5, h=Counting())
    calls["n"] = 0
    layer(x4())
    assert calls["n"] == layer.active_blocks == 3
