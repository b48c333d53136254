"""depth_param_groups: the w's in a group of their own, honoured by the optimizer and by growth."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from infdepth.depth import InfiniteDepth, grow
from infdepth.depth.groups import depth_param_groups, depth_parameters
from infdepth.errors import InputError
from infdepth.experiments.depth.images import Config, build_model, make_optimizer

SMALL = Config(dataset="digits", epochs=1, batch_size=32, channels=4, dense_units=16)


def one_step(cfg: Config) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """One training step of the CLI's model with the CLI's optimizer; returns the model and the start."""
    model = build_model(cfg, (1, 8, 8), 10).train()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(cfg, model)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 10
    torch.manual_seed(1)  # the same dropout masks for both runs
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return model, start


@pytest.mark.parametrize("optimizer", ["adadelta", "adam"])
def test_w_lr_scales_the_step_of_w_only(optimizer: str) -> None:
    lr = 1.0 if optimizer == "adadelta" else 1e-3
    base, start = one_step(replace(SMALL, optimizer=optimizer, lr=lr))
    fast, _ = one_step(replace(SMALL, optimizer=optimizer, lr=lr, w_lr=10 * lr))
    for (name, p), (_, q) in zip(base.named_parameters(), fast.named_parameters()):
        moved_base, moved_fast = p.detach() - start[name], q.detach() - start[name]
        if name.endswith(".w"):  # Adadelta's and Adam's first steps are linear in lr
            assert float(moved_base) != 0
            torch.testing.assert_close(moved_fast, 10 * moved_base, rtol=1e-4, atol=0)
        else:
            torch.testing.assert_close(moved_fast, moved_base, rtol=0, atol=0)


def test_depth_group_holds_the_w_and_new_sub_layers_join_the_other_group() -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(4, 4), w0=-1.0, grow_step=2, seed=0)  # nothing built yet
    model = nn.Sequential(nn.Linear(4, 4), layer)
    optimizer = torch.optim.SGD(depth_param_groups(model, lr=0.5), lr=0.1)
    assert optimizer.param_groups[1]["params"] == [layer.w] and optimizer.param_groups[1]["lr"] == 0.5
    with torch.no_grad():
        layer.w.fill_(1.5)
    grown = grow(model, optimizer)
    assert grown and layer.built_blocks == 2
    block_ids = {id(p) for p in layer.blocks.parameters()}
    assert block_ids <= {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[1]["params"] == [layer.w]  # still w alone, at its own lr


def test_trainable_alpha_is_a_depth_parameter_and_misuse_is_refused() -> None:
    layer = InfiniteDepth(lambda i: nn.Linear(4, 4), gate="stretched", trainable_alpha=True, seed=0)
    assert depth_parameters(layer) == [layer.w, layer.gate.log_alpha]
    with pytest.raises(InputError, match="no InfiniteDepth"):
        depth_param_groups(nn.Linear(3, 3), lr=1.0)
    with pytest.raises(InputError, match="params"):
        depth_param_groups(layer, params=[])


def test_w_lr_flag_is_checked(capsys) -> None:
    from infdepth.cli import main

    assert main(["images", "--w-lr", "-1", "--out", "unused"]) == 2
    assert "--w-lr" in capsys.readouterr().err
