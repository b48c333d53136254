"""Behaviours of the training loop that mutation testing found undefended (docs/mutation.md).

``fit`` must be one optimizer step per batch of ``data loss + penalty`` exactly as a
hand-written loop (growth registered before the first step, before every step and after
every step), log
window averages of the loss, the penalty and step metrics, resume a scheduler and the
wall time, and name the step and value in every divergence.
"""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
from torch import nn

from infdepth.depth import InfiniteDepth, attach, grow, total_penalty
from infdepth.errors import DivergenceError, InputError
from infdepth.train import CHECKPOINT, FitConfig, FitResult, _sync_depths, fit


def make(seed: int = 0, w0: float = 1.8) -> tuple[nn.Sequential, InfiniteDepth]:
    torch.manual_seed(seed)
    layer = InfiniteDepth(
        lambda i: nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.1)),
        h="relu",
        w0=w0,
        w_l2=0.05,
        block_l2=0.01,
        grow_step=2,
        seed=seed,
    )
    return nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 1), nn.Flatten(0)), layer


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(500 + step)
    x = torch.randn(16, 4, generator=gen)
    return x, (x[:, 0] > x[:, 1]).float()


LOSS = nn.BCEWithLogitsLoss()


def quiet(**kw) -> FitConfig:
    return FitConfig(progress=False, **kw)


def jump(layer: InfiniteDepth, at: int, value: float):
    """``batch`` that moves ``w`` past the built sub-layers before step ``at`` (growth mid-run)."""

    def fn(step: int):
        if step == at:
            layer.w.data.fill_(value)
        return batch(step)

    return fn


def test_fit_is_the_hand_written_loop_with_penalty_and_growth() -> None:
    steps = 8
    model, layer = make()
    ref_model, ref_layer = copy.deepcopy(model), None
    ref_layer = ref_model[1]
    layer.w.data.fill_(3.5)  # past the 2 built sub-layers before the first step
    ref_layer.w.data.fill_(3.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    ref_opt = torch.optim.Adam(ref_model.parameters(), lr=0.02)

    torch.manual_seed(7)
    fit(model, opt, jump(layer, 4, 6.5), LOSS, quiet(steps=steps, log_every=100))

    torch.manual_seed(7)
    data = jump(ref_layer, 4, 6.5)
    attach(ref_model, ref_opt)  # sub-layers built in a forward are stepped in that step
    grow(ref_model, ref_opt)
    for step in range(steps):
        x, y = data(step)
        ref_model.train()
        out = ref_model(x)
        objective = LOSS(out, y) + total_penalty(ref_model)
        ref_opt.zero_grad(set_to_none=True)
        objective.backward()
        ref_opt.step()
        grow(ref_model, ref_opt)

    assert layer.built_blocks == ref_layer.built_blocks == 8
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), name
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.parameters())
    assert all(p in opt.state for p in layer.blocks[6].parameters())  # grown mid-run, then trained


def test_log_records_are_window_means_at_log_eval_and_final_steps() -> None:
    model, layer = make()
    seen: list[tuple[float, float, float]] = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = LOSS(out, y)
        acc = ((out > 0).float() == y).float().mean()
        seen.append((loss.item(), layer.penalty().item(), acc.item()))
        return loss

    def step_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"acc": ((out > 0).float() == y).float().mean()}

    result = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        batch,
        loss_fn,
        quiet(steps=11, log_every=4, eval_every=5),
        evaluate=lambda m, step: {"val": 1.0},
        step_metrics=step_metrics,
    )
    assert [r["step"] for r in result.history] == [4, 5, 8, 10, 11]
    assert result.series("val") == [1.0, 1.0, 1.0]
    assert result.series("step") == [4, 5, 8, 10, 11]
    assert result.steps == 11
    starts = [0, 4, 5, 8, 10]
    for record, lo, hi in zip(result.history, starts, [4, 5, 8, 10, 11]):
        window = seen[lo:hi]
        for k, key in enumerate(("loss", "penalty", "acc")):
            mean = sum(v[k] for v in window) / len(window)
            assert record[key] == pytest.approx(mean, rel=1e-5), (record["step"], key)
        assert record["w"] == {"1": pytest.approx(layer.depth)} if record["step"] == 11 else True
        assert record["active_blocks"] == {"1": math.ceil(record["w"]["1"])}


