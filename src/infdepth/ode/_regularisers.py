"""Regularisers that keep a neural ODE cheap to solve (Finlay et al. 2020, "How to train
your neural ODE"): integrals along the trajectory, solved alongside the state.

* :class:`KineticEnergy`: ``int_0^t1 |f(t, h)|^2 dt``, straight trajectories;
* :class:`JacobianFrobenius`: ``int_0^t1 |df/dh|_F^2 dt`` by Hutchinson's estimator
  ``E_eps |eps^T df/dh|^2 = |df/dh|_F^2`` with one Gaussian ``eps`` per sample, drawn once per
  solve (a fixed ``eps`` keeps the augmented field smooth for the solver), so one
  vector-Jacobian product per evaluation of ``f``; smooth dynamics.

Each integral is one more channel per sample of the state: the state ``(B, *feat)`` becomes
``(B, F + R)``, integrated on the same steps, and every gradient method differentiates them.
:class:`~infdepth.ode.ODEBlock` takes them as ``regularisers=`` and adds ``weight * mean over
samples`` of each integral to its ``penalty()``.

Error control: the integrals are quadratures, they never feed back into ``h``, so their local
error does not make the trajectory less accurate; measured with the rest of the state (an RMS
over all components) they steer the step size anyway, and they start at 0, where ``rtol``
gives them no room: one channel whose error is large against ``atol`` can force smaller steps
than ``h`` needs (the forward-pass twin of the adjoint's seminorm, Kidger et al. 2021).
:meth:`RegularisedField.state_norm` measures ``h`` alone; ``ODEBlock`` uses it unless
``control_integrals=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from infdepth.errors import InputError, check_float
from infdepth.ode._stepping import VectorField


@dataclass(frozen=True)
class KineticEnergy:
    """``weight * mean_b int_0^t1 |f(t, h_b)|^2 dt`` (the squared norm summed over features)."""

    weight: float

    def __post_init__(self) -> None:
        check_float("KineticEnergy.weight", self.weight, low=0.0)


@dataclass(frozen=True)
class JacobianFrobenius:
    """``weight * mean_b int_0^t1 |df/dh (t, h_b)|_F^2 dt``, Hutchinson-estimated per sample."""

    weight: float

    def __post_init__(self) -> None:
        check_float("JacobianFrobenius.weight", self.weight, low=0.0)


Regulariser = KineticEnergy | JacobianFrobenius


def check_regularisers(regs: Sequence[Regulariser]) -> tuple[Regulariser, ...]:
    """The regularisers as a tuple, each at most once."""
    out = tuple(regs)
    for r in out:
        if not isinstance(r, (KineticEnergy, JacobianFrobenius)):
            raise InputError(f"regularisers: {r!r} is not accepted; expected KineticEnergy(w) or "
                             "JacobianFrobenius(w)")
    if len({type(r) for r in out}) != len(out):
        raise InputError("regularisers: each kind may be given once")
    return out


class RegularisedField:
    """``(t, z) -> dz/dt`` for ``z = [h, integrals]`` of shape ``(B, F + R)``.

    ``noise`` is Hutchinson's ``eps``, shaped like ``h`` (fixed for the solve).
    """

    def __init__(self, f: VectorField, shape: torch.Size, regs: tuple[Regulariser, ...],
                 noise: torch.Tensor | None) -> None:
        self.f, self.shape, self.regs, self.noise = f, shape, regs, noise
        self.batch = shape[0] if len(shape) >= 2 else 1
        self.features = int(torch.Size(shape).numel()) // self.batch

    def state_norm(self, x: torch.Tensor) -> torch.Tensor:
        """Mean square of the ``h`` part of a scaled error ``x`` of shape ``(B, F + R)``: the
        error norm that leaves the integral channels out (they are integrated on the steps
        ``h`` needs, without steering them)."""
        return x.reshape(self.batch, -1)[:, : self.features].square().mean()

    def over(self, f: VectorField) -> RegularisedField:
        """The same augmented field (same ``eps``) around another entry point to ``f``."""
        return RegularisedField(f, self.shape, self.regs, self.noise)

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = z[:, : self.features].reshape(self.shape)
        channels: list[torch.Tensor] = []
        if self.noise is None:
            dh = self.f(t, h)
        else:
            outer = torch.is_grad_enabled()
            with torch.enable_grad():
                # without outer grad (the forward of Adjoint and Checkpointed) h is a view that
                # may report requires_grad (its state does) with no graph behind it: the
                # product would then come back None, a zero channel; a fresh leaf is measured
                h_in = h if outer and h.requires_grad else h.detach().requires_grad_(True)
                dh = self.f(t, h_in)
                (vjp,) = torch.autograd.grad(dh, h_in, self.noise, create_graph=outer,
                                             allow_unused=True)
            if vjp is None:
                vjp = torch.zeros_like(h)
            if not outer:
                dh = dh.detach()
            jac_channel = vjp.reshape(self.batch, -1).square().sum(1, keepdim=True)
        dh_flat = dh.reshape(self.batch, -1)
        for r in self.regs:
            if isinstance(r, KineticEnergy):
                channels.append(dh_flat.square().sum(1, keepdim=True))
            else:
                channels.append(jac_channel)
        return torch.cat([dh_flat, *channels], dim=1)


def augment(f: VectorField, h0: torch.Tensor, regs: tuple[Regulariser, ...]
            ) -> tuple[RegularisedField, torch.Tensor]:
    """The augmented field and its initial state ``[h0, 0, ...]``."""
    needs_noise = any(isinstance(r, JacobianFrobenius) for r in regs)
    noise = torch.randn_like(h0) if needs_noise else None
    field = RegularisedField(f, h0.shape, regs, noise)
    flat = h0.reshape(field.batch, field.features)
    z0 = torch.cat([flat, flat.new_zeros(field.batch, len(regs))], dim=1)
    return field, z0


def split(z1: torch.Tensor, h0: torch.Tensor, regs: tuple[Regulariser, ...]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h(t1), penalty)``: the state and ``sum_r weight_r * mean_b integral_r``."""
    features = z1.shape[1] - len(regs)
    h1 = z1[:, :features].reshape(h0.shape)
    weights = torch.tensor([r.weight for r in regs], dtype=z1.dtype, device=z1.device)
    return h1, (z1[:, features:].mean(0) * weights).sum()
