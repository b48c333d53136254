"""Why a regularised ODE-Net's training solve took more steps than the plain one (issue 27).

Trains the digits ODE-Net of ``infdepth ode params`` (KE 0.01 + JF 0.001, seed 0, the
defaults: 32 channels, Dopri5 at rtol = atol = 1e-3, the adjoint, Adam with a one-cycle
schedule over 12 epochs) with the integrals under error control (``control_integrals=True``,
the behaviour measured first), and after some epochs takes training batches and solves
their forward problem (no grad, as the adjoint's forward does) twice: error norm over all
components (the integrals included) and over ``h`` only. Every attempted step prints the
RMS of the scaled error of ``h`` and of each integral channel, the ratio the controller saw,
and whether the step stood. Then one forward + backward of the block in each setting
(same Hutchinson draw) gives the evaluations per pass.

    .venv/bin/python bench/reg_error_norm.py [--epochs 1,6,12] [--batches 2]
    .venv/bin/python bench/reg_error_norm.py --cost       # seconds per evaluation of the field
    .venv/bin/python bench/reg_error_norm.py --accuracy   # the integrals on h's steps
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from infdepth.data.images import load_images
from infdepth.experiments._common import epoch_batches, steps_per_epoch
from infdepth.experiments.ode.params import Config, training_set
from infdepth.models.odenet import ode_block, odenet
from infdepth.ode import JacobianFrobenius, KineticEnergy, ODEBlock
from infdepth.ode._controller import AdaptiveSteps, PIController
from infdepth.ode._integrate import integrate
from infdepth.ode._odeint import _output_grid
from infdepth.ode._regularisers import augment
from infdepth.ode._stepping import Stats
from infdepth.train import model_penalty

JUDGED: list[tuple[float, float, float]] = []  # (t, h, r) of every attempted step
_judge = AdaptiveSteps.judge


def _logged_judge(self: AdaptiveSteps, r: float, h: float, t: float) -> bool:
    JUDGED.append((t, h, r))
    return _judge(self, r, h, t)


AdaptiveSteps.judge = _logged_judge  # type: ignore[method-assign]


def diagnose(model: torch.nn.Sequential, x: torch.Tensor, seed: int, verbose: bool) -> dict[str, int]:
    block = ode_block(model)
    assert block is not None
    idx = next(i for i, m in enumerate(model) if m is block)
    with torch.enable_grad():  # as in training: the stem's output requires grad
        h0 = model[:idx](x)
    out: dict[str, int] = {}
    for control in (True, False):
        torch.manual_seed(seed)  # the same Hutchinson draw in both settings
        field, z0 = augment(block._field, h0, block.regularisers)
        feats = field.features
        rows: list[tuple[float, ...]] = []

        def norm(e: torch.Tensor, feats: int = feats, control: bool = control,
                 rows: list[tuple[float, ...]] = rows) -> torch.Tensor:
            e = e.reshape(e.shape[0], -1)
            ms_h = e[:, :feats].square().mean()
            ms_c = e[:, feats:].square().mean(0)
            full = e.square().mean()
            rows.append((float(full.sqrt()), float(ms_h.sqrt()), *[float(v.sqrt()) for v in ms_c]))
            return full if control else ms_h

        grid, _ = _output_grid(torch.tensor([0.0, float(block.t1)]), z0)
        stats = Stats()
        ctrl = PIController(rtol=block.rtol, atol=block.atol)
        JUDGED.clear()
        with torch.no_grad():
            integrate(field, z0, grid, block.solver, ctrl, max_steps=block.max_steps, norm=norm,
                      stats=stats)
        judged = list(JUDGED)
        name = "all components" if control else "h only"
        out[f"nfe {name}"] = stats.nfe
        out[f"accepted {name}"] = stats.accepted
        out[f"rejected {name}"] = stats.rejected
        if verbose:
            print(f"  norm over {name}: {stats.nfe} evaluations, {stats.accepted} accepted, "
                  f"{stats.rejected} rejected steps")
            d0, d1, d2 = rows[:3]  # the initial step's measures: y0, f(y0), its change
            print(f"    initial step: |f(t0, z0)| RMS: h part {d1[1]:.3g}, KE {d1[2]:.3g}, JF "
                  f"{d1[3]:.3g}; |z0| RMS: h part {d0[1]:.3g}, integrals 0")
            print("          t       step   ratio seen   h part   KE channel   JF channel   stood")
            for (t, h, seen), r in zip(judged, rows[3:], strict=True):
                print(f"    {t:7.4f}   {h:8.4f}   {seen:10.4f}   {r[1]:6.4f}   {r[2]:10.4f}   "
                      f"{r[3]:10.4f}   {'yes' if seen <= 1 else 'no'}")
    for control in (True, False):  # one forward + backward of the block (adjoint)
        block.control_integrals = control
        block.reset_nfe()
        torch.manual_seed(seed)
        with torch.no_grad():
            h0 = model[:idx](x)
        h0.requires_grad_(True)
        JUDGED.clear()
        h1 = block(h0)
        if verbose:
            print(f"  block forward ({'all components' if control else 'h only'}): steps "
                  + ", ".join(f"{h:.4f}" for _, h, _ in JUDGED))
        loss = h1.square().mean() + block.penalty()
        loss.backward()
        name = "all components" if control else "h only"
        out[f"fwd {name}"], out[f"bwd {name}"] = block.nfe_forward, block.nfe_backward
        model.zero_grad()
    block.control_integrals = True
    return out


def _untrained_block(ke: float, jf: float) -> tuple[ODEBlock, torch.Tensor]:
    """The untrained digits ODE-Net's block (regularisers KE ``ke`` and JF ``jf``, seed 0)
    and its input for the first 64 training images."""
    data = load_images("digits")
    torch.manual_seed(0)
    model = odenet(32, 8, rtol=1e-3, atol=1e-3, classes=data.classes, in_channels=1,
                   regularisers=[KineticEnergy(ke), JacobianFrobenius(jf)])
    block = ode_block(model)
    assert block is not None
    idx = next(i for i, m in enumerate(model) if m is block)
    with torch.no_grad():
        h0 = model[:idx](data.x_train[:64])
    return block, h0


def evaluation_cost(rounds: int = 20) -> None:
    """Seconds per evaluation of the block's field, plain and augmented (KE + JF), in the
    forward solve (no grad) and in the adjoint's backward (a vector-Jacobian product of it),
    interleaved, median over ``rounds``; untrained digits ODE-Net, batch 64."""
    import statistics
    import time

    from infdepth.ode._adjoint import _vjp

    block, h0 = _untrained_block(0.01, 0.001)
    field, z0 = augment(block._field, h0, block.regularisers)
    params = tuple(block.func.parameters())
    t = torch.tensor(0.5)
    cases = {
        "forward, plain": lambda: block._field(t, h0),
        "forward, KE + JF": lambda: field(t, z0),
        "adjoint backward, plain": lambda: _vjp(block._field, t, h0, h0, params),
        "adjoint backward, KE + JF": lambda: _vjp(field, t, z0, z0, params),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            with torch.no_grad():
                run()
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"{name}: {1e3 * statistics.median(ts):.2f} ms per evaluation")


def integral_accuracy(draws: int = 5) -> None:
    """The integrals of one batch on ``h``'s steps and under control at rtol = atol = 1e-3,
    against a solve at 1e-7 with the same ``eps``; and the spread of the batch's Hutchinson
    mean over draws of ``eps`` (untrained digits ODE-Net, batch 64)."""
    from infdepth.ode._odeint import solve

    block, h0 = _untrained_block(1.0, 1.0)

    def integrals(control: bool, tol: float, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        field, z0 = augment(block._field, h0, block.regularisers)
        with torch.no_grad():
            z = solve(field, z0, torch.tensor([0.0, 1.0]), solver=block.solver, rtol=tol, atol=tol,
                      step_size=None, controller=None, adjoint=None, max_steps=10_000,
                      norm=None if control else field.state_norm)[-1]
        return z[:, -2:].mean(0)

    refs = []
    for seed in range(draws):
        ref = integrals(True, 1e-7, seed)
        refs.append(ref)
        off = (integrals(False, 1e-3, seed) - ref) / ref
        on = (integrals(True, 1e-3, seed) - ref) / ref
        print(f"draw {seed}: relative error of KE, JF on h's steps {off[0]:+.2e}, {off[1]:+.2e}; "
              f"under control {on[0]:+.2e}, {on[1]:+.2e}")
    jf = torch.stack(refs)[:, 1]
    print(f"spread of the batch's Hutchinson mean over draws: {float(jf.std() / jf.mean()):.3f} (sd/mean)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="1,6,12", help="diagnose after these epochs")
    parser.add_argument("--batches", type=int, default=2, help="training batches per diagnosis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", action="store_true",
                        help="only time one evaluation of the field, plain and augmented")
    parser.add_argument("--accuracy", action="store_true",
                        help="only the integrals' accuracy on h's steps against their spread")
    args = parser.parse_args()
    if args.accuracy:
        torch.set_num_threads(1)
        integral_accuracy()
        return
    if args.cost:
        torch.set_num_threads(1)
        evaluation_cost()
        return
    at = sorted(int(e) for e in args.epochs.split(","))
    torch.set_num_threads(1)
    config = Config(dataset="digits", models=("odenet",), kinetic_energy=0.01,
                    jacobian_frobenius=0.001, seed=args.seed)
    data = load_images("digits")
    x_tr, y_tr = training_set(config, data)
    torch.manual_seed(config.seed)
    model = odenet(config.channels, int(x_tr.shape[2]), rtol=config.rtol, atol=config.atol,
                   classes=data.classes, in_channels=int(x_tr.shape[1]),
                   regularisers=[KineticEnergy(0.01), JacobianFrobenius(0.001)])
    block = ode_block(model)
    assert block is not None
    block.control_integrals = True  # train as measured first
    per_epoch = steps_per_epoch(x_tr.shape[0], config.batch, drop_last=True)
    steps = config.epochs * per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    batches = epoch_batches(x_tr, y_tr, config.batch, config.seed, drop_last=True)
    totals: dict[str, int] = {}
    step = 0
    for epoch in range(1, max(at) + 1):
        for _ in range(per_epoch):
            x, y = batches(step)
            loss = F.cross_entropy(model(x), y)
            pen = model_penalty(model)
            if pen is not None:
                loss = loss + pen
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if epoch not in at:
            continue
        for b in range(args.batches):
            x, _ = batches(step + b)
            print(f"epoch {epoch}, batch {b}:")
            res = diagnose(model, x, 1000 * epoch + b, verbose=True)
            print("  forward + backward of the block (adjoint): all components "
                  f"{res['fwd all components']} + {res['bwd all components']}, h only "
                  f"{res['fwd h only']} + {res['bwd h only']}")
            for k, v in res.items():
                totals[k] = totals.get(k, 0) + v
    n = len(at) * args.batches
    print("mean over the diagnosed batches:")
    for k, v in totals.items():
        print(f"  {k}: {v / n:.1f}")


if __name__ == "__main__":
    main()
