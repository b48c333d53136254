"""One intra-op thread per test: on a shared, loaded CPU oversubscribed threads make small
tensor kernels tens of times slower (measured: tanh on 36k doubles, 0.5 ms vs 16 ms)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