def test_a_layer_that_is_the_model_is_logged_as_layer(tmp_path) -> None:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Linear(3, 3), w0=1.5, w_l2=0.01, seed=0)
    result = fit(
        layer,
        torch.optim.SGD(layer.parameters(), lr=0.1),
        lambda s: (torch.randn(8, 3, generator=torch.Generator().manual_seed(s)), torch.zeros(8, 3)),
        nn.MSELoss(),
        quiet(steps=2, log_every=1, out_dir=tmp_path / "a" / "b"),  # parent folders are created
    )
    assert result.history[-1]["w"] == {"layer": layer.depth}
    assert result.history[-1]["active_blocks"] == {"layer": 2}
    assert (tmp_path / "a" / "b" / CHECKPOINT).is_file()


def test_fit_without_a_run_folder_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model, _ = make()
    result = fit(
        model, torch.optim.SGD(model.parameters(), lr=0.05), batch, LOSS, quiet(steps=3, log_every=1)
    )
    assert [r["step"] for r in result.history] == [1, 2, 3]
    assert list(tmp_path.iterdir()) == []


def scheduled_run(out, steps: int, resume: bool = False):
    model, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    result = fit(
        model, opt, batch, LOSS, quiet(steps=steps, log_every=2, out_dir=out, resume=resume), scheduler=sched
    )
    return model, opt, sched, result


def test_resume_restores_the_scheduler(tmp_path) -> None:
    full_model, full_opt, full_sched, full = scheduled_run(tmp_path / "full", 10)
    scheduled_run(tmp_path / "part", 5)
    ckpt = torch.load(tmp_path / "part" / CHECKPOINT, weights_only=False)
    assert ckpt["scheduler"]["last_epoch"] == 5
    model, opt, sched, resumed = scheduled_run(tmp_path / "part", 10, resume=True)
    assert sched.state_dict() == full_sched.state_dict()
    assert opt.param_groups[0]["lr"] == full_opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history[-1] == full.history[-1]


def test_wall_time_is_summed_over_resumed_parts(tmp_path) -> None:
    out = tmp_path / "run"
    model, _ = make()
    t0 = time.perf_counter()
    first = fit(model, torch.optim.SGD(model.parameters(), lr=0.05), batch, LOSS, quiet(steps=4, out_dir=out))
    wall_first = time.perf_counter() - t0
    assert 0 < first.seconds <= wall_first
    saved = torch.load(out / CHECKPOINT, weights_only=False)
    assert 0 < saved["seconds"] <= first.seconds

    model, _ = make()
    t0 = time.perf_counter()
    second = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        batch,
        LOSS,
        quiet(steps=6, out_dir=out, resume=True),
    )
    wall_second = time.perf_counter() - t0
    assert saved["seconds"] < second.seconds <= saved["seconds"] + wall_second

    # a checkpoint written before wall time was recorded: the total is unknown
    ckpt = torch.load(out / CHECKPOINT, weights_only=False)
    del ckpt["seconds"]
    torch.save(ckpt, out / CHECKPOINT)
    model, _ = make()
    third = fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        batch,
        LOSS,
        quiet(steps=7, out_dir=out, resume=True),
    )
    assert math.isnan(third.seconds)


def test_w_made_non_finite_by_a_step_names_the_step_and_layer() -> None:
    model, layer = make()
    calls = {"n": 0}

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = LOSS(out, y)
        return loss + layer.w * float("inf") if calls["n"] == 3 else loss

    with pytest.raises(DivergenceError, match=r"^at step 3, w became non-finite: \{'1': -?(inf|nan)\}$"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.01), batch, loss_fn, quiet(steps=10, log_every=5))


