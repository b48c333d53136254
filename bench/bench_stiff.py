"""Benchmark: stiff solvers (KenCarp4, Kvaerno5) against scipy's Radau and BDF; Dopri8 against Dopri5.

Cases (float64, one thread, contenders interleaved, bench/_harness.py):

* ``robertson``: Robertson's kinetics on [0, 1e5], outputs at log-spaced times; ``vdp``: Van der
  Pol, mu = 1000, on [0, 3000]. Ours against scipy Radau and BDF at the same rtol/atol (scipy
  given the analytic Jacobian, ours computes it with torch.func): time, steps, Jacobian
  evaluations, error against Radau at rtol 1e-12. Goals (issue 27): error no worse than scipy's,
  time within 3x (``*_time_vs_scipy_*`` = scipy time / ours >= 1/3). "ours" is KenCarp4;
  Kvaerno5 runs beside it (``*_kvaerno5_*_vs_kencarp4``, no goal). ``hires``: HIRES (8 species,
  [0, 321.8122]) at rtol 1e-8 / atol 1e-10, the tight tolerance where an order-5 method should
  pay.
* ``robertson_batch``: ``--batch`` (1024) Robertson problems whose rate constants are spread over
  a decade, one batched call against as many sequential scipy BDF calls; goal >= 10x.
* ``explicit_on_stiff``: Dopri5 on the same problems over a short span (NFE and time), to show
  why the stiff solver exists.
* ``dopri8``: Dopri8 against Dopri5 and torchdiffeq's dopri8 on the two-body problem at 1e-10.
* ``errors``: no timing: the error table of KenCarp4, Kvaerno5, TRBDF2, Radau and BDF on the three
  problems at rtol 1e-6 and 1e-8 (errors, steps, NFE, Jacobians), and the tolerance ours needs
  for Radau's error. Not in the default cases (``make bench`` times; the timed cases print
  their errors too): ``--cases errors --quick`` runs it alone, on a busy machine too.

    python bench/bench_stiff.py [--quick] [--batch 1024] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from _harness import Harness, add_arguments
from scipy.integrate import solve_ivp

from infdepth.ode import (
    TRBDF2,
    Dopri5,
    Dopri8,
    KenCarp4,
    Kvaerno5,
    PIController,
    RungeKutta,
)
from infdepth.ode._integrate import integrate
from infdepth.ode._odeint import _output_grid
from infdepth.ode._stepping import Stats

D = torch.float64


def robertson(t: torch.Tensor, y: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
    y1, y2, y3 = y.unbind(-1)
    scale = 1.0 if k is None else k[:, 0]
    fast = 3e7 * y2**2
    slow = (-0.04 * y1 + 1e4 * y2 * y3) * scale
    return torch.stack([slow, -slow - fast * scale, fast * scale], dim=-1)


def robertson_np(t: float, y: np.ndarray, s: float = 1.0) -> np.ndarray:
    slow = (-0.04 * y[0] + 1e4 * y[1] * y[2]) * s
    return np.array([slow, -slow - 3e7 * y[1] ** 2 * s, 3e7 * y[1] ** 2 * s])


def robertson_jac(t: float, y: np.ndarray, s: float = 1.0) -> np.ndarray:
    return s * np.array([[-0.04, 1e4 * y[2], 1e4 * y[1]],
                         [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
                         [0.0, 6e7 * y[1], 0.0]])


MU = 1000.0


def vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_np(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_jac(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1, MU * (1 - y[0] ** 2)]])


HIRES_A = np.array([
    [-1.71, 0.43, 8.32, 0, 0, 0, 0, 0], [1.71, -8.75, 0, 0, 0, 0, 0, 0],
    [0, 0, -10.03, 0.43, 0.035, 0, 0, 0], [0, 8.32, 1.71, -1.12, 0, 0, 0, 0],
    [0, 0, 0, 0, -1.745, 0.43, 0.43, 0], [0, 0, 0, 0.69, 1.71, -0.43, 0.69, 0],
    [0, 0, 0, 0, 0, 0, -1.81, 0], [0, 0, 0, 0, 0, 0, 1.81, 0]])
HIRES_C = np.array([0.0007, 0, 0, 0, 0, 0, 0, 0])
HIRES_R = np.array([0, 0, 0, 0, 0, -1.0, 1.0, -1.0])  # where 280 y6 y8 enters
# the constants as tensors once, as the numpy field has them (the field used to build three
# tensors per call: 16 of its 49 microseconds)
_HIRES_AT, _HIRES_C, _HIRES_R = (torch.tensor(x, dtype=D) for x in (HIRES_A.T, HIRES_C, HIRES_R))


def hires(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """HIRES (Schaefer 1975; Hairer & Wanner's stiff test set): linear part plus 280 y6 y8."""
    return y @ _HIRES_AT + _HIRES_C + 280 * y[..., 5:6] * y[..., 7:8] * _HIRES_R


def hires_np(t: float, y: np.ndarray) -> np.ndarray:
    return HIRES_A @ y + HIRES_C + 280 * y[5] * y[7] * HIRES_R


def hires_jac(t: float, y: np.ndarray) -> np.ndarray:
    j = HIRES_A.copy()
    j[:, 5] += 280 * y[7] * HIRES_R
    j[:, 7] += 280 * y[5] * HIRES_R
    return j


def ours(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y0: torch.Tensor,
         t: np.ndarray, solver: RungeKutta, rtol: float, atol: float,
         max_steps: int = 1_000_000) -> tuple[torch.Tensor, Stats]:
    grid, _ = _output_grid(torch.tensor(t, dtype=D), y0)
    stats = Stats()
    with torch.no_grad():
        ys = integrate(f, y0, grid, solver, PIController(rtol=rtol, atol=atol),
                       max_steps=max_steps, stats=stats)
    return ys, stats


def reference(f_np: Callable, jac: Callable, y0: list[float], t: np.ndarray) -> np.ndarray:
    """The reference solution at the output times: scipy's Radau at rtol 1e-12, atol 1e-14."""
    return solve_ivp(f_np, (t[0], t[-1]), y0, method="Radau", t_eval=t, rtol=1e-12, atol=1e-14,
                     jac=jac).y.T


# the single-problem cases: field, numpy field, numpy Jacobian, y0, output times, atol / rtol
PROBLEMS: dict[str, tuple[Callable, Callable, Callable, list[float], np.ndarray, float]] = {
    "robertson": (robertson, robertson_np, robertson_jac, [1.0, 0.0, 0.0],
                  np.concatenate([[0.0], np.logspace(-5, 5, 11)]), 1e-4),
    "vdp_mu1000": (vdp, vdp_np, vdp_jac, [2.0, 0.0], np.linspace(0, 3000, 7), 1.0),
    "hires": (hires, hires_np, hires_jac, [1.0, 0, 0, 0, 0, 0, 0, 0.0057],
              np.array([0.0, 5.0, 10.0, 50.0, 100.0, 321.8122]), 1e-2),
}


def case_errors(h: Harness, rtols: tuple[float, ...] = (1e-6, 1e-8)) -> None:
    """Errors only (deterministic, no timing): each problem, solver and tolerance.

    One line per run: the largest error over the outputs and the one at the end time, in
    units of the tolerance (``atol + rtol |y_ref|``), steps (accepted + rejected), NFE and
    Jacobians. Then ours at ``rtol / K`` against Radau at ``rtol`` (work-precision), errors in
    units of ``rtol``'s tolerance.
    """
    ours_solvers: dict[str, RungeKutta] = {"KenCarp4": KenCarp4(), "Kvaerno5": Kvaerno5(),
                                           "TRBDF2": TRBDF2()}
    h.note("problem rtol solver: error/tol max over outputs | at the end, steps, nfe, jacobians")
    for name, (f, f_np, jac, y0, t, atol_per_rtol) in PROBLEMS.items():
        ref = reference(f_np, jac, y0, t)
        for rtol in rtols:
            atol = rtol * atol_per_rtol
            unit = atol + rtol * np.abs(ref)
            err: dict[str, float] = {}
            for key, solver in ours_solvers.items():
                if key == "TRBDF2" and rtol < 1e-7:  # order 2: tens of thousands of steps
                    continue
                ys, st = ours(f, torch.tensor(y0, dtype=D), t, solver, rtol, atol)
                scaled = np.abs(ys.numpy() - ref) / unit
                err[key] = float(scaled.max())
                h.note(f"{name} {rtol:.0e} {key}: {err[key]:.3g} | {scaled[-1].max():.3g}, "
                       f"steps {st.accepted}+{st.rejected}, nfe {st.nfe}, jac {st.jacobians}")
            for method in ("Radau", "BDF"):
                sol = solve_ivp(f_np, (t[0], t[-1]), y0, method=method, t_eval=t, rtol=rtol,
                                atol=atol, jac=jac)
                steps = len(solve_ivp(f_np, (t[0], t[-1]), y0, method=method, rtol=rtol,
                                      atol=atol, jac=jac).t) - 1
                scaled = np.abs(sol.y.T - ref) / unit
                err[method] = float(scaled.max())
                h.note(f"{name} {rtol:.0e} {method}: {err[method]:.3g} | {scaled[-1].max():.3g}, "
                       f"steps {steps}, nfe {sol.nfev}, jac {sol.njev}")
            for key in ("KenCarp4", "Kvaerno5"):
                h.ratio(f"{name}_{rtol:.0e}_{key.lower()}_error_vs_radau",
                        err[key] / err["Radau"], goal=("<=", 1.0))
            if rtol == rtols[0]:  # work-precision: the tolerance ours needs for Radau's error
                for key in ("KenCarp4", "Kvaerno5"):
                    for k in (10.0, 100.0):
                        ys, st = ours(f, torch.tensor(y0, dtype=D), t, ours_solvers[key],
                                      rtol / k, atol / k)
                        worst = float((np.abs(ys.numpy() - ref) / unit).max())
                        h.note(f"{name} {key} at rtol/{k:g}: {worst:.3g} in rtol {rtol:.0e}'s "
                               f"units, nfe {st.nfe} (Radau at rtol: {err['Radau']:.3g})")


def case_single(h: Harness, name: str, f: Callable, f_np: Callable, jac: Callable,
                y0: list[float], t: np.ndarray, rtol: float, atol: float) -> None:
    ref = reference(f_np, jac, y0, t)
    y0_t = torch.tensor(y0, dtype=D)
    results: dict[str, tuple[np.ndarray, str]] = {}

    def run_ours(solver: RungeKutta, key: str) -> Callable[[], None]:
        def run() -> None:
            ys, st = ours(f, y0_t, t, solver, rtol, atol)
            results[key] = (ys.numpy(), f"steps {st.accepted}+{st.rejected} rejected, nfe "
                                        f"{st.nfe}, jacobians {st.jacobians}, LU {st.factorizations}")
        return run

    def scipy(method: str) -> Callable[[], None]:
        def run() -> None:
            s = solve_ivp(f_np, (t[0], t[-1]), y0, method=method, t_eval=t, rtol=rtol, atol=atol,
                          jac=jac)
            results[method] = (s.y.T, f"nfe {s.nfev}, jacobians {s.njev}, LU {s.nlu}")
        return run

    seconds = h.time({"ours": run_ours(KenCarp4(), "ours"),
                      "kvaerno5": run_ours(Kvaerno5(), "kvaerno5"),
                      "Radau": scipy("Radau"), "BDF": scipy("BDF")})
    h.times(name, seconds)
    scaled = {k: np.abs(v[0] - ref) / (atol + rtol * np.abs(ref)) for k, v in results.items()}
    err = {k: float(v.max()) for k, v in scaled.items()}
    for k, v in results.items():
        # the largest over the output times (most of them inside a step: dense output), and
        # at the end time (a step's end: no interpolation)
        h.note(f"{name} {k}: {v[1]}, error/tolerance {err[k]:.3g} (at the end "
               f"{float(scaled[k][-1].max()):.3g})")
    for peer in ("Radau", "BDF"):
        h.ratio(f"{name}_time_vs_scipy_{peer}", seconds[peer] / seconds["ours"],
                goal=(">=", 1 / 3))
        h.ratio(f"{name}_error_vs_scipy_{peer}", err["ours"] / err[peer], goal=("<=", 1.0))
    # ours is KenCarp4; Kvaerno5 (order 5) beside it, no goal
    h.ratio(f"{name}_kvaerno5_time_vs_kencarp4", seconds["kvaerno5"] / seconds["ours"])
    h.ratio(f"{name}_kvaerno5_error_vs_kencarp4", err["kvaerno5"] / err["ours"])


SLOW_ROUNDS = 2
"""Rounds of the cases whose contender takes seconds a call and whose ratio is far past its goal."""


def case_batch(h: Harness, batch: int) -> None:
    scales = torch.logspace(0, 1, batch, dtype=D)[:, None]  # rate constants over a decade
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=D).expand(batch, 3).contiguous()
    t = np.array([0.0, 1.0, 1e2, 1e4])
    rtol, atol = 1e-6, 1e-10

    def run_ours() -> None:
        ours(lambda t, y: robertson(t, y, scales), y0, t, KenCarp4(), rtol, atol)

    def run_scipy() -> None:
        for s in scales[:, 0].tolist():
            solve_ivp(robertson_np, (0.0, t[-1]), [1.0, 0.0, 0.0], method="BDF", t_eval=t,
                      rtol=rtol, atol=atol, jac=robertson_jac, args=(s,))

    # 1024 sequential scipy calls take ~27 s a round: 2 rounds (the ratio is over ten times
    # its goal, so more rounds would change nothing but the bench's length)
    run_ours()  # the warm-up, for ours only
    rounds = min(h.repeats, SLOW_ROUNDS)
    seconds = h.time({"ours": run_ours, "scipy_BDF_sequential": run_scipy}, warmup=0,
                     repeats=rounds)
    h.times(f"robertson_batch{batch}", seconds, f" (median of {rounds} rounds)")
    h.ratio(f"robertson_batch{batch}_speedup_vs_scipy_BDF",
            seconds["scipy_BDF_sequential"] / seconds["ours"], goal=(">=", 10.0))


