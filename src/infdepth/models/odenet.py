"""The networks of the continuous-depth reproductions (Chen et al. 2018), from plain arguments.

- Image classifiers (``ode params``): a downsampling convolutional stem, then a core,
  then norm, ReLU, global average pooling and a linear layer. The core is one
  :class:`~infdepth.ode.ODEBlock` whose vector field is two time-aware 3x3 convolutions
  (:func:`odenet`), or ``blocks`` residual blocks ``h + g(h)`` with the same ``g``
  without the time channel (:func:`resnet`). Normalisation is GroupNorm, which works
  per sample: no statistics are shared across a batch (or across the ranks of a
  data-parallel run).
- Sequence models (``ode spiral``): :class:`NeuralODE` (``dy/dt = MLP(y)``) and the
  :class:`GRUBaseline`, both reading batch-first observations ``(B, T, 3)`` whose
  columns are ``t, y1, y2``.
- Memory probes (``ode memory``): :func:`memory_probe`, ``Linear -> core -> Linear``
  with L residual blocks or an ODE block of L Euler steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdepth.ode import (
    Adjoint,
    Backprop,
    Dopri5,
    Euler,
    GradientMethod,
    ODEBlock,
    Regulariser,
    odeint,
)

# ---------------------------------------------------------------- image classifiers


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class ConcatConv(nn.Module):
    """3x3 convolution that also sees the time ``t`` as a constant extra channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tt = t.to(x.dtype).expand(x.shape[0], 1, x.shape[2], x.shape[3])
        out: Tensor = self.conv(torch.cat([tt, x], 1))
        return out


class ConvField(nn.Module):
    """``g(t, h)`` of the ODE block: norm, ReLU, conv, norm, ReLU, conv, norm (convs see ``t``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.n1, self.c1, self.n2 = _norm(c), ConcatConv(c), _norm(c)
        self.c2, self.n3 = ConcatConv(c), _norm(c)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        out = self.c1(t, F.relu(self.n1(h)))
        out = self.c2(t, F.relu(self.n2(out)))
        result: Tensor = self.n3(out)
        return result


class ResBlock(nn.Module):
    """``h + g(h)`` with the same ``g`` as the ODE block, without the time channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.g = nn.Sequential(_norm(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), _norm(c),
                               nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), _norm(c))

    def forward(self, h: Tensor) -> Tensor:
        out: Tensor = h + self.g(h)
        return out


def stem(channels: int, image_size: int, in_channels: int = 1) -> list[nn.Module]:
    """3x3 conv, norm, ReLU, then stride-2 4x4 convs until the maps are at most 7x7 (8 -> 4, 28 -> 7)."""
    c = channels
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1), _norm(c), nn.ReLU()]
    size = image_size
    while size > 7:
        layers += [nn.Conv2d(c, c, 4, stride=2, padding=1), _norm(c), nn.ReLU()]
        size //= 2
    return layers


def head(channels: int, classes: int) -> list[nn.Module]:
    """Norm, ReLU, global average pooling, linear layer to ``classes`` logits."""
    return [_norm(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)]


def resnet(channels: int, blocks: int, image_size: int, *, classes: int = 10,
           in_channels: int = 1) -> nn.Sequential:
    """Stem, ``blocks`` residual blocks, head: the ResNet baseline of the ODE-Net."""
    core = [ResBlock(channels) for _ in range(blocks)]
    return nn.Sequential(*stem(channels, image_size, in_channels), *core, *head(channels, classes))


def odenet(
    channels: int,
    image_size: int,
    *,
    rtol: float,
    atol: float,
    adjoint: bool = True,
    step_size: float | None = None,
    t1: float = 1.0,
    learn_t1: bool = False,
    t1_l2: float = 0.0,
    classes: int = 10,
    in_channels: int = 1,
    regularisers: Sequence[Regulariser] = (),
    control_integrals: bool = False,
) -> nn.Sequential:
    """Stem, one :class:`~infdepth.ode.ODEBlock` ``dh/dt = g(t, h)`` on ``[0, t1]``, head.

    Args:
        channels: channels of every convolution.
        image_size: height (= width) of the input images.
        rtol, atol: tolerances of the Dopri5 solve (ignored with ``step_size``).
        adjoint: gradients by the continuous adjoint (else backprop through the solver).
        step_size: fixed Dopri5 steps of this size instead of adaptive ones; the solve is
            then the same for every batch split (as in a data-parallel run).
        t1: end time (the block's depth).
        learn_t1: make ``t1`` a trainable parameter, penalised by ``t1_l2 * t1**2``.
        t1_l2: weight of that penalty (added to the loss by :func:`infdepth.train.fit`).
        classes: number of output logits.
        in_channels: channels of the input images.
        regularisers: ``KineticEnergy(w)`` / ``JacobianFrobenius(w)`` of the block, integrated
            in training and added to its ``penalty()`` (which ``fit`` adds to the loss).
        control_integrals: let their integrals steer the training solve's steps
            (:class:`~infdepth.ode.ODEBlock`; default: ``h`` alone does).
    """
    method: GradientMethod = Adjoint() if adjoint else Backprop()
    block = ODEBlock(ConvField(channels), t1=t1, learn_t1=learn_t1, t1_l2=t1_l2, solver=Dopri5(),
                     rtol=rtol, atol=atol, step_size=step_size, adjoint=method,
                     regularisers=regularisers, control_integrals=control_integrals)
    return nn.Sequential(*stem(channels, image_size, in_channels), block, *head(channels, classes))


def ode_block(model: nn.Module) -> ODEBlock | None:
    """The first :class:`~infdepth.ode.ODEBlock` inside ``model`` (None for a ResNet)."""
    return next((m for m in model.modules() if isinstance(m, ODEBlock)), None)


