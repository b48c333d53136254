"""The Lightning callback: penalty, growth registered with Lightning's optimizer, resume, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # lit_model: shared with the DDP script (run as its own process)

from lit_model import Net, data, trainer  # noqa: E402

from infdepth import attach, model_penalty  # noqa: E402
from infdepth.integrations.lightning import LearnedDepth  # noqa: E402


def by_hand(steps_per_epoch: int, epochs: int) -> Net:
    """The same training written out: training_step + model_penalty, an attached Adam."""
    torch.manual_seed(0)
    model = Net()
    opt = model.configure_optimizers()
    attach(model, opt)
    for _ in range(epochs):
        for i, batch in enumerate(data()):
            assert i < steps_per_epoch
            loss = model.training_step(batch, i) + model_penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def assert_equal_states(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_the_callback_adds_the_penalty_and_steps_every_grown_sub_layer() -> None:
    torch.manual_seed(0)
    model = Net()
    t = trainer(max_epochs=3, callbacks=[LearnedDepth(log=False)])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no optimizer is attached.*")
        t.fit(model, data())
    assert model.layer.built_blocks >= 10 and model.layer.depth > 7  # grew during training
    # w rises by about 1 a step: sub-layer 5 ran in the last steps, and Lightning's Adam stepped it
    assert all(p in t.optimizers[0].state for p in model.layer.blocks[5].parameters())
    assert_equal_states(model, by_hand(3, 3))  # bitwise the hand-written loop, penalty included


def test_ckpt_path_resume_and_load_from_checkpoint_of_a_grown_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    whole = Net()
    trainer(max_epochs=4, callbacks=[LearnedDepth(log=False)]).fit(whole, data())

    torch.manual_seed(0)
    first = Net()
    t = trainer(max_epochs=2, callbacks=[LearnedDepth(log=False)])
    t.fit(first, data())
    assert first.layer.built_blocks > 5
    path = tmp_path / "grown.ckpt"
    t.save_checkpoint(path)

    torch.manual_seed(123)  # another process' RNG: the sub-layer seed comes from the checkpoint
    resumed = Net()
    assert resumed.layer.built_blocks == 5
    trainer(max_epochs=4, callbacks=[LearnedDepth(log=False)]).fit(resumed, data(), ckpt_path=path)
    assert_equal_states(resumed, whole)

    loaded = Net.load_from_checkpoint(path)
    assert_equal_states(loaded, first)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tmp_path: Path) -> None:
    # Lightning picks a free port; a process group of another test in this worker must not leak in
    leaked = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")
    env = {k: v for k, v in os.environ.items() if k not in leaked}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, str(HERE / "lit_ddp.py"), str(tmp_path)], check=True, env=env,
                   timeout=300, cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["built"] == ranks[1]["built"] > 5  # grew, in lockstep
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k


def test_a_lightning_step_reads_w_once_and_matches_the_hand_written_loop(monkeypatch) -> None:
    """One host read of w per layer and step through the callback, logging on (issue 29)."""
    import lightning.pytorch as pl

    sys.path.insert(0, str(HERE.parent / "depth"))
    from test_host_reads import count_w_reads

    torch.manual_seed(0)
    model = Net()
    reads_per_step: list[int] = []

    class Count(pl.Callback):
        def on_train_batch_start(self, *args: object) -> None:
            self.start = counter.count

        def on_train_batch_end(self, *args: object) -> None:
            reads_per_step.append(counter.count - self.start)

    t = trainer(max_epochs=3, callbacks=[LearnedDepth(log=True), Count()], log_every_n_steps=1000)
    with count_w_reads(monkeypatch, [model.layer.w]) as counter:
        t.fit(model, data())
    assert reads_per_step == [1] * 9  # forward and penalty together; the logged w is not read
    assert model.layer.built_blocks >= 10  # it grew in those steps, through the forward
    assert_equal_states(model, by_hand(3, 3))
