"""Training throughput of every contender of ``infdepth study`` on Fashion-MNIST-sized images.

One training step (forward, loss + penalties, backward, optimizer step, growth check) of each
contender at its own study batch size, on random 28x28 images, steps interleaved (the shared
harness), median of the rounds, 1 torch thread; printed as images per second. These rates,
times the images a contender trains on, give each study member's compute on an idle core,
independent of whatever ran beside the long study runs:

- ``learned_w1``: the all-g-inf CNN at its start (w = 1: one sub-layer per layer);
- ``learned_final``: the same at ``--learned-w`` (default: the depths the Fashion-MNIST run reached);
- ``fixedK``: the CNN with K always-on blocks per layer, K in 0, 1, 2, 3, 5;
- ``odenet``: the ODE-Net of ``ode params`` (batch 64, Dopri5 rtol = atol = 1e-3, adjoint;
  its NFE, so its speed, changes as it trains: this is the freshly initialised net).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace

import torch
from _harness import Harness, add_arguments
from torch import nn

from infdepth import grow
from infdepth.experiments.depth.images import Config as ImagesConfig
from infdepth.experiments.depth.images import build_model, make_optimizer
from infdepth.experiments.depth.study_speed import training_step
from infdepth.experiments.ode import params

SHAPE = (1, 28, 28)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: int) -> Callable[[], None]:
    # the step `infdepth study` times for every member's compute, on random images
    return training_step(model, optimizer, torch.rand(batch, *SHAPE), torch.randint(0, 10, (batch,)))


def _cnn(cfg: ImagesConfig, ws: tuple[float, ...] | None = None) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(cfg, SHAPE, 10)
    if ws is not None:
        with torch.no_grad():
            for name, w in zip(("dcnn0", "dcnn1", "dfc0"), ws):
                getattr(model, name).w.fill_(w)
    optimizer = make_optimizer(cfg, model)
    grow(model, optimizer)
    # a learning rate of zero keeps w (and so the depth) where it was set while timing
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    return _step(model, optimizer, cfg.batch_size or 512)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, repeats=3, quick=2)  # steps of 0.2-4 s: 3 rounds keep make bench short
    parser.add_argument("--learned-w", default="0.60,1.27,1.75",
                        help="w per layer (dcnn0,dcnn1,dfc0) of the learned contender at its end")
    args = parser.parse_args()
    h = Harness(args, "study contenders: training images per second (Fashion-MNIST sizes)")
    base = ImagesConfig(dataset="fashion-mnist")
    final = tuple(float(v) for v in args.learned_w.split(","))
    steps: dict[str, Callable[[], None]] = {"learned_w1": _cnn(base), "learned_final": _cnn(base, final)}
    for k in (0, 1, 2, 3, 5):
        steps[f"fixed{k}"] = _cnn(replace(base, fixed_depth=k))
    cfg = params.Config(dataset="fashion-mnist", models=("odenet",))
    torch.manual_seed(0)
    ode = params.build_model("odenet", cfg, SHAPE, 10)
    steps["odenet"] = _step(ode, torch.optim.Adam(ode.parameters(), lr=0.0), cfg.batch)
    batch = {name: (cfg.batch if name == "odenet" else base.batch_size or 512) for name in steps}
    seconds = h.time(steps, warmup=1)
    h.times("step", seconds)
    for name, s in seconds.items():
        h.ratio(f"{name}_images_per_second", batch[name] / s)
    h.note(f"learned_final: w = {final}, active sub-layers "
           + "/".join(str(max(0, -int(-w // 1))) for w in final))
    h.finish()


if __name__ == "__main__":
    main()