def test_non_finite_loss_names_the_logged_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))
    calls = {"n": 0}

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return LOSS(out, y) * (float("nan") if calls["n"] == 7 else 1.0)

    with pytest.raises(DivergenceError, match=r"^at step 10, the loss became nan$"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, loss_fn, quiet(steps=20, log_every=5))


class HeadAndSpares(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 1)
        self.spares = nn.ModuleList(nn.Linear(2, 2) for _ in range(4))  # unused by forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).flatten()


def test_non_finite_parameters_are_named_five_at_most(tmp_path) -> None:
    torch.manual_seed(0)
    model = HeadAndSpares()
    with torch.no_grad():
        for p in model.spares.parameters():
            p.fill_(float("inf"))
    with pytest.raises(DivergenceError, match=r"non-finite values in \[('[0-9.a-z]+', ){4}'[0-9.a-z]+'\]$"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, LOSS, quiet(steps=2, out_dir=tmp_path))


def test_sync_depths_in_one_process_keeps_every_w() -> None:
    model, layer = make()
    other = InfiniteDepth(lambda i: nn.Linear(6, 6), w0=2.75, seed=1)
    model.append(other)
    _sync_depths(model)
    assert layer.depth == pytest.approx(1.8) and other.depth == 2.75


def test_series_lists_the_values_of_records_that_have_the_key() -> None:
    result = FitResult(history=[{"step": 1, "a": 3}, {"step": 2}, {"step": 3, "a": 5}])
    assert result.series("a") == [3, 5]
    assert result.series("b") == []


@pytest.mark.parametrize("name", ["steps", "eval_every", "log_every"])
def test_config_counts_accept_one_and_name_a_bad_value(name: str) -> None:
    assert getattr(FitConfig(**{"steps": 1, name: 1}), name) == 1
    with pytest.raises(InputError, match=rf"^{name}=0 is not accepted; expected an integer >= 1$"):
        FitConfig(**{"steps": 1, name: 0})
    with pytest.raises(InputError, match=rf"^{name}=1.5 is not accepted"):
        FitConfig(**{"steps": 1, name: 1.5})


def test_config_checkpoint_every_accepts_zero_and_names_a_bad_value() -> None:
    assert FitConfig(steps=1, checkpoint_every=0).checkpoint_every == 0
    with pytest.raises(
        InputError,
        match=r"^checkpoint_every=-1 is not accepted; expected an integer >= 0 \(0: only at the end\)$",
    ):
        FitConfig(steps=1, checkpoint_every=-1)
    with pytest.raises(
        InputError, match=r"^resume=True needs out_dir \(the run folder holding checkpoint.pt\)$"
    ):
        FitConfig(steps=1, resume=True)


def test_checkpoint_every_zero_writes_only_at_the_end(tmp_path) -> None:
    model, _ = make()
    written: list[int] = []

    def data(step: int):
        if (tmp_path / CHECKPOINT).is_file():
            written.append(torch.load(tmp_path / CHECKPOINT, weights_only=False)["step"])
        return batch(step)

    fit(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        data,
        LOSS,
        quiet(steps=4, checkpoint_every=0, out_dir=tmp_path),
    )
    assert written == []
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["step"] == 4


def grown_run(out, steps: int, resume: bool = False):
    model, layer = make()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    fit(model, opt, jump(layer, 2, 4.5), LOSS, quiet(steps=steps, log_every=3, out_dir=out, resume=resume))
    return model, layer, opt


def test_resume_after_growth_restores_every_sub_layer_and_its_optimizer_state(tmp_path) -> None:
    full_model, full_layer, full_opt = grown_run(tmp_path / "full", 8)
    grown_run(tmp_path / "part", 5)  # grew from 2 to 6 sub-layers at step 3
    model, layer, opt = grown_run(tmp_path / "part", 8, resume=True)
    assert layer.built_blocks == full_layer.built_blocks == 6
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = full_opt.state_dict(), opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        for key in sa["state"][k]:
            assert torch.equal(sa["state"][k][key], sb["state"][k][key])
