"""What decides how the next sub-layers are built is saved with the weights.

A run is checkpointed, then resumed in a new process that never seeds torch's RNG (so
the layer's constructor draws another sub-layer seed); the sub-layers built after the
resume must be those of the uninterrupted run, bit for bit.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

RUN = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from infdepth import InfiniteDepth, grow

    def make():
        layer = InfiniteDepth(lambda i: nn.Linear(4, 4), h="relu", w0=1.0)
        model = nn.Sequential(nn.Linear(2, 4), layer, nn.Linear(4, 1))
        others = [p for n, p in model.named_parameters() if n != "1.w"]
        opt = torch.optim.Adam([{"params": others, "lr": 1e-2}, {"params": [layer.w], "lr": 1.0}])
        return model, layer, opt

    def steps(model, layer, opt, ks):
        for k in ks:
            x = torch.randn(16, 2, generator=torch.Generator().manual_seed(k))
            loss = model(x).square().mean() + layer.penalty() - 0.1 * layer.w
            opt.zero_grad()
            loss.backward()
            opt.step()
            grow(model, opt)

    mode, path = sys.argv[1], sys.argv[2]
    if mode == "resume":  # a new process: torch's RNG is never seeded here
        model, layer, opt = make()
        ck = torch.load(path + ".ck", weights_only=True)
        model.load_state_dict(ck["model"])
        grow(model, opt)
        opt.load_state_dict(ck["opt"])
        steps(model, layer, opt, range(3, 12))
    else:
        torch.manual_seed(int(mode))
        model, layer, opt = make()
        steps(model, layer, opt, range(3))
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path + ".ck")
        steps(model, layer, opt, range(3, 12))
    assert layer.built_blocks >= 10, layer.built_blocks  # grown after the checkpoint
    torch.save(model.state_dict(), path + "." + ("resumed" if mode == "resume" else "whole"))
    """
)


def test_resume_in_a_process_that_never_seeds_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = str(tmp_path / "run")
    script = tmp_path / "run.py"
    script.write_text(RUN)
    # the uninterrupted run, seeded, and its checkpoint after 3 steps (in this process)
    monkeypatch.setattr(sys, "argv", [str(script), "7", base])
    runpy.run_path(str(script), run_name="__main__")
    subprocess.run([sys.executable, str(script), "resume", base], check=True, timeout=120)
    whole = torch.load(base + ".whole", weights_only=True)
    resumed = torch.load(base + ".resumed", weights_only=True)
    assert whole.keys() == resumed.keys()
    assert any(k.startswith("1.blocks.9.") for k in whole)
    for key, value in whole.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed[key]), key
        else:
            assert value == resumed[key], key


def test_the_seed_is_in_state_dict_and_an_old_state_dict_still_loads() -> None:
    from torch import nn

    from infdepth import InfiniteDepth

    layer = InfiniteDepth(lambda i: nn.Linear(3, 3), seed=123)
    state = layer.state_dict()
    other = InfiniteDepth(lambda i: nn.Linear(3, 3), seed=5)
    other.load_state_dict(state)
    assert other.seed == 123
    old = {k: v for k, v in state.items() if not k.endswith("sublayer_seed")}
    kept = InfiniteDepth(lambda i: nn.Linear(3, 3), seed=5)
    kept.load_state_dict(old)  # a checkpoint from before the seed was saved: strict still loads
    assert kept.seed == 5
