"""Image reproduction of "Going Deeper" (section IV.B): an all-g-infinity CNN learns its own depth.

Network (REFERENCE.md section 1, ``experiment_01_mnist.py``): frozen random
Conv2D(30, 3x3, same) -> g-inf ``dcnn0`` [Conv2D(30) -> Dropout -> BatchNorm],
h = ReLU -> MaxPool 2x2 -> frozen Conv2D(60) -> g-inf ``dcnn1`` [Conv2D(60) ->
Dropout -> BatchNorm] -> MaxPool 2x2 -> Flatten -> frozen Dense(256) -> g-inf
``dfc0`` [Dense(256) -> Dropout -> BatchNorm] -> frozen Dense(classes).  Every
trainable weight is inside a g-infinity layer.  w l2 5e-5 (conv) / 1e-3 (dense),
gamma l2 1e-8, Adadelta (Keras: lr 1.0, rho 0.95, eps 1e-7) or Adam, batch 512,
categorical cross-entropy.  The 8x8 ``digits`` keep the same layer sequence
(8x8 -> 4x4 -> 2x2 feature maps).  ``--fixed-depth K`` / ``--compare-depths``
train the same network with K always-on residual blocks per layer and no gate.
"""

from __future__ import annotations

import argparse
import copy
import csv
import gzip
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from infdepth import distributed
from infdepth.data.images import DATASETS, ImageData, load_images
from infdepth.depth.layer import InfiniteDepth, depth_layers
from infdepth.errors import InputError
from infdepth.io import seed_everything, write_json
from infdepth.runfolder import open_run
from infdepth.train import CHECKPOINT, FitConfig, fit, load_checkpoint

REFERENCE_CSV = (
    Path(__file__).resolve().parents[1] / "data" / "reference" / "going_deeper_mnist_history.csv.gz"
)
LAYERS = ("dcnn0", "dcnn1", "dfc0")
#: published MNIST numbers (paper section IV.B)
PAPER_PEAK_TEST_ACC = 0.9955
PAPER_FINAL_TEST_ACC = 0.9921
PAPER_FINAL_W = {"dcnn0": 0.339, "dcnn1": 1.928, "dfc0": 0.406}
OPTIMIZERS = ("adadelta", "adam")
DEFAULT_LR = {"adadelta": 1.0, "adam": 1e-3}
#: default epochs per data set (digits: the quick always-available run)
DEFAULT_EPOCHS = {"digits": 30, "mnist": 20, "fashion-mnist": 20, "idx": 20}
DEFAULT_BATCH = {"digits": 64, "mnist": 512, "fashion-mnist": 512, "idx": 512}


@dataclass(frozen=True)
class ImagesConfig:
    """One training run of the image network.

    ``fixed_depth=None`` trains the g-infinity network; an integer ``k >= 1`` trains the
    same network with ``k`` always-on residual blocks per layer and no gate.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 64
    dropout: float = 0.25
    conv_w_l2: float = 5e-5
    dense_w_l2: float = 1e-3
    gamma_l2: float = 1e-8
    optimizer: str = "adadelta"
    lr: float = 1.0
    w0: float = 1.0
    grow_step: int = 5
    channels: int = 30
    dense_units: int = 256
    fixed_depth: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    eval_batch: int = 2000
    precise_bn: int = 10_000


# --------------------------------------------------------------------------- model
def _glorot(layer: nn.Conv2d | nn.Linear, frozen: bool = False) -> nn.Module:
    # Keras defaults: glorot-uniform kernel, zero bias
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    if frozen:
        layer.requires_grad_(False)
    return layer


def conv_block(channels: int, dropout: float) -> nn.Module:
    """``f_i`` of a convolutional g-inf layer: Conv2D(3x3, same) -> Dropout -> BatchNorm (Keras)."""
    return nn.Sequential(
        _glorot(nn.Conv2d(channels, channels, 3, padding=1)),
        nn.Dropout(dropout),
        nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01),
    )


def dense_block(units: int, dropout: float) -> nn.Module:
    """``f_i`` of the dense g-inf layer: Dense -> Dropout -> BatchNorm (Keras momentum and eps)."""
    return nn.Sequential(
        _glorot(nn.Linear(units, units)),
        nn.Dropout(dropout),
        nn.BatchNorm1d(units, eps=1e-3, momentum=0.01),
    )


class ResidualStack(nn.Module):
    """``depth`` always-on residual blocks, ``x <- relu(x + f_i(x))``: the no-gate baseline."""

    def __init__(self, block: Callable[[int], nn.Module], depth: int, gamma_l2: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise InputError(f"fixed depth {depth} is not accepted; expected an integer >= 1")
        self.blocks = nn.ModuleList(block(i) for i in range(depth))
        self.gamma_l2 = gamma_l2

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return x

    def penalty(self) -> Tensor:
        """``gamma_l2 * sum(gamma^2)`` over the blocks' BatchNorms (the g-inf block penalty, no gate)."""
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        terms = [m.weight.square().sum() for m in norms]
        return self.gamma_l2 * torch.stack(terms).sum()


