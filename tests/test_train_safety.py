"""fit's checkpoints are safe to load, a refused resume writes nothing, resumes are bitwise
at any checkpoint step, and divergence of the loss, w or the penalty stops the run (issue 28)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from infdepth.depth import InfiniteDepth
from infdepth.errors import DivergenceError, InputError
from infdepth.train import CHECKPOINT, METRICS, FitConfig, fit, load_checkpoint


def make() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.2)),
                          h="relu", w0=1.8, w_l2=1e-3, block_l2=1e-3, grow_step=2, seed=0)
    model = nn.Sequential(nn.Linear(4, 6), layer, nn.Linear(6, 1), nn.Flatten(0))
    return model, torch.optim.Adam(model.parameters(), lr=5e-2)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 4, generator=gen)
    return x, (x[:, 0] * x[:, 1] > 0).float()


class Payload:
    """Unpickling this creates the file ``target``: proof that loading ran code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def _fit(out: Path, steps: int, *, resume: bool = False, batch_fn=batch, checkpoint_every: int = 7) -> list:
    model, opt = make()
    result = fit(model, opt, batch_fn, nn.BCEWithLogitsLoss(),
                 FitConfig(steps=steps, eval_every=10, log_every=10, checkpoint_every=checkpoint_every,
                           out_dir=out, resume=resume, progress=False),
                 evaluate=lambda m, step: {"val_loss": float(nn.BCEWithLogitsLoss()(m(batch(-1)[0]),
                                                                                    batch(-1)[1]))},
                 step_metrics=lambda out, y: {"acc": ((out > 0).float() == y).float().mean()})
    return result.history


def test_a_pickle_payload_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    ckpt = tmp_path / "run" / CHECKPOINT
    ckpt.parent.mkdir()
    torch.save({"step": 1, "model": {}, "optimizer": {}, "rng": {}, "history": [Payload(target)]}, ckpt)
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(ckpt)
    assert not target.exists(), "loading the checkpoint ran the payload"
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(Payload(target)))  # a bare pickle, not even a torch zip file
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(plain)
    assert not target.exists()


def test_every_checkpoint_of_fit_loads_with_the_safe_loader(tmp_path: Path) -> None:
    _fit(tmp_path, 14)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 14 and isinstance(ckpt["window"], dict)


def test_resume_off_the_log_grid_is_bitwise(tmp_path: Path) -> None:
    """Checkpoint every 7 steps, log every 10: the window's partial sums travel in the checkpoint."""
    full = _fit(tmp_path / "full", 30)

    def interrupted(step: int):
        if step == 9:  # after the checkpoint at step 7, inside the window 1..10
            raise KeyboardInterrupt
        return batch(step)

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "part", 30, batch_fn=interrupted)
    assert load_checkpoint(tmp_path / "part" / CHECKPOINT)["step"] == 7
    resumed = _fit(tmp_path / "part", 30, resume=True)
    assert resumed == full
    assert (tmp_path / "part" / METRICS).read_bytes() == (tmp_path / "full" / METRICS).read_bytes()


def test_a_directory_in_place_of_the_checkpoint_is_refused_before_any_write(tmp_path: Path) -> None:
    _fit(tmp_path, 10, checkpoint_every=5)
    metrics = (tmp_path / METRICS).read_bytes()
    (tmp_path / CHECKPOINT).unlink()
    (tmp_path / CHECKPOINT).mkdir()
    for resume in (False, True):
        with pytest.raises(InputError, match="not a file"):
            _fit(tmp_path, 20, resume=resume)
        assert (tmp_path / METRICS).read_bytes() == metrics


def test_a_non_finite_penalty_stops_the_run_and_no_bare_infinity_is_written(tmp_path: Path) -> None:
    model, opt = make()
    layer = model[1]

    def blown(step: int):
        if step == 3:  # a finite w whose penalty overflows: w_l2 * w**2 = inf
            with torch.no_grad():
                layer.w.fill_(-1e30)
        return batch(step)

    with pytest.raises(DivergenceError, match=r"step 4.*penalty"):
        fit(model, opt, blown, nn.BCEWithLogitsLoss(),
            FitConfig(steps=20, log_every=2, eval_every=2, out_dir=tmp_path, progress=False))
    for line in (tmp_path / METRICS).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON token {c} in metrics.jsonl"))


def test_no_file_is_read_back_with_a_loader_that_can_run_code() -> None:
    """Checkpoints through the safe loader only; everything else the project reads back is JSON."""
    import re

    src = Path(__file__).resolve().parents[1] / "src" / "infdepth"
    unsafe = re.compile(r"pickle\.loads?\(|dill\.|joblib\.load|allow_pickle\s*=\s*True"
                        r"|weights_only\s*=\s*False")
    found = []
    for path in sorted(src.rglob("*.py")):
        text = path.read_text()
        found += [f"{path.name}: {m.group(0)}" for m in unsafe.finditer(text)]
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                found.append(f"{path.name}: {call.group(0)}")
    assert found == []
