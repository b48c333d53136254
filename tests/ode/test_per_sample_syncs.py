"""Host synchronisations of the per-sample loop: one read per pass (issue 26).

Every pass of ``integrate_per_sample`` reads one small stacked tensor to the host (failed
rows, finished rows, the most outputs a step passed, rows that may fire an event); a pass in
which an event fires reads a few more. A change that adds a ``bool(...)``, ``.item()``,
``int(...)`` or ``.tolist()`` inside the loop fails here. The reads are counted at their
source: ``aten._local_scalar_dense`` (``item``, ``bool``, ``int``, ``float``) through a
``TorchDispatchMode``, and ``Tensor.tolist`` (which reads without dispatching). With
``compact=True`` the working set's ``nonzero`` (a synchronisation on a GPU) runs only after a
pass in which a sample finished. Outside the loop a solve reads once (its input checks) and
its setup stays under ``SETUP_OPS`` operations: one call per bounce makes that the fixed cost
of issue 26's bouncing ball.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import infdepth.ode._per_sample as per_sample
from infdepth.ode import Event, solve

F64 = torch.float64
PER_SOLVE = 1  # reads outside the loop: the input checks of y0 and t, one stacked read
SETUP_OPS = 80  # aten operations before the first step of a bouncing ball's solve (issue 26;
# 77 measured with a (T,) grid; 93 before the stage plan's rows became one view each and
# two output times stopped needing an output grid; about 8 of them the stage plan, built
# for every solve)


@dataclass
class Syncs:
    reads: int = 0
    nonzero: int = 0
    passes: int = 0
    ops: int = 0
    at_first_pass: tuple[int, int] | None = None  # (reads, ops) before the first step
    at_loop_end: tuple[int, int] | None = None  # ... when the loop ended


class _Count(TorchDispatchMode):
    def __init__(self, syncs: Syncs) -> None:
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.__name__
        self.syncs.ops += 1
        if name.startswith("_local_scalar_dense"):
            self.syncs.reads += 1
        elif name.startswith("nonzero"):
            self.syncs.nonzero += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syncs]:
    """Count host reads, ``nonzero`` calls and passes of the per-sample loop inside."""
    syncs = Syncs()
    tolist = torch.Tensor.tolist
    step = per_sample.step_per_sample

    def counted_tolist(self: torch.Tensor) -> object:
        syncs.reads += 1
        return tolist(self)

    def counted_step(*args: object, **kwargs: object) -> object:
        if syncs.at_first_pass is None:
            syncs.at_first_pass = (syncs.reads, syncs.ops)
        syncs.passes += 1
        return step(*args, **kwargs)  # type: ignore[arg-type]

    def counted_assemble(*args: object, **kwargs: object) -> object:
        syncs.at_loop_end = (syncs.reads, syncs.ops)
        return assemble(*args, **kwargs)  # type: ignore[arg-type]

    assemble = per_sample._assemble
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "tolist", counted_tolist)
        patch.setattr(per_sample, "step_per_sample", counted_step)
        patch.setattr(per_sample, "_assemble", counted_assemble)
        with _Count(syncs):
            yield syncs


def vdp(mu: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)

    return f


def vdp_in_state(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v, mu = y.unbind(1)
    return torch.stack([v, mu * (1 - x * x) * v - x, torch.zeros_like(mu)], 1)


def _problem(batch: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu = torch.linspace(0.5, 8.0, batch, dtype=F64)
    y0 = torch.tensor([2.0, 0.0], dtype=F64).expand(batch, 2).contiguous()
    return mu, y0, torch.linspace(0.0, 6.0, 13, dtype=F64)


@pytest.mark.parametrize("grad", [False, True])
def test_one_host_read_per_pass_masked(monkeypatch: pytest.MonkeyPatch, grad: bool) -> None:
    mu, y0, t = _problem()
    y0 = y0.requires_grad_(grad)
    with torch.set_grad_enabled(grad), counted(monkeypatch) as syncs:
        sol = solve(vdp(mu), y0, t, rtol=1e-6, atol=1e-6, compact=False, dense=False)
    steps = sol.stats.n_accepted + sol.stats.n_rejected
    assert syncs.passes == int(steps.max()) > 40  # samples finish at different passes
    assert int(steps.min()) < syncs.passes
    assert syncs.reads <= syncs.passes + PER_SOLVE, (syncs.reads, syncs.passes)
    assert syncs.nonzero == 0


def compactions(last_pass: list[int]) -> int:
    """How often the working set is compacted: at the start of a pass once ``1 /
    COMPACT_AT`` of its rows finished (a sample's last pass is its step count)."""
    n_set, count = len(last_pass), 0
    for p in range(1, max(last_pass) + 1):
        running = sum(q >= p for q in last_pass)
        if (n_set - running) * per_sample.COMPACT_AT >= n_set > running:
            n_set, count = running, count + 1
    return count


def test_one_host_read_per_pass_compact(monkeypatch: pytest.MonkeyPatch) -> None:
    mu, y0, t = _problem()
    rows: list[int] = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows.append(y.shape[0])
        return vdp_in_state(t, y)

    with torch.no_grad(), counted(monkeypatch) as syncs:
        sol = solve(f, torch.cat([y0, mu[:, None]], 1), t, rtol=1e-6, atol=1e-6, dense=False)
    steps = (sol.stats.n_accepted + sol.stats.n_rejected).tolist()  # a sample's last pass
    # finished rows left in the working set (empty steps) are under 1 / COMPACT_AT of it
    assert int(sol.stats.nfe.sum()) < sum(rows) <= int(sol.stats.nfe.sum()) * 8 / 7
    assert syncs.passes == max(steps)
    assert syncs.reads <= syncs.passes + PER_SOLVE, (syncs.reads, syncs.passes)
    # the working set's nonzero runs only when it is compacted: a few times per solve
    assert syncs.nonzero == compactions(steps) < syncs.passes / 4, syncs
    assert len(set(steps)) > 2 * syncs.nonzero  # samples finish in many more passes


def test_event_passes_read_a_few_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 balls, each hitting the ground once: the passes with a crossing read a few more
    (the root finding's), every other pass one."""
    heights = torch.linspace(1.0, 3.0, 64, dtype=F64)
    y0 = torch.stack([heights, torch.zeros_like(heights)], 1)

    def ball(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], torch.full_like(t, -9.81)], 1)

    event = Event(lambda t, y: y[:, 0], direction=-1, tol=1e-10)
    with torch.no_grad(), counted(monkeypatch) as syncs:
        sol = solve(ball, y0, torch.tensor([0.0, 2.0], dtype=F64), event=event, rtol=1e-8,
                    atol=1e-10, dense=False)
    assert torch.allclose(sol.event_t, (2 * heights / 9.81).sqrt(), rtol=0, atol=1e-9)
    event_passes = len(set((sol.stats.n_accepted + sol.stats.n_rejected).tolist()))
    assert syncs.reads <= syncs.passes + PER_SOLVE + 2 * event_passes, (
        syncs.reads, syncs.passes, event_passes)