class GoingDeeperCNN(nn.Module):
    """The paper's MNIST network; outputs logits (the frozen softmax layer without the softmax)."""

    def __init__(self, cfg: ImagesConfig, image_shape: tuple[int, int, int], classes: int) -> None:
        super().__init__()
        c_in, height, width = image_shape
        ch, units, p = cfg.channels, cfg.dense_units, cfg.dropout
        self.amp = cfg.amp
        self.stem0 = _glorot(nn.Conv2d(c_in, ch, 3, padding=1), frozen=True)
        self.dcnn0 = self._layer(lambda i: conv_block(ch, p), cfg, cfg.conv_w_l2, 0)
        self.stem1 = _glorot(nn.Conv2d(ch, 2 * ch, 3, padding=1), frozen=True)
        self.dcnn1 = self._layer(lambda i: conv_block(2 * ch, p), cfg, cfg.conv_w_l2, 1)
        flat = 2 * ch * (height // 4) * (width // 4)
        if flat == 0:
            raise InputError(f"images of {height}x{width} are too small for two 2x2 poolings")
        self.fc = _glorot(nn.Linear(flat, units), frozen=True)
        self.dfc0 = self._layer(lambda i: dense_block(units, p), cfg, cfg.dense_w_l2, 2)
        self.head = _glorot(nn.Linear(units, classes), frozen=True)

    @staticmethod
    def _layer(block: Callable[[int], nn.Module], cfg: ImagesConfig, w_l2: float, k: int) -> nn.Module:
        if cfg.fixed_depth is not None:
            return ResidualStack(block, cfg.fixed_depth, cfg.gamma_l2)
        return InfiniteDepth(
            block, h="relu", w0=cfg.w0, w_l2=w_l2, block_l2=cfg.gamma_l2,
            grow_step=cfg.grow_step, seed=cfg.seed * 10 + k,
        )

    def forward(self, x: Tensor) -> Tensor:
        # channels-last convolutions are faster on CPU (oneDNN) and on recent GPUs
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            x = F.max_pool2d(self.dcnn0(self.stem0(x)), 2)
            x = F.max_pool2d(self.dcnn1(self.stem1(x)), 2)
            x = self.dfc0(self.fc(x.flatten(1)))
            return self.head(x).float()

    def fixed_penalty(self) -> Tensor | None:
        """The block penalty of the fixed-depth stacks (g-inf layers add theirs in ``fit``)."""
        terms = [m.penalty() for m in self.modules() if isinstance(m, ResidualStack)]
        return torch.stack(terms).sum() if terms else None


def build_model(cfg: ImagesConfig, image_shape: tuple[int, int, int], classes: int) -> GoingDeeperCNN:
    """The network for ``cfg``, initialised from ``cfg.seed``, on ``cfg.device``."""
    torch.manual_seed(cfg.seed)
    return GoingDeeperCNN(cfg, image_shape, classes).to(cfg.device)


def make_optimizer(cfg: ImagesConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adadelta with the Keras 2 defaults of the original (rho 0.95, eps 1e-7) or Adam."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, rho=0.95, eps=1e-7)
    return torch.optim.Adam(params, lr=cfg.lr)


# --------------------------------------------------------------------------- data order
def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch; the last one is smaller when ``batch_size`` does not divide ``n``."""
    return math.ceil(n / batch_size)


def epoch_batches(
    x: Tensor, y: Tensor, batch_size: int, seed: int
) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``step -> batch``: a fresh permutation per epoch seeded by ``(seed, epoch)``; pure in ``step``."""
    n = len(x)
    per_epoch = steps_per_epoch(n, batch_size)
    cache: dict[int, Tensor] = {}

    def batch(step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, per_epoch)
        if epoch not in cache:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=gen).to(x.device)
        idx = cache[epoch][i * batch_size : (i + 1) * batch_size]
        return x[idx], y[idx]

    return batch


# --------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class ImagesResult:
    """What one run ends with."""

    label: str
    epochs: int
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    final_test_loss: float
    final_w: dict[str, float]
    active_blocks: dict[str, int]
    built_blocks: dict[str, int]
    used_parameters: int
    seconds: float
    images_per_second: float
    final_test_acc_precise_bn: float | None = None


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == y).to(torch.float32).mean()


