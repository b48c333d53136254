"""dw_parts: the three parts of dL/dw against finite differences, and a probe that changes nothing."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from torch import nn

from infdepth.data.images import ImageData, load_images
from infdepth.depth import InfiniteDepth
from infdepth.depth.diagnostics import PARTS, dw_parts
from infdepth.experiments._common import RunContext
from infdepth.experiments.depth.images import Config, run_images
from infdepth.models.going_deeper import LAYERS


def model() -> nn.Sequential:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5)), h="relu", w0=2.4,
                          w_l2=3e-2, block_l2=0.2, seed=1)
    return nn.Sequential(nn.Linear(3, 5), layer, nn.Linear(5, 2)).double()


def test_parts_match_finite_differences_in_float64() -> None:
    net = model()
    g = net[1]
    x = torch.randn(32, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(32) % 2
    loss_fn = nn.functional.cross_entropy
    parts = dw_parts(net, x, y, loss_fn)["1"]
    assert list(parts) == list(PARTS)

    def at(w: float) -> tuple[float, float, float]:
        with torch.no_grad():
            g.w.fill_(w)
            net.train()
            data = float(loss_fn(net(x), y))
            w_l2 = g.w_l2 * w * w
            return data, w_l2, float(g.penalty()) - w_l2

    w0, h = g.depth, 1e-6
    plus, minus = at(w0 + h), at(w0 - h)
    fd = [(a - b) / (2 * h) for a, b in zip(plus, minus)]
    for name, expected in zip(PARTS, fd):
        assert abs(parts[name] - expected) <= 1e-6 * max(1.0, abs(expected)), (name, parts[name], expected)
    assert parts["data"] != 0 and parts["block_l2"] > 0  # each part really measured


def test_probe_restores_buffers_modes_and_random_streams() -> None:
    net = nn.Sequential(model(), nn.Dropout(0.5)).eval()
    before = {n: b.clone() for n, b in net.named_buffers()}
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.arange(16) % 2
    rng = torch.get_rng_state()
    dw_parts(net, x, y, nn.functional.cross_entropy)
    assert not any(m.training for m in net.modules())
    for n, b in net.named_buffers():
        torch.testing.assert_close(b, before[n], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)


def test_images_run_logs_dw_and_trains_exactly_as_without(tmp_path) -> None:
    d = load_images("digits")
    data = ImageData("digits", d.x_train[:256], d.y_train[:256], d.x_test[:128], d.y_test[:128], 10, "test")
    cfg = Config(dataset="digits", epochs=2, batch_size=64, channels=4, dense_units=16, precise_bn=0)
    plain = run_images(cfg, RunContext(out=tmp_path / "a", progress=False), data=data)
    probed = run_images(replace(cfg, dw_probe=64), RunContext(out=tmp_path / "b", progress=False), data=data)
    assert probed.final_w == plain.final_w and probed.final_test_acc == plain.final_test_acc
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    dws = [r["dw"] for r in records if "dw" in r]
    assert len(dws) == 2 and all(set(dw) == set(LAYERS) and all(set(p) == set(PARTS) for p in dw.values())
                                 for dw in dws)
    plain_lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert all("dw" not in json.loads(line) for line in plain_lines)