def test_a_solve_reads_once_outside_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixed cost of one call (issue 26's bouncing ball makes one call per bounce): before
    its first step a solve reads the host once (y0 finite, t finite and monotone: one stacked
    read) in at most SETUP_OPS operations (the checks, the first step size and its evaluation
    of f, the loop's state); after its loop it reads nothing when no sample failed."""
    ball = _bounce_field()
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.tensor([[0.0], [10.0]], dtype=F64)
    event = Event(lambda t, y: y[:, 0], direction=-1, tol=1e-10)
    with torch.no_grad():
        solve(ball, y0, t, event=event, rtol=1e-8, atol=1e-10, dense=False)  # constants built
        for grid in (t, t[:, 0]):
            with counted(monkeypatch) as syncs:
                sol = solve(ball, y0, grid, event=event, rtol=1e-8, atol=1e-10, dense=False)
            assert sol.status.tolist() == [1]
            assert syncs.at_first_pass is not None and syncs.at_loop_end is not None
            reads, ops = syncs.at_first_pass
            assert reads == PER_SOLVE and ops <= SETUP_OPS, syncs
            assert syncs.reads == syncs.at_loop_end[0], syncs  # nothing read after the loop
    with counted(monkeypatch) as syncs:  # a failed sample (throw=False): no read either
        sol = solve(ball, y0, t, rtol=1e-8, atol=1e-10, max_steps=2, throw=False)
    assert sol.status.tolist() == [2]
    assert syncs.at_first_pass is not None and syncs.at_loop_end is not None
    assert syncs.at_first_pass[0] == PER_SOLVE and syncs.reads == syncs.at_loop_end[0], syncs


def _bounce_field() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], torch.full_like(y[:, 1], -9.81)], 1)

    return f


