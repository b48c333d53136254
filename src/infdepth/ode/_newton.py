"""Newton's method for implicit stages: batched Jacobians, the Newton matrix and its LU.

The state is read as ``(B, F)``: ``B`` samples of ``F`` features each when it has a batch
axis (``y.ndim >= 2``), one system of ``F = y.numel()`` unknowns otherwise. Samples are
assumed to evolve independently, so the Jacobian is ``B`` blocks ``(F, F)``, one per sample,
from one batched backward pass (reverse mode, as ``jacrev``; or from a user-supplied
function), and the Newton
matrix ``I - h gamma J`` is factorised per sample with one batched LU.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from infdepth.errors import InputError
from infdepth.ode._errors import SolverError

Jacobian = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``jacobian(t, y) -> J``: ``(B, F, F)`` per-sample blocks, or ``(F, F)`` for an unbatched
state (``F = y.numel()``)."""


class NewtonFailure(SolverError):
    """Newton's iteration did not converge (or the Newton matrix was singular) in one step.

    An adaptive solve rejects the step and retries a smaller one; a fixed-step solve fails.
    """


def blocks(y: torch.Tensor) -> tuple[int, int]:
    """``(B, F)``: the per-sample blocks the Jacobian of a state shaped like ``y`` has."""
    if y.ndim <= 1:
        return 1, max(y.numel(), 1)
    return y.shape[0], y[0].numel()


def autograd_jacobian(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], t: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
    """``(B, F, F)``: the Jacobian of ``f(t, .)`` at each sample of ``y``, by reverse mode.

    ``f`` is called once on the whole batch (so a field may hold per-sample data indexed by
    batch position); one batched backward pass (``torch.autograd.grad`` with
    ``is_grads_batched``, vmap over the cotangents) then pulls back the ``F`` cotangents
    ``e_j``, each set on every sample at once, which gives row ``j`` of every sample's block
    because samples are independent. ``f`` must be differentiable by autograd and its
    backward batchable by vmap (no ``.numpy()``, no ``.item()``). One forward and one
    backward: about half the cost of ``torch.func.vjp`` under ``vmap`` on small systems.
    """
    nb, nf = blocks(y)
    eye = torch.eye(nf, dtype=y.dtype, device=y.device)
    # one system: the basis as it is, and rows[j] = e_j^T J is already J (2 operations less)
    basis = (eye.view(nf, *y.shape) if nb == 1
             else eye.unsqueeze(1).expand(nf, nb, nf).reshape(nf, *y.shape))
    with torch.enable_grad():
        probe = y.detach().requires_grad_(True)
        out = f(t, probe)
        if not out.requires_grad:
            raise InputError(
                "the implicit solver needs the Jacobian of f, but f(t, y) is not differentiable "
                "in y (its output has no autograd graph back to y); pass jacobian=... to the "
                "solver (for a field that does not depend on y, a function returning zeros)"
            )
        try:
            (rows,) = torch.autograd.grad(out, probe, basis, is_grads_batched=True,
                                          allow_unused=True)  # rows[j, b] = e_j^T J_b
        except (RuntimeError, TypeError, ValueError) as err:
            raise InputError(
                "the implicit solver needs the Jacobian of f, and autograd could not compute it "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); write f with "
                "differentiable torch operations or pass jacobian=... to the solver"
            ) from err
    if rows is None:  # f depends on parameters only
        return y.new_zeros(nb, nf, nf)
    if nb == 1:  # no graph: create_graph is off
        return rows.view(1, nf, nf)
    return rows.reshape(nf, nb, nf).transpose(0, 1).detach()


