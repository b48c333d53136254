"""Parameters against accuracy: 6 residual blocks against one ODE block (Chen et al. 2018, Table 1).

The paper's set-up, scaled to the data: a downsampling stem (3x3 conv, then stride-2
4x4 convs down to 4x4 for 8x8 digits or 7x7 for 28x28 images), then either six
residual blocks ``h + g(h)`` or one ODE block ``dh/dt = g(t, h)`` on ``[0, 1]``
(``g``: norm, ReLU, 3x3 conv, norm, ReLU, 3x3 conv, norm; the ODE's convs also see
``t`` as an extra channel), then norm, ReLU, global average pooling and a linear
layer. A ResNet with a single block is trained as well, to separate "fewer
parameters" from "continuous depth". The ODE block uses Dopri5 and the adjoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from infdepth.data.images import load_images
from infdepth.errors import InputError
from infdepth.experiments.ode_common import check_float, check_int, count_params, save_figure
from infdepth.io import append_jsonl, seed_everything, write_json
from infdepth.ode import Adjoint, Backprop, ODEBlock

KINDS = ("resnet", "resnet-1", "odenet")


@dataclass(frozen=True)
class ParamsConfig:
    """One comparison run."""

    dataset: str = "digits"
    data_dir: str | None = None
    channels: int = 32
    res_blocks: int = 6
    epochs: int = 12
    batch: int = 64
    lr: float = 1e-2
    rtol: float = 1e-3
    atol: float = 1e-3
    adjoint: bool = True
    train_subset: int | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class ParamsRow:
    """Result of training one model."""

    kind: str
    params: int
    test_accuracy: float
    test_error: float
    nfe_forward: float | None
    nfe_backward: float | None
    seconds: float


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c), c)


class ConcatConv(nn.Module):
    """3x3 convolution that also sees the time ``t`` as a constant extra channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c + 1, c, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        out: torch.Tensor = self.conv(torch.cat([tt, x], 1))
        return out


class ODEFunc(nn.Module):
    """``g(t, h)`` of the ODE block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.n1, self.c1, self.n2, self.c2, self.n3 = (_norm(c), ConcatConv(c), _norm(c),
                                                       ConcatConv(c), _norm(c))

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = self.c1(t, F.relu(self.n1(h)))
        out = self.c2(t, F.relu(self.n2(out)))
        result: torch.Tensor = self.n3(out)
        return result


class ResBlock(nn.Module):
    """``h + g(h)`` with the same ``g`` as the ODE block, without the time channel."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.g = nn.Sequential(_norm(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), _norm(c),
                               nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), _norm(c))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = h + self.g(h)
        return out