def test_a_solve_under_inference_mode_leaves_nothing_for_a_later_gradient() -> None:
    """Nothing built by one solve serves the next: a solve under ``torch.inference_mode``
    first, then one under autograd differentiates (the falling ball's dt/dh = 1 / sqrt(2 g h))."""
    ball, event = _bounce_field(), Event(lambda t, y: y[:, 0], direction=-1, tol=1e-10)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    with torch.inference_mode():
        solve(ball, torch.tensor([[2.0, 0.0]], dtype=F64), t, event=event, rtol=1e-8, atol=1e-10)
    h = torch.tensor([2.0], dtype=F64, requires_grad=True)
    sol = solve(ball, torch.stack([h, torch.zeros_like(h)], 1), t, event=event, rtol=1e-8,
                atol=1e-10)
    (grad,) = torch.autograd.grad(sol.event_t.sum(), h)
    assert torch.allclose(grad, 1 / (2 * 9.81 * h.detach()).sqrt(), rtol=1e-6)


LOOP_OPS_PER_PASS = 63  # aten operations per pass of the masked loop besides f's (Dopri5,
# 64 Van der Pol oscillators, 13 output times): 60.6 measured (issue 26; 89.2 before the
# outputs were stored 16 steps at a time, the last one filled at the end, and the stage
# states written into buffers kept between passes)
BOUNCE_OPS = 637  # one solve of one falling ball to its event: 634 measured (743 before;
# 631 before the root's polynomial tables were copied from arrays, not built from lists: one
# copy more for each of the three, 77 us less a solve)
ROOT_OPS = 146  # of which the root finding (EventCheck.resolve): 145 measured (159 before)


def test_operations_per_pass_and_per_bounce(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's cost that does not depend on the load: aten operations per pass (besides
    ``f``'s) and per bounce (one solve to the event, its root finding apart), pinned so that
    a change that adds bookkeeping to every pass fails here."""
    mu, y0, t = _problem()
    field_ops = [0]
    syncs_ref: list[Syncs] = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        before = syncs_ref[0].ops
        out = vdp(mu)(t, y)
        field_ops[0] += syncs_ref[0].ops - before
        return out

    with torch.no_grad(), counted(monkeypatch) as syncs:
        syncs_ref.append(syncs)
        solve(f, y0, t, rtol=1e-6, atol=1e-6, compact=False, dense=False)
    assert syncs.at_first_pass is not None and syncs.at_loop_end is not None
    calls_in_loop = 6 * syncs.passes  # Dopri5: six evaluations per step (FSAL)
    per_call = field_ops[0] / (calls_in_loop + 2)  # + the first step's two
    loop = syncs.at_loop_end[1] - syncs.at_first_pass[1] - per_call * calls_in_loop
    assert loop / syncs.passes <= LOOP_OPS_PER_PASS, loop / syncs.passes

    ball, event = _bounce_field(), Event(lambda t, y: y[:, 0], direction=-1, tol=1e-10)
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    t = torch.tensor([0.0, 10.0], dtype=F64)
    resolve = per_sample.EventCheck.resolve
    root = [0]

    def counted_resolve(self: object, *args: object, **kwargs: object) -> object:
        before = syncs_ref[-1].ops
        out = resolve(self, *args, **kwargs)  # type: ignore[arg-type]
        root[0] += syncs_ref[-1].ops - before
        return out

    with torch.no_grad():
        solve(ball, y0, t, event=event, rtol=1e-8, atol=1e-10, dense=False)  # warm
        monkeypatch.setattr(per_sample.EventCheck, "resolve", counted_resolve)
        with counted(monkeypatch) as syncs:
            syncs_ref.append(syncs)
            sol = solve(ball, y0, t, event=event, rtol=1e-8, atol=1e-10, dense=False)
    assert sol.status.tolist() == [1] and syncs.passes == 4
    assert syncs.ops <= BOUNCE_OPS and 0 < root[0] <= ROOT_OPS, (syncs.ops, root[0])