def run_images(
    cfg: ImagesConfig,
    out_dir: Path,
    *,
    data: ImageData | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> ImagesResult:
    """Train one network; writes ``config.json``, ``metrics.jsonl``, checkpoints and ``summary.json``.

    A fresh run needs an empty ``out_dir`` (``overwrite=True`` replaces a previous run);
    ``resume=True`` continues the run there and refuses changed settings
    (see :func:`infdepth.runfolder.open_run`).
    """
    if resume and not (out_dir / CHECKPOINT).is_file():
        raise InputError(f"no checkpoint at {out_dir / CHECKPOINT}; run without --resume first")
    open_run(out_dir, {**asdict(cfg), "world_size": distributed.current().world}, resume=resume,
             overwrite=overwrite, resumable=RESUMABLE)
    data = load_images(cfg.dataset, cfg.data_dir) if data is None else data
    data = data.to(cfg.device)
    label = "learned" if cfg.fixed_depth is None else f"fixed{cfg.fixed_depth}"
    seed_everything(cfg.seed)
    model = build_model(cfg, data.image_shape, data.classes)
    optimizer = make_optimizer(cfg, model)
    per_epoch = steps_per_epoch(len(data.x_train), cfg.batch_size)
    batch = epoch_batches(data.x_train, data.y_train, cfg.batch_size, cfg.seed)
    previous_seconds = 0.0
    if resume:
        old = load_checkpoint(out_dir / CHECKPOINT)["history"]
        previous_seconds = float(old[-1].get("seconds", 0.0)) if old else 0.0
    started = time.perf_counter()
    # running sums stay tensors so that a GPU run does not synchronise every step
    running: dict[str, Any] = {"loss": 0.0, "acc": 0.0, "n": 0}

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(out, y)
        extra = model.fixed_penalty()
        return loss if extra is None else loss + extra

    def step_metrics(out: Tensor, y: Tensor) -> dict[str, Tensor]:
        acc = _accuracy(out, y)
        running["loss"] = running["loss"] + F.cross_entropy(out, y).detach()
        running["acc"] = running["acc"] + acc.detach()
        running["n"] += 1
        return {"train_acc": acc}

    def evaluate(net: nn.Module, step: int) -> dict[str, float]:
        loss_sum, correct = 0.0, 0
        for i in range(0, len(data.x_test), cfg.eval_batch):
            xb, yb = data.x_test[i : i + cfg.eval_batch], data.y_test[i : i + cfg.eval_batch]
            logits = net(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
        n = len(data.x_test)
        epoch = int(round(_current_step() / per_epoch))
        seconds = previous_seconds + time.perf_counter() - started
        rec = {"epoch": float(epoch), "test_loss": loss_sum / n, "test_acc": correct / n, "seconds": seconds}
        if progress and distributed.current().is_main:
            k = max(running["n"], 1)
            layers = " ".join(
                f"{name}: w={layer.depth:.3f} ({layer.active_blocks} active)"
                for name, layer in depth_layers(net)
            )
            tqdm.write(
                f"[{label}] epoch {epoch:3d}  train loss {float(running['loss']) / k:.4f} acc "
                f"{float(running['acc']) / k:.4f}  test loss {rec['test_loss']:.4f} acc {rec['test_acc']:.4f}"
                f"  {layers}  ({seconds:.0f} s)"
            )
        running.update(loss=0.0, acc=0.0, n=0)
        return rec

    step_counter = {"step": 0}

    def counted_batch(step: int) -> tuple[Tensor, Tensor]:
        step_counter["step"] = step + 1
        return batch(step)

    def _current_step() -> int:
        return step_counter["step"]

    result = fit(
        model,
        optimizer,
        counted_batch,
        loss_fn,
        FitConfig(
            steps=cfg.epochs * per_epoch,
            eval_every=per_epoch,
            log_every=per_epoch,
            checkpoint_every=per_epoch,
            out_dir=out_dir,
            resume=resume,
            progress=progress,
            desc=f"{cfg.dataset} {label}",
            device=cfg.device,
        ),
        evaluate=evaluate,
        step_metrics=step_metrics,
    )
    history = [r for r in result.history if "test_acc" in r]
    accs = [r["test_acc"] for r in history]
    best = int(np.argmax(accs))
    seconds = history[-1]["seconds"]
    layers = depth_layers(model)
    res = ImagesResult(
        label=label,
        epochs=cfg.epochs,
        final_test_acc=accs[-1],
        best_test_acc=accs[best],
        best_epoch=int(history[best]["epoch"]),
        final_test_loss=history[-1]["test_loss"],
        final_w={name: layer.depth for name, layer in layers},
        active_blocks={name: layer.active_blocks for name, layer in layers}
        if layers
        else {name: int(cfg.fixed_depth or 0) for name in LAYERS},
        built_blocks={name: layer.built_blocks for name, layer in layers},
        used_parameters=_used_parameters(model),
        seconds=seconds,
        images_per_second=len(data.x_train) * cfg.epochs / max(seconds, 1e-9),
        final_test_acc_precise_bn=_precise_bn_accuracy(model, data, cfg),
    )
    if distributed.current().is_main:
        write_json(out_dir / "summary.json", summarise(res, history, cfg))
        plot_run(out_dir, history, label)
    return res


def precise_bn(model: nn.Module, x: Tensor, batch_size: int) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are recomputed on ``x`` with dropout off.

    The blocks put Dropout before BatchNorm (as the original), so the running variance
    is that of dropped-out activations, larger than what the layer sees at test time;
    recomputing the statistics without dropout removes that shift ("precise BN").
    """
    net = copy.deepcopy(model).eval()
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            net(x[i : i + batch_size])
    return net.eval()


def _precise_bn_accuracy(model: nn.Module, data: ImageData, cfg: ImagesConfig) -> float | None:
    if cfg.precise_bn <= 0:
        return None
    net = precise_bn(model, data.x_train[: cfg.precise_bn], cfg.batch_size)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data.x_test), cfg.eval_batch):
            logits = net(data.x_test[i : i + cfg.eval_batch])
            correct += int((logits.argmax(dim=1) == data.y_test[i : i + cfg.eval_batch]).sum())
    return correct / len(data.x_test)


def _used_parameters(model: GoingDeeperCNN) -> int:
    used = 0
    for name in LAYERS:
        layer = getattr(model, name)
        if isinstance(layer, InfiniteDepth):
            used += layer.used_parameters
        else:
            used += sum(p.numel() for p in layer.parameters() if p.requires_grad)
    return used


#: settings that may change when a run is resumed (recorded in config.json under "resumes")
RESUMABLE = ("epochs", "device", "eval_batch", "amp", "precise_bn", "world_size")


# --------------------------------------------------------------------------- reference and summary
def reference_history(path: Path = REFERENCE_CSV) -> dict[str, list[float]]:
    """The original MNIST run, per epoch: epoch, w per layer, val_acc, val_loss, train_loss, train_acc."""
    if not path.is_file():
        return {}
    out: dict[str, list[float]] = {}
    with gzip.open(path, "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                out.setdefault(key, []).append(float(value))
    return out


def summarise(res: ImagesResult, history: list[dict[str, Any]], cfg: ImagesConfig) -> dict[str, Any]:
    """The run's result, its per-epoch history and the paper's MNIST numbers beside it."""
    ref = reference_history()
    epochs = [int(r["epoch"]) for r in history]
    reference: dict[str, Any] = {
        "paper_peak_test_acc": PAPER_PEAK_TEST_ACC,
        "paper_final_test_acc": PAPER_FINAL_TEST_ACC,
        "paper_final_w": PAPER_FINAL_W,
    }
    if ref:
        last = min(epochs[-1], len(ref["epoch"]))
        reference["original_run_at_same_epoch"] = {
            "epoch": last,
            "val_acc": ref["val_acc"][last - 1],
            "w": {name: ref[f"w_{name}"][last - 1] for name in LAYERS},
        }
        reference["original_run_final"] = {
            "epoch": int(ref["epoch"][-1]),
            "val_acc": ref["val_acc"][-1],
            "max_val_acc": max(ref["val_acc"]),
            "w": {name: ref[f"w_{name}"][-1] for name in LAYERS},
        }
    return {
        "config": asdict(cfg),
        "result": asdict(res),
        "history": {
            "epoch": epochs,
            "train_loss": [r["loss"] for r in history],
            "train_acc": [r.get("train_acc") for r in history],
            "test_loss": [r["test_loss"] for r in history],
            "test_acc": [r["test_acc"] for r in history],
            "w": {name: [r["w"].get(name) for r in history] for name in res.final_w},
            "active_blocks": {name: [r["active_blocks"].get(name) for r in history] for name in res.final_w},
            "seconds": [r["seconds"] for r in history],
        },
        "reference_mnist": reference,
    }


# --------------------------------------------------------------------------- figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(out_dir: Path, history: list[dict[str, Any]], label: str) -> None:
    """Accuracy, loss and w per layer against epoch, the original MNIST run dashed beside ours."""
    plt = _pyplot()
    ref = reference_history()
    epochs = np.array([r["epoch"] for r in history])
    horizon = int(epochs.max())
    ref_ep = np.array(ref.get("epoch", []))
    mask = ref_ep <= max(horizon, 10)
    for key, title in (("acc", "accuracy"), ("loss", "loss")):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        train_key = "train_acc" if key == "acc" else "loss"
        ax.plot(epochs, [r[train_key] for r in history], "C0-", label=f"train ({label})")
        ax.plot(epochs, [r[f"test_{key}"] for r in history], "C1-", lw=2, label=f"test ({label})")
        if ref:
            ax.plot(ref_ep[mask], np.array(ref[f"train_{key}"])[mask], "C0:", lw=1,
                    label="original MNIST, train (last batch)")
            ax.plot(ref_ep[mask], np.array(ref[f"val_{key}"])[mask], "C1--", lw=1,
                    label="original MNIST, test")
        if key == "acc":
            lo = min(min(r["test_acc"] for r in history), 0.8)
            ax.set_ylim(max(lo, 0.0), 1.0)
        else:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{title} against epoch")
        fig.tight_layout()
        fig.savefig(out_dir / f"images_{key}.png", dpi=90)
        plt.close(fig)
    names = sorted({k for r in history for k in r["w"]})
    if not names:
        return
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for j, name in enumerate(names):
        ax.plot(epochs, [r["w"][name] for r in history], f"C{j}-", lw=2, label=f"{name} (ours)")
        if ref:
            ax.plot(ref_ep[mask], np.array(ref[f"w_{name}"])[mask], f"C{j}--", lw=1,
                    label=f"{name} (original MNIST)")
            ax2.plot(ref_ep, ref[f"w_{name}"], f"C{j}-", lw=1, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("w (depth)")
    ax.set_title("w per layer against epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_title("original MNIST run, all 5000 epochs")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "images_w.png", dpi=90)
    plt.close(fig)


def plot_depth_comparison(out_dir: Path, learned: ImagesResult, fixed: list[ImagesResult]) -> None:
    """Test accuracy against fixed depth, the learned run marked at its mean active depth."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ks = [int(r.label.removeprefix("fixed")) for r in fixed]
    ax.plot(ks, [r.final_test_acc for r in fixed], "o-", color="C0", label="fixed depth, final")
    ax.plot(ks, [r.best_test_acc for r in fixed], "s:", color="C0", alpha=0.6, label="fixed depth, best")
    depth = float(np.mean(list(learned.active_blocks.values())))
    blocks = "/".join(str(v) for v in learned.active_blocks.values())
    ax.plot([depth], [learned.final_test_acc], "*", ms=16, color="C3",
            label=f"learned (active blocks {blocks}), final")
    ax.axhline(learned.final_test_acc, color="C3", lw=0.8, ls="--")
    ax.set_xlabel("blocks per layer (learned: mean active blocks)")
    ax.set_ylabel("test accuracy")
    ax.set_xticks(ks)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("fixed depth against learned depth")
    fig.tight_layout()
    fig.savefig(out_dir / "images_fixed_depth.png", dpi=90)
    plt.close(fig)


def run_comparison(
    cfg: ImagesConfig, out_dir: Path, depths: list[int], *, resume: bool, progress: bool
) -> dict[str, Any]:
    """The learned run plus one fixed-depth run per entry of ``depths``; comparison figure and JSON."""
    data = load_images(cfg.dataset, cfg.data_dir)

    def one(c: ImagesConfig, folder: Path) -> ImagesResult:
        again = resume and (folder / CHECKPOINT).is_file()
        # a member run that had not reached its first checkpoint starts again from scratch
        return run_images(c, folder, data=data, resume=again, overwrite=resume and not again,
                          progress=progress)

    learned = one(cfg, out_dir / "learned")
    fixed = [one(replace(cfg, fixed_depth=k), out_dir / f"fixed{k}") for k in depths]
    summary = {"learned": asdict(learned), "fixed": [asdict(r) for r in fixed]}
    if distributed.current().is_main:
        plot_depth_comparison(out_dir, learned, fixed)
        write_json(out_dir / "comparison.json", summary)
    return summary


# --------------------------------------------------------------------------- command line
def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def register(sub: Any) -> None:
    """Add the ``images`` subcommand."""
    p = sub.add_parser(
        "images",
        help="reproduce the MNIST experiment (all-g-infinity CNN) on digits, MNIST or Fashion-MNIST",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="digits",
                   help=f"data set: one of {', '.join(DATASETS)} (idx: any MNIST-format folder)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the four MNIST-format IDX files (raw or .gz); default: "
                        "the data set's standard place")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default per data set: " +
                        ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ")")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step (default: 512 as the paper; 64 for digits)")
    p.add_argument("--dropout", type=float, default=0.25,
                   help="dropout inside each sub-layer: 0.25 (the original code) or 0.1 (the paper's text)")
    p.add_argument("--conv-w-l2", type=float, default=5e-5, help="l2 factor on w of the two conv layers")
    p.add_argument("--dense-w-l2", type=float, default=1e-3, help="l2 factor on w of the dense layer")
    p.add_argument("--gamma-l2", type=float, default=1e-8,
                   help="l2 factor on each sub-layer's BatchNorm gamma (times delta_w(i + eps))")
    p.add_argument("--optimizer", default="adadelta", help=f"one of {', '.join(OPTIMIZERS)}")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 1.0 for adadelta as Keras, 1e-3 for adam)")
    p.add_argument("--w0", type=float, default=1.0, help="initial depth w of every g-inf layer")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data order and dropout")
    p.add_argument("--fixed-depth", type=int, default=None,
                   help="train the no-gate baseline with this many always-on blocks per layer instead")
    p.add_argument("--compare-depths", type=_int_list, default=None,
                   help="also train fixed-depth baselines with these blocks per layer, e.g. 1,2,3,5, "
                        "and plot test accuracy against depth")
    p.add_argument("--precise-bn", type=int, default=10_000,
                   help="after training, also report the test accuracy with BatchNorm statistics "
                        "recomputed on this many training images without dropout (0: skip)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (0: torch's default); 1 is fastest on a shared machine")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (mixed precision)")
    p.add_argument("--out", type=Path, default=Path("runs/images"), help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (only --epochs, --device, "
                        "--amp, --precise-bn may differ from its config.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the previous run in --out instead of refusing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=main, data_parallel=True)


def config_from_args(args: argparse.Namespace) -> ImagesConfig:
    """Validate the parsed arguments; bad values raise :class:`InputError` naming the flag."""
    if args.dataset not in DATASETS:
        raise InputError(
            f"--dataset {args.dataset!r} is not accepted; choose one of {', '.join(map(repr, DATASETS))}"
        )
    if args.optimizer not in OPTIMIZERS:
        raise InputError(
            f"--optimizer {args.optimizer!r} is not accepted; "
            f"choose one of {', '.join(map(repr, OPTIMIZERS))}"
        )
    epochs = DEFAULT_EPOCHS[args.dataset] if args.epochs is None else args.epochs
    batch = DEFAULT_BATCH[args.dataset] if args.batch_size is None else args.batch_size
    lr = DEFAULT_LR[args.optimizer] if args.lr is None else args.lr
    for flag, value in (("--epochs", epochs), ("--batch-size", batch)):
        if value < 1:
            raise InputError(f"{flag}={value} is not accepted; expected an integer >= 1")
    if not 0 <= args.dropout < 1:
        raise InputError(f"--dropout={args.dropout} is not accepted; expected a number in [0, 1)")
    for flag, value in (("--conv-w-l2", args.conv_w_l2), ("--dense-w-l2", args.dense_w_l2),
                        ("--gamma-l2", args.gamma_l2)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{flag}={value} is not accepted; expected a finite number >= 0")
    if not (math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr={lr} is not accepted; expected a finite number > 0")
    if args.precise_bn < 0:
        raise InputError(f"--precise-bn={args.precise_bn} is not accepted; expected an integer >= 0")
    if not math.isfinite(args.w0):
        raise InputError(f"--w0={args.w0} is not accepted; expected a finite number")
    depths = [args.fixed_depth] if args.fixed_depth is not None else []
    depths += args.compare_depths or []
    if any(k < 1 for k in depths):
        raise InputError(f"fixed depths {depths} are not accepted; each must be an integer >= 1")
    if args.fixed_depth is not None and args.compare_depths:
        raise InputError("--fixed-depth and --compare-depths exclude each other")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device={args.device!r} is not accepted: CUDA is not available here; use cpu")
    try:
        torch.device(args.device)
    except RuntimeError:
        raise InputError(f"--device={args.device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    return ImagesConfig(
        dataset=args.dataset,
        data_dir=None if args.data_dir is None else str(args.data_dir),
        epochs=epochs,
        batch_size=batch,
        dropout=args.dropout,
        conv_w_l2=args.conv_w_l2,
        dense_w_l2=args.dense_w_l2,
        gamma_l2=args.gamma_l2,
        optimizer=args.optimizer,
        lr=lr,
        w0=args.w0,
        fixed_depth=args.fixed_depth,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        precise_bn=args.precise_bn,
    )


def main(args: argparse.Namespace) -> int:
    """Run the experiment described by the parsed ``args``; print the result."""
    cfg = config_from_args(args)
    if args.threads < 0:
        raise InputError(f"--threads={args.threads} is not accepted; expected an integer >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    ctx = distributed.setup(cfg.device)
    if args.compare_depths:
        study = {**asdict(cfg), "compare_depths": args.compare_depths, "world_size": ctx.world}
        open_run(args.out, study, resume=args.resume, overwrite=args.overwrite, resumable=RESUMABLE)
        summary = run_comparison(cfg, args.out, args.compare_depths, resume=args.resume, progress=progress)
        if not ctx.is_main:
            return 0
        rows = [summary["learned"], *summary["fixed"]]
        for r in rows:
            print(f"{r['label']:>8}: final test acc {r['final_test_acc']:.4f}  best "
                  f"{r['best_test_acc']:.4f} (epoch {r['best_epoch']})  active blocks "
                  f"{r['active_blocks']}  {r['seconds']:.0f} s")
        print(f"results: {args.out / 'comparison.json'}; figure: {args.out / 'images_fixed_depth.png'}")
        return 0
    res = run_images(cfg, args.out, resume=args.resume, overwrite=args.overwrite, progress=progress)
    if not ctx.is_main:
        return 0
    ws = "  ".join(f"{k}: w={v:.3f}" for k, v in res.final_w.items())
    print(f"{cfg.dataset} {res.label}: final test acc {res.final_test_acc:.4f}, best "
          f"{res.best_test_acc:.4f} (epoch {res.best_epoch}), {res.epochs} epochs, "
          f"{res.seconds:.1f} s  {ws}")
    if res.final_test_acc_precise_bn is not None:
        print(f"final test acc with BatchNorm statistics recomputed without dropout: "
              f"{res.final_test_acc_precise_bn:.4f}")
    print(f"paper (MNIST): peak test acc {PAPER_PEAK_TEST_ACC:.4f}, final w "
          + " / ".join(f"{v:.2f}" for v in PAPER_FINAL_W.values()))
    print(f"results: {args.out / 'summary.json'}; figures: {args.out}/images_*.png")
    return 0
