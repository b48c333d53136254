"""FixDepthAt (learn-then-fix) through fit and through the images command's path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from infdepth.data.images import ImageData, load_images
from infdepth.depth import InfiniteDepth
from infdepth.depth.schedule import FixDepthAt
from infdepth.errors import InputError
from infdepth.experiments._common import RunContext
from infdepth.experiments.depth.images import Config, run_images
from infdepth.models.going_deeper import LAYERS
from infdepth.train import FitConfig, fit


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), h="relu", w0=1.7,
                          w_l2=1e-3, block_l2=1e-3, seed=2)
    return nn.Sequential(nn.Linear(3, 4), layer, nn.Linear(4, 1), nn.Flatten(0))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(32, 3, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).float()


def train(out, steps: int, resume: bool = False) -> nn.Sequential:
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    fit(model, opt, batch, nn.functional.binary_cross_entropy_with_logits,
        FitConfig(steps=steps, eval_every=3, log_every=3, checkpoint_every=3, out_dir=out, resume=resume,
                  progress=False), scheduler=FixDepthAt(model, at=6))
    return model


def test_depth_is_fixed_at_the_step_and_a_resume_continues_exactly(tmp_path) -> None:
    straight = train(tmp_path / "a", 12)
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    ws = [r["w"]["1"] for r in records]
    assert ws[0] != ws[1]  # w learns before step 6 ...
    assert ws[1] == ws[2] == ws[3]  # ... and not after (records at steps 3, 6, 9, 12)
    # metrics.jsonl says which layers train as fixed stacks, from the record at the fix on
    assert [r.get("depth_fixed") for r in records] == [None, ["1"], ["1"], ["1"]]
    assert straight[1].frozen_gates is not None
    for stop in (3, 9):  # interrupted before and after the fix
        train(tmp_path / f"b{stop}", stop)
        resumed = train(tmp_path / f"b{stop}", 12, resume=True)
        for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items()):
            assert torch.equal(p, q), (stop, name)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InputError, match="at"):
        FixDepthAt(tiny(), at=0)
    with pytest.raises(InputError, match="threshold"):
        FixDepthAt(tiny(), at=3, threshold=2.0)
    with pytest.raises(InputError, match="no InfiniteDepth"):
        FixDepthAt(nn.Linear(2, 2), at=3)
    schedule = FixDepthAt(tiny(), at=3)
    with pytest.raises(InputError, match="step 5"):
        schedule.load_state_dict({"steps": 1, "at": 5, "fixed": {}})


def test_images_learn_then_fix_trains_the_fixed_network(tmp_path) -> None:
    d = load_images("digits")
    data = ImageData("digits", d.x_train[:256], d.y_train[:256], d.x_test[:128], d.y_test[:128], 10, "test")
    cfg = Config(dataset="digits", epochs=4, batch_size=64, channels=4, dense_units=16, precise_bn=0,
                 w0=2.5, fix_depth_at=0.5)
    res = run_images(cfg, RunContext(out=tmp_path, progress=False), data=data)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    w = [r["w"] for r in records]
    assert w[0] != w[1] and w[1] == w[2] == w[3]  # fixed after epoch 2 of 4
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    for name in LAYERS:
        assert len(saved[f"{name}.fixed_gates"]) == res.active_blocks[name]
