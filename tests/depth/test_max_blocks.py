"""Bounded growth: a w beyond ``max_blocks`` is refused before anything is allocated."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from infdepth import InfiniteDepth, InputError

calls: list[int] = []


def factory(i: int) -> nn.Module:
    calls.append(i)
    return nn.Linear(4, 4)


def test_a_huge_w0_is_refused_at_once_with_the_limit_and_w() -> None:
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"w=5000 needs 5000 sub-layers, more than max_blocks=1000"):
        InfiniteDepth(factory, w0=5000.0)  # on main: 5,000 sub-layers built (seconds)
    assert time.perf_counter() - started < 1.0


def test_a_w_set_beyond_the_limit_is_refused_in_forward_naming_the_layer() -> None:
    layer = InfiniteDepth(factory, w0=1.0, max_blocks=20)
    model = nn.Sequential(nn.Linear(2, 4), layer)
    with torch.no_grad():
        layer.w.fill_(1e6)
    calls.clear()
    with pytest.raises(InputError) as info:
        model(torch.randn(3, 2))
    message = str(info.value)
    assert "InfiniteDepth layer '1'" in message
    assert "w=1e+06" in message and "max_blocks=20" in message
    assert calls == [] and layer.built_blocks == 5  # nothing allocated


def test_the_limit_caps_a_chunk_and_none_means_no_limit() -> None:
    layer = InfiniteDepth(factory, w0=1.0, grow_step=5, max_blocks=7)
    with torch.no_grad():
        layer.w.fill_(6.5)
    layer.grow()
    assert layer.built_blocks == 7  # the chunk (10) stops at the limit; w needs 7
    free = InfiniteDepth(lambda i: nn.Identity(), w0=1001.0, max_blocks=None, grow_step=1)
    assert free.built_blocks == 1001


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_bad_max_blocks_is_refused(bad: object) -> None:
    with pytest.raises(InputError, match="max_blocks"):
        InfiniteDepth(factory, max_blocks=bad)  # type: ignore[arg-type]