def case_explicit_on_stiff(h: Harness) -> None:
    for name, f, y0, t in (("robertson_0_10", robertson, [1.0, 0.0, 0.0], np.array([0.0, 10.0])),
                           ("vdp_0_30", vdp, [2.0, 0.0], np.array([0.0, 30.0]))):
        nfe: dict[str, int] = {}

        def run(solver: RungeKutta, key: str, f: Callable = f, y0: list[float] = y0,
                t: np.ndarray = t, nfe: dict[str, int] = nfe) -> Callable[[], None]:
            def go() -> None:
                _, st = ours(f, torch.tensor(y0, dtype=D), t, solver, 1e-6, 1e-10)
                nfe[key] = st.nfe
            return go

        rounds = 1  # Dopri5 takes seconds here (8 s on Van der Pol); the ratio is 60-450, no goal
        seconds = h.time({"KenCarp4": run(KenCarp4(), "KenCarp4"),
                          "Dopri5": run(Dopri5(), "Dopri5")}, warmup=0, repeats=rounds)
        h.times(name, seconds, f" (nfe KenCarp4 {nfe['KenCarp4']}, Dopri5 {nfe['Dopri5']}; "
                f"{rounds} round)")
        h.ratio(f"{name}_dopri5_time_vs_kencarp4", seconds["Dopri5"] / seconds["KenCarp4"])


