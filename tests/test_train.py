import json

import pytest
import torch
from torch import nn

from infdepth.depth import InfiniteDepth
from infdepth.errors import DivergenceError, InputError
from infdepth.train import CHECKPOINT, METRICS, FitConfig, fit


def make(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    layer = InfiniteDepth(
        lambda i: nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.2)),
        h="relu",
        w0=1.8,
        w_l2=1e-3,
        block_l2=1e-3,
        grow_step=2,
        seed=seed,
    )
    model = nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 1), nn.Flatten(0))
    return model, torch.optim.Adam(model.parameters(), lr=5e-2)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 4, generator=gen)
    return x, (x[:, 0] * x[:, 1] > 0).float()


def run(out, steps: int, resume: bool = False, checkpoint_every: int = 5):
    model, opt = make()
    result = fit(
        model,
        opt,
        batch,
        nn.BCEWithLogitsLoss(),
        FitConfig(
            steps=steps,
            eval_every=5,
            log_every=5,
            checkpoint_every=checkpoint_every,
            out_dir=out,
            resume=resume,
            progress=False,
        ),
        evaluate=lambda m, step: {"val_loss": float(nn.BCEWithLogitsLoss()(m(batch(-1)[0]), batch(-1)[1]))},
    )
    return model, opt, result


def test_training_grows_and_writes_metrics(tmp_path) -> None:
    model, opt, result = run(tmp_path, 40)
    layer = model[1]
    lines = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(5, 41, 5))
    assert lines == result.history
    assert all("val_loss" in r and "1" in r["w"] for r in lines)
    assert layer.built_blocks >= layer.active_blocks
    assert (tmp_path / CHECKPOINT).is_file()


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path) -> None:
    full_model, full_opt, full = run(tmp_path / "full", 30)
    run(tmp_path / "part", 15)  # "interrupted" after 15 steps (checkpoint at 15)
    model, opt, resumed = run(tmp_path / "part", 30, resume=True)
    assert resumed.resumed_from == 15
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history == full.history
    assert (tmp_path / "part" / METRICS).read_text() == (tmp_path / "full" / METRICS).read_text()
    sa, sb = full_opt.state_dict(), opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for key in sa["state"][k]:
            assert torch.equal(sa["state"][k][key], sb["state"][k][key])


def test_non_finite_w_raises_with_step_and_keeps_checkpoint(tmp_path) -> None:
    run(tmp_path, 10)
    saved = (tmp_path / CHECKPOINT).read_bytes()
    model, opt = make()

    def poisoned(step: int):
        x, y = batch(step)
        if step == 12:
            with torch.no_grad():
                model[1].w.fill_(float("nan"))
        return x, y

    with pytest.raises(DivergenceError, match="step 13"):
        fit(
            model,
            opt,
            poisoned,
            nn.BCEWithLogitsLoss(),
            FitConfig(steps=20, checkpoint_every=1, out_dir=tmp_path, resume=True, progress=False),
        )
    assert (tmp_path / CHECKPOINT).read_bytes() != saved  # steps 11, 12 were checkpointed
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert ckpt["step"] == 12
    assert torch.isfinite(ckpt["model"]["1.w"])


def test_resume_without_checkpoint_is_a_clear_error(tmp_path) -> None:
    model, opt = make()
    with pytest.raises(InputError, match="no checkpoint"):
        fit(
            model,
            opt,
            batch,
            nn.BCEWithLogitsLoss(),
            FitConfig(steps=5, out_dir=tmp_path, resume=True, progress=False),
        )


def test_corrupt_checkpoint_is_named(tmp_path) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    model, opt = make()
    with pytest.raises(InputError, match="cannot be read"):
        fit(
            model,
            opt,
            batch,
            nn.BCEWithLogitsLoss(),
            FitConfig(steps=5, out_dir=tmp_path, resume=True, progress=False),
        )


@pytest.mark.parametrize(
    "kw", [{"steps": 0}, {"steps": 5, "eval_every": 0}, {"steps": 5, "checkpoint_every": -1}]
)
def test_bad_config(kw) -> None:
    with pytest.raises(InputError):
        FitConfig(**kw)


def test_non_finite_parameters_never_reach_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))  # no w to watch
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def poisoned(step: int):
        x, y = batch(step)
        if step == 10:
            with torch.no_grad():
                model[2].weight.fill_(float("inf"))
        return x, y

    config = dict(log_every=100, checkpoint_every=5, out_dir=tmp_path, progress=False)
    fit(model, opt, poisoned, nn.BCEWithLogitsLoss(), FitConfig(steps=10, **config))
    saved = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(DivergenceError, match=r"at step 15, non-finite values in .*'2.weight'"):
        fit(model, opt, poisoned, nn.BCEWithLogitsLoss(), FitConfig(steps=20, resume=True, **config))
    assert (tmp_path / CHECKPOINT).read_bytes() == saved


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path) -> None:
    run(tmp_path, 5)
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(InputError, match="does not fit this model"):
        fit(
            other,
            torch.optim.Adam(other.parameters()),
            batch,
            nn.MSELoss(),
            FitConfig(steps=10, out_dir=tmp_path, resume=True, progress=False),
        )


def test_fit_adds_the_penalty_of_every_submodule_that_has_one(tmp_path) -> None:
    """ODEBlock's t1 penalty and a user module's penalty reach the objective (not only g-inf layers)."""
    from infdepth import HasPenalty, InfiniteDepth, ODEBlock, model_penalty

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, t, h):
            return self.lin(h)

    class Shrink(nn.Module):  # a user module taking part through the protocol
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(3.0))

        def forward(self, x):
            return self.scale * x

        def penalty(self):
            return 0.5 * self.scale.square()

    torch.manual_seed(0)
    block = ODEBlock(Field(), t1=1.0, learn_t1=True, t1_l2=0.3, rtol=1e-5, atol=1e-5)
    layer = InfiniteDepth(lambda i: nn.Linear(2, 2), w0=1.5, w_l2=0.2)
    model = nn.Sequential(block, Shrink(), layer)
    assert isinstance(model[1], HasPenalty)
    expected = 0.3 * 1.0 + 0.5 * 9.0 + layer.penalty().item()
    assert model_penalty(model).item() == pytest.approx(expected, rel=1e-6)
    # with zero data loss, one SGD step moves t1 and scale exactly by lr * d(penalty)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, sgd, lambda s: (torch.randn(4, 2), torch.zeros(4, 2)), lambda out, y: 0.0 * out.sum(),
        FitConfig(steps=1, progress=False))
    assert block.t1.item() == pytest.approx(1.0 - 0.1 * 0.6, rel=1e-6)
    assert model[1].scale.item() == pytest.approx(3.0 - 0.1 * 3.0, rel=1e-6)
