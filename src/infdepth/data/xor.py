"""The XOR (parity) task of "Going Deeper", section IV.A.

Eight uniform binary inputs in {0, 1}; the label is the parity of the first ``k``
of them (``k = 0``: always 0).  Every batch is fresh and a pure function of
``(seed, step)``, so a run can be resumed exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from infdepth.errors import InputError


def xor_batch(k: int, n: int, generator: torch.Generator, inputs: int = 8) -> tuple[Tensor, Tensor]:
    """``n`` samples: inputs ``(n, inputs)`` in {0, 1} and labels ``(n,)`` = parity of the first ``k``."""
    if not 0 <= k <= inputs:
        raise InputError(f"k={k!r} is not accepted; expected an integer in 0..{inputs}")
    x = torch.randint(0, 2, (n, inputs), generator=generator).to(torch.float32)
    y = x[:, :k].sum(dim=1).remainder(2)
    return x, y


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator for the batch of ``step`` in the run seeded with ``seed``."""
    gen = torch.Generator()
    gen.manual_seed(seed * 1_000_003 + step + 1)
    return gen
