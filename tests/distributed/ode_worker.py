"""Run by the ODE distributed tests: the real ``infdepth`` command line, under torchrun or not.

``python ode_worker.py DUMP ode params ...`` runs ``infdepth ode params ...`` and then saves
to ``DUMP/rank{RANK}.pt`` the state of every model this process trained and, per training
step, the size and sum of the images its model was given, so that the test can compare the
ranks with each other and with a one-process run.

It trains in float64, as ``ddp_worker.py`` does. In float32 the two summation orders (one
batch, or two halves averaged) give gradients equal to about 1e-7, but Adam turns the
rounding noise in the gradients of the biases that a per-channel GroupNorm cancels (exactly
zero in exact arithmetic) into steps of about a tenth of the learning rate, and the runs
drift apart by about 1e-2 within a dozen steps (measured in one process, without DDP).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

from infdepth import cli
from infdepth.experiments.ode import params


def main() -> int:
    dump = Path(sys.argv[1])
    trained: dict[str, dict[str, torch.Tensor]] = {}
    seen: list[tuple[int, float]] = []
    real = params.train_model
    real_build = params.build_model

    def build(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real_build(*args, **kwargs)

        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if module.training:  # training steps, not evaluations
                seen.append((inputs[0].shape[0], float(inputs[0].double().sum())))

        model.register_forward_pre_hook(record)
        return model

    def keep(kind: str, *args: Any, **kwargs: Any) -> Any:
        row, model = real(kind, *args, **kwargs)
        trained[kind] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return row, model

    real_load = params.load_images

    def load_float64(*args: Any, **kwargs: Any) -> Any:
        data = real_load(*args, **kwargs)
        return dataclasses.replace(data, x_train=data.x_train.double(), x_test=data.x_test.double())

    params.train_model = keep  # type: ignore[assignment]
    params.build_model = build  # type: ignore[assignment]
    params.load_images = load_float64  # type: ignore[assignment]
    torch.set_default_dtype(torch.float64)
    code = cli.main(sys.argv[2:])
    dump.mkdir(parents=True, exist_ok=True)
    torch.save({"models": trained, "seen": seen}, dump / f"rank{os.environ.get('RANK', '0')}.pt")
    return code


if __name__ == "__main__":
    sys.exit(main())
