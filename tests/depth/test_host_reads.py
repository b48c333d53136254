"""At most one host read of ``w`` per g-infinity layer and training step (issue 29).

A read of ``w`` to the host (``float(w)``, ``w.item()``, ``w.tolist()``) is a device
synchronisation on a GPU.  The layer's ``forward`` reads ``w`` once and produces its
penalty from that value (:mod:`infdepth.depth.collect`); :func:`infdepth.fit` reads ``w``
again only on log and checkpoint steps.  Reads are counted at torch's dispatcher
(``aten._local_scalar_dense``, which every scalar read of a tensor goes through) and at
``Tensor.tolist``/``Tensor.numpy`` (which read the memory directly), for the tensors that
share ``w``'s storage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from infdepth.depth import InfiniteDepth, attach
from infdepth.train import FitConfig, WithPenalty, fit, train_step

LOSS = nn.MSELoss()


class _Reads(TorchDispatchMode):
    """Counts scalar reads (``aten._local_scalar_dense``) of tensors sharing storage with ``ws``."""

    def __init__(self, ws: list[torch.Tensor]) -> None:
        super().__init__()
        self.storages = [w.untyped_storage() for w in ws]
        self.count = 0

    def is_w(self, t: torch.Tensor) -> bool:
        return any(t.untyped_storage().data_ptr() == s.data_ptr() for s in self.storages)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default and self.is_w(args[0]):
            self.count += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_w_reads(monkeypatch: pytest.MonkeyPatch, ws: list[torch.Tensor]) -> Iterator[_Reads]:
    reads = _Reads(ws)
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            if reads.is_w(self):
                reads.count += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with reads:
        yield reads


def two_layer_model() -> tuple[nn.Sequential, list[InfiniteDepth]]:
    """A fast-path layer (exp gate, residual merge) and a plain-autograd one (convex merge)."""
    torch.manual_seed(0)
    fast = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), h="relu", w0=1.6,
                         w_l2=1e-3, block_l2=1e-3, grow_step=2, seed=1)
    plain = InfiniteDepth(lambda i: nn.Sequential(nn.Linear(6, 6), nn.Tanh()), h="relu", w0=2.4,
                          merge="convex", w_l2=1e-3, block_l2=1e-3, grow_step=2, seed=2)
    return nn.Sequential(nn.Linear(4, 6), fast, plain, nn.Linear(6, 1)), [fast, plain]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return torch.randn(32, 4, generator=gen), torch.randn(32, 1, generator=gen)


def test_a_step_of_fit_reads_each_w_once_growth_included(monkeypatch: pytest.MonkeyPatch) -> None:
    model, layers = two_layer_model()
    per_step: list[int] = []

    def counted_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_step.append(reads.count)
        if step == 3:  # as a large update would: the next forward builds sub-layers 2..3 and joins them
            layers[0].w.data.fill_(3.5)
        return batch(step)

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with count_w_reads(monkeypatch, [layer.w for layer in layers]) as reads:
        fit(model, opt, counted_batch, LOSS, FitConfig(steps=8, log_every=100, progress=False))
    per_step.append(reads.count)
    steps = [b - a for a, b in zip(per_step, per_step[1:])]
    assert layers[0].built_blocks == 4 and all(p in opt.state for p in layers[0].blocks[3].parameters())
    # every step but the last reads each w once (the last is a log step: it records w,
    # checks it is finite and grows, reading w again, as every log and checkpoint step does)
    assert steps[:-1] == [len(layers)] * 7, steps


def test_one_training_step_reads_each_w_once_forward_and_penalty_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, layers = two_layer_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    attach(model, opt)
    net = WithPenalty(model)
    x, y = batch(0)
    with count_w_reads(monkeypatch, [layer.w for layer in layers]) as reads:
        out, loss, penalty = train_step(net, opt, LOSS, x, y)
    assert reads.count == len(layers)
    # the penalty the forward produced is the layers' penalty (at the w before the update)
    assert penalty is not None and penalty.requires_grad


def test_the_penalty_produced_with_the_forward_equals_penalty() -> None:
    model, layers = two_layer_model()
    x, _ = batch(0)
    _, produced = WithPenalty(model)(x)
    expected = sum(layer.penalty() for layer in layers)
    assert produced is not None
    torch.testing.assert_close(produced, expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_a_cuda_training_step_synchronises_only_at_the_read_of_w(monkeypatch: pytest.MonkeyPatch) -> None:
    model, layers = two_layer_model()
    model.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    attach(model, opt)
    net = WithPenalty(model)
    x, y = (t.cuda() for t in batch(0))
    train_step(net, opt, LOSS, x, y)  # first step: optimizer state, lazy inits
    reads = {"n": 0}
    read = InfiniteDepth.depth.fget

    def allowed_read(layer: InfiniteDepth) -> float:  # the one read a step may make per layer
        reads["n"] += 1
        torch.cuda.set_sync_debug_mode("default")
        try:
            return read(layer)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(InfiniteDepth, "depth", property(allowed_read))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(net, opt, LOSS, x, y)  # any other synchronisation raises
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert reads["n"] == len(layers)