def build(kind: str, cfg: ParamsConfig, image_size: int) -> nn.Module:
    """Stem, core of the given kind, head."""
    c = cfg.channels
    layers: list[nn.Module] = [nn.Conv2d(1, c, 3, padding=1), _norm(c), nn.ReLU()]
    size = image_size
    while size > 7:  # 8 -> 4, 28 -> 14 -> 7
        layers += [nn.Conv2d(c, c, 4, stride=2, padding=1), _norm(c), nn.ReLU()]
        size //= 2
    if kind == "resnet":
        layers += [ResBlock(c) for _ in range(cfg.res_blocks)]
    elif kind == "resnet-1":
        layers.append(ResBlock(c))
    else:
        layers.append(ODEBlock(ODEFunc(c), t1=1.0, rtol=cfg.rtol, atol=cfg.atol,
                               adjoint=Adjoint() if cfg.adjoint else Backprop()))
    layers += [_norm(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers)


def _ode_block(model: nn.Module) -> ODEBlock | None:
    return next((m for m in model.modules() if isinstance(m, ODEBlock)), None)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / x.shape[0]


def train_one(kind: str, cfg: ParamsConfig, out: Path, progress: bool) -> ParamsRow:
    """Train one model; per-epoch metrics stream to ``metrics.jsonl``."""
    data = load_images(cfg.dataset, cfg.data_dir)
    device = torch.device(cfg.device)
    gen = seed_everything(cfg.seed)
    x_tr, y_tr = data.x_train, data.y_train
    if cfg.train_subset is not None:
        idx = torch.randperm(x_tr.shape[0], generator=gen)[: cfg.train_subset]
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    x_tr, y_tr = x_tr.to(device), y_tr.to(device)
    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    torch.manual_seed(cfg.seed)
    model = build(kind, cfg, x_tr.shape[-1]).to(device)
    block = _ode_block(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = -(-x_tr.shape[0] // cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=steps_per_epoch)
    start = time.perf_counter()
    nfe_f = nfe_b = 0.0
    bar = tqdm(range(cfg.epochs), desc=kind, disable=not progress)
    for epoch in bar:
        perm = torch.randperm(x_tr.shape[0], generator=gen).to(device)
        total = 0.0
        if block is not None:
            block.reset_nfe()
        for i in range(0, x_tr.shape[0], cfg.batch):
            sel = perm[i : i + cfg.batch]
            loss = F.cross_entropy(model(x_tr[sel]), y_tr[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * sel.shape[0]
        if block is not None:
            nfe_f = block.nfe_forward / steps_per_epoch
            nfe_b = block.nfe_backward / steps_per_epoch
        acc = _accuracy(model, x_te, y_te, 256)
        record = {"kind": kind, "epoch": epoch + 1, "train_loss": total / x_tr.shape[0],
                  "test_accuracy": acc, "nfe_forward": nfe_f if block else None,
                  "nfe_backward": nfe_b if block else None}
        append_jsonl(out / "metrics.jsonl", record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{acc:.3f}")
    seconds = time.perf_counter() - start
    acc = _accuracy(model, x_te, y_te, 256)
    return ParamsRow(kind, count_params(model), acc, 1 - acc, nfe_f if block else None,
                     nfe_b if block else None, seconds)


def run_params(cfg: ParamsConfig, out: Path, progress: bool = True) -> list[ParamsRow]:
    """Train every kind; write ``summary.json`` and the figure."""
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()
    rows = [train_one(kind, cfg, out, progress) for kind in KINDS]
    write_json(out / "summary.json", {"dataset": cfg.dataset, "rows": [r.__dict__ for r in rows]})
    _plot(rows, out / "params_vs_accuracy.png", cfg.dataset)
    return rows


def _plot(rows: list[ParamsRow], path: Path, dataset: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for r in rows:
        ax.scatter(r.params / 1e3, 100 * r.test_error, s=50)
        ax.annotate(r.kind, (r.params / 1e3, 100 * r.test_error), textcoords="offset points",
                    xytext=(5, 5))
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"Parameters against error ({dataset})")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def check_config(cfg: ParamsConfig) -> None:
    """InputError on unusable settings."""
    check_int("--channels", cfg.channels)
    check_int("--res-blocks", cfg.res_blocks)
    check_int("--epochs", cfg.epochs)
    check_int("--batch", cfg.batch)
    check_float("--lr", cfg.lr)
    check_float("--rtol", cfg.rtol)
    check_float("--atol", cfg.atol)
    if cfg.train_subset is not None:
        check_int("--train-subset", cfg.train_subset)
    if cfg.dataset not in ("digits", "mnist", "fashion-mnist", "idx"):
        raise InputError(f"--dataset {cfg.dataset!r} is not accepted; choose digits, mnist, "
                         "fashion-mnist or idx")


def table(rows: list[ParamsRow]) -> str:
    """Plain-text summary table."""
    lines = [f"{'model':>9} {'params':>8} {'test acc':>9} {'NFE fwd':>8} {'NFE bwd':>8} "
             f"{'seconds':>8}"]
    for r in rows:
        nf = "-" if r.nfe_forward is None else f"{r.nfe_forward:.1f}"
        nb = "-" if r.nfe_backward is None else f"{r.nfe_backward:.1f}"
        lines.append(f"{r.kind:>9} {r.params:>8} {r.test_accuracy:>9.4f} {nf:>8} {nb:>8} "
                     f"{r.seconds:>8.1f}")
    return "\n".join(lines)