def user_jacobian(jac: Jacobian, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A user-supplied Jacobian, checked and shaped ``(B, F, F)``."""
    nb, nf = blocks(y)
    with torch.no_grad():
        j = jac(t, y.detach())
    if not isinstance(j, torch.Tensor) or j.numel() != nb * nf * nf:
        shape = tuple(j.shape) if isinstance(j, torch.Tensor) else type(j).__name__
        raise InputError(f"jacobian(t, y) returned {shape}; expected ({nb}, {nf}, {nf}) per-sample "
                         "blocks (or (F, F) for a state without a batch axis)")
    return j.to(y.dtype).reshape(nb, nf, nf)


SMALL_SYSTEM = 32
"""Up to this many features per sample the Newton matrix is inverted explicitly (once per
factorisation, instead of an LU), so that each Newton iteration's solve is one batched
matrix-vector product instead of ``lu_solve`` (whose dispatch costs 3-5x more on a 3- to
8-component system). A simplified Newton iteration only needs an approximate solve; the
stage it converges to is set by the residual, not by the solve's rounding."""


class NewtonMatrix:
    """``I - h gamma J`` per sample; solves ``(I - h gamma J) x = r`` for a state ``r``.

    For ``F <= SMALL_SYSTEM`` the matrix is inverted explicitly (one ``inv_ex``, checked with
    one host read) and a residual without autograd is solved with the inverse (one ``bmm``);
    the LU is then factorised only when a residual that requires grad (the
    implicit-function step of ``Backprop``) needs it. Larger systems are factorised at once.
    """

    def __init__(self, jac: torch.Tensor, h_gamma: float, t: float | torch.Tensor) -> None:
        nf = jac.shape[-1]
        eye = torch.eye(nf, dtype=jac.dtype, device=jac.device)
        self.matrix = torch.add(eye, jac, alpha=-h_gamma)
        self.h_gamma, self.t = h_gamma, t  # t read to the host only for an error message
        self.inverse: torch.Tensor | None = None
        self.inverse0: torch.Tensor | None = None  # the one block of a single system
        self._lu: tuple[torch.Tensor, torch.Tensor] | None = None
        if nf <= SMALL_SYSTEM:
            inverse, info = torch.linalg.inv_ex(self.matrix)
            # one sum read back: finite unless an entry is not (or the sum overflows, which
            # _check tells apart): 2 operations against isfinite().all()'s 6
            if not math.isfinite(float(inverse.sum())):
                self._check(info, inverse)
            self.inverse = inverse
            if inverse.shape[0] == 1:
                self.inverse0 = inverse[0]
        else:
            self._factor()

    def _check(self, info: torch.Tensor, inverse: torch.Tensor | None = None) -> None:
        """Raise for a matrix with NaN or infinite entries, or a singular one (``info``);
        return when ``inverse`` is given and finite after all."""
        t = float(self.t)
        if not bool(torch.isfinite(self.matrix).all()):
            raise SolverError(f"the Jacobian of f at t={t:.6g} has NaN or infinite entries")
        bad = info > 0
        if inverse is not None and not bool(bad.any()) and bool(torch.isfinite(inverse).all()):
            return
        sample = int(bad.nonzero()[0, 0]) if bool(bad.any()) else 0
        raise NewtonFailure(
            f"the Newton matrix I - h*gamma*J is singular at t={t:.6g} (step size "
            f"{abs(self.h_gamma):.3g} x 1/gamma, sample {sample})"
        )

    def _factor(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._lu is None:
            lu, pivots, info = torch.linalg.lu_factor_ex(self.matrix)
            if not bool(torch.isfinite(self.matrix).all()) or bool((info > 0).any()):
                self._check(info)
            self._lu = (lu, pivots)
        return self._lu

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        nb = self.matrix.shape[0]
        if self.inverse is not None and not r.requires_grad:
            if nb == 1:
                return torch.mv(self.inverse[0], r.reshape(-1)).view(r.shape)
            return torch.bmm(self.inverse, r.reshape(nb, -1, 1)).view(r.shape)
        lu, pivots = self._factor()
        x = torch.linalg.lu_solve(lu, pivots, r.reshape(nb, -1, 1))
        return x.reshape(r.shape)


def sample_rms(x: torch.Tensor, scale: torch.Tensor) -> float:
    """Largest per-sample RMS of ``x / scale`` (one host read)."""
    nb, nf = blocks(x)
    return scaled_rms(x, scale.reciprocal() / math.sqrt(nf), nb)


def scaled_rms(x: torch.Tensor, inv_scale: torch.Tensor, nb: int) -> float:
    """Largest per-sample RMS of ``x`` given ``inv_scale = 1 / (sqrt(F) * scale)``: one vector
    norm (one maximum more with several samples) and one host read."""
    z = x * inv_scale
    if nb == 1:
        return float(torch.linalg.vector_norm(z))
    return float(torch.linalg.vector_norm(z.reshape(nb, -1), dim=1).amax())


class AdjointJacobian:
    """The Jacobian Newton uses for the adjoint system ``(y, a, g)' = (f, -a^T f_y, -a^T f_p)``.

    Per-sample blocks ``J = f_y`` of the forward field; the adjoint's Newton matrix is taken as
    ``diag(I - h gamma J, I + h gamma J^T, I)``, dropping the second-derivative couplings
    ``a^T f_yy`` and ``a^T f_py`` (a simplified Newton iteration only needs an approximation;
    the stiffness lives in ``J`` and ``-J^T``).
    """

    def __init__(self, jac: torch.Tensor, n: int) -> None:
        self.jac, self.n = jac, n


class AdjointNewtonMatrix:
    """LUs of ``I - h gamma J`` and ``I + h gamma J^T``; solves for a flat adjoint state."""

    def __init__(self, jac: AdjointJacobian, h_gamma: float, t: float | torch.Tensor) -> None:
        self.n = jac.n
        self.h_gamma = h_gamma
        self.forward = NewtonMatrix(jac.jac, h_gamma, t)
        self.backward = NewtonMatrix(-jac.jac.transpose(1, 2), h_gamma, t)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        n = self.n
        return torch.cat([self.forward.solve(r[:n]), self.backward.solve(r[n : 2 * n]),
                          r[2 * n :]])


def newton_matrix(jac: torch.Tensor | AdjointJacobian, h_gamma: float, t: float | torch.Tensor
                  ) -> NewtonMatrix | AdjointNewtonMatrix:
    """The factorised Newton matrix for a Jacobian of either kind."""
    if isinstance(jac, AdjointJacobian):
        return AdjointNewtonMatrix(jac, h_gamma, t)
    return NewtonMatrix(jac, h_gamma, t)