# ---------------------------------------------------------------- sequence models


class SpiralField(nn.Module):
    """``f(t, y) = MLP(y)``, 2 -> hidden -> hidden -> 2 with tanh; counts its calls in ``nfe``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 2))
        self.nfe = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        out: Tensor = self.net(y)
        return out


class NeuralODE(nn.Module):
    """``dy/dt = MLP(y)``, autonomous; each sample integrated through its own time grid.

    ``forward(obs)`` takes batch-first observations ``(B, T, 3)`` (columns ``t, y1, y2``)
    and returns the states at ``obs[:, 1:]`` integrated from ``obs[:, 0]``, ``(B, T-1, 2)``.
    """

    def __init__(self, hidden: int, *, rtol: float, atol: float) -> None:
        super().__init__()
        self.field = SpiralField(hidden)
        self.rtol, self.atol = rtol, atol

    @property
    def nfe(self) -> int:
        """Evaluations of the vector field so far."""
        return self.field.nfe

    def forward(self, obs: Tensor) -> Tensor:
        t, y = obs[..., 0].T, obs[..., 1:]
        return self.predict(y[:, 0], t)[1:].transpose(0, 1)

    def predict(self, y0: Tensor, t: Tensor) -> Tensor:
        """States at per-sample times ``t`` ``(T, B)`` from ``y0`` ``(B, 2)`` at ``t[0]``."""
        rel = t - t[:1]  # autonomous: every sample may start its clock at 0
        out: Tensor = odeint(self.field, y0, rel, solver=Dopri5(), rtol=self.rtol, atol=self.atol)
        return out

    def one_step(self, t: Tensor, y: Tensor) -> Tensor:
        """Predictions of ``y[1:]`` ``(T-1, B, 2)``, each from the observation before it."""
        steps, batch = t.shape[0] - 1, t.shape[1]
        dt = (t[1:] - t[:-1]).reshape(-1)
        grid = torch.stack([torch.zeros_like(dt), dt])
        pred = odeint(self.field, y[:-1].reshape(-1, 2), grid, solver=Dopri5(), rtol=self.rtol,
                      atol=self.atol)[1]
        return pred.reshape(steps, batch, 2)


class GRUBaseline(nn.Module):
    """Reads ``(y_i, t_{i+1} - t_i)`` and predicts ``y_{i+1} = y_i + head(state)``.

    ``forward(obs)`` takes batch-first observations ``(B, T, 3)`` and returns the
    teacher-forced one-step predictions of ``obs[:, 1:, 1:]``, ``(B, T-1, 2)``.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, hidden)
        self.head = nn.Linear(hidden, 2)
        self.hidden = hidden

    def _step(self, y: Tensor, dt: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = self.cell(torch.cat([y, dt.unsqueeze(1)], 1), h)
        return y + self.head(h), h

    def forward(self, obs: Tensor) -> Tensor:
        return self.teacher_forced(obs[..., 0].T, obs[..., 1:].transpose(0, 1)).transpose(0, 1)

    def teacher_forced(self, t: Tensor, y: Tensor) -> Tensor:
        """One-step predictions of ``y[1:]`` from the true ``y[:-1]`` (time-first ``(T, B, ...)``)."""
        h = y.new_zeros(y.shape[1], self.hidden)
        preds = []
        for i in range(y.shape[0] - 1):
            p, h = self._step(y[i], t[i + 1] - t[i], h)
            preds.append(p)
        return torch.stack(preds)

    def extrapolate(self, t: Tensor, y: Tensor, t_ext: Tensor) -> Tensor:
        """Read the observations, then feed back predictions at the times ``t_ext``."""
        h = y.new_zeros(y.shape[1], self.hidden)
        for i in range(y.shape[0] - 1):
            _, h = self._step(y[i], t[i + 1] - t[i], h)
        cur, prev_t = y[-1], t[-1]
        out = []
        for j in range(t_ext.shape[0]):
            cur, h = self._step(cur, t_ext[j] - prev_t, h)
            prev_t = t_ext[j]
            out.append(cur)
        return torch.stack(out)


# ---------------------------------------------------------------- memory probes


class VectorField(nn.Module):
    """``f(t, h) = W2 tanh(W1 h + b1) + b2``, the same map a residual block adds."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(width, width)
        self.lin2 = nn.Linear(width, width)

    def forward(self, t: Tensor | None, h: Tensor) -> Tensor:
        out: Tensor = self.lin2(torch.tanh(self.lin1(h)))
        return out


class Residual(nn.Module):
    """``h + f(h)`` with ``f`` a :class:`VectorField`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.f = VectorField(width)

    def forward(self, h: Tensor) -> Tensor:
        out: Tensor = h + self.f(None, h)
        return out


def memory_probe(kind: str, depth: int, *, width: int, inputs: int, classes: int) -> nn.Sequential:
    """``Linear(inputs, width) -> core -> Linear(width, classes)``.

    ``kind`` is ``resnet`` (``depth`` residual blocks), ``ode-backprop`` or ``ode-adjoint``
    (an ODE block integrated by ``depth`` Euler steps of size 1, so that step l *is*
    residual block l with shared weights, differentiated by backprop or the adjoint).
    """
    core: nn.Module
    if kind == "resnet":
        core = nn.Sequential(*[Residual(width) for _ in range(depth)])
    elif kind in ("ode-backprop", "ode-adjoint"):
        method: GradientMethod = Adjoint() if kind == "ode-adjoint" else Backprop()
        core = ODEBlock(VectorField(width), t1=float(depth), solver=Euler(), step_size=1.0, adjoint=method)
    else:
        raise ValueError(f"kind={kind!r}; expected resnet, ode-backprop or ode-adjoint")
    return nn.Sequential(nn.Linear(inputs, width), core, nn.Linear(width, classes))