def case_dopri8(h: Harness) -> None:
    e = 0.1

    def two_body(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
        return torch.stack([y[2], y[3], -y[0] / r3, -y[1] / r3])

    y0 = torch.tensor([1 - e, 0.0, 0.0, ((1 + e) / (1 - e)) ** 0.5], dtype=D)
    t = np.array([0.0, 20.0])
    contenders: dict[str, Callable[[], object]] = {
        "Dopri8": lambda: ours(two_body, y0, t, Dopri8(), 1e-10, 1e-10),
        "Dopri5": lambda: ours(two_body, y0, t, Dopri5(), 1e-10, 1e-10),
    }
    try:
        import torchdiffeq

        tt = torch.tensor(t, dtype=D)
        contenders["torchdiffeq_dopri8"] = lambda: torchdiffeq.odeint(
            two_body, y0, tt, method="dopri8", rtol=1e-10, atol=1e-10)
    except ImportError:
        h.note("torchdiffeq not installed: no torchdiffeq contender")
    with torch.no_grad():
        seconds = h.time(contenders)
    h.times("two_body_1e-10", seconds)
    h.ratio("two_body_dopri8_speedup_vs_dopri5", seconds["Dopri5"] / seconds["Dopri8"])
    if "torchdiffeq_dopri8" in seconds:
        h.ratio("two_body_dopri8_speedup_vs_torchdiffeq",
                seconds["torchdiffeq_dopri8"] / seconds["Dopri8"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, repeats=5, quick=1)
    parser.add_argument("--batch", type=int, default=1024,
                        help="problems in the batched Robertson case (default 1024)")
    parser.add_argument("--cases", default="robertson,vdp,hires,batch,explicit,dopri8",
                        help="comma list of cases to run (also: errors, the error table, no timing)")
    args = parser.parse_args()
    h = Harness(args, "stiff solvers against scipy; Dopri8 against Dopri5 (issue 27)")
    cases = set(args.cases.split(","))
    if "robertson" in cases:
        case_single(h, "robertson", robertson, robertson_np, robertson_jac, [1.0, 0.0, 0.0],
                    np.concatenate([[0.0], np.logspace(-5, 5, 11)]), 1e-6, 1e-10)
    if "vdp" in cases:
        case_single(h, "vdp_mu1000", vdp, vdp_np, vdp_jac, [2.0, 0.0], np.linspace(0, 3000, 7),
                    1e-6, 1e-6)
    if "hires" in cases:  # tight tolerance, where order 5 should pay
        case_single(h, "hires", hires, hires_np, hires_jac, [1.0, 0, 0, 0, 0, 0, 0, 0.0057],
                    np.array([0.0, 5.0, 10.0, 50.0, 100.0, 321.8122]), 1e-8, 1e-10)
    if "batch" in cases:
        case_batch(h, args.batch)
    if "explicit" in cases:
        case_explicit_on_stiff(h)
    if "dopri8" in cases:
        case_dopri8(h)
    if "errors" in cases:
        case_errors(h)
    h.finish()


if __name__ == "__main__":
    main()
