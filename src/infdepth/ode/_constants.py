"""Constant tensors kept from one per-sample solve to the next (issue 26).

A per-sample solve with events is often called in a loop, one call per bounce, one per
batch: building its constants (the stage plan of the tableau, the polynomial fit of the
event's samples) every time costs tens of aten operations per call, and the fit's small
batched matrix product can wait milliseconds on a busy BLAS thread pool. They depend only on
their key (a tableau, a dtype and a device; a sample count), so they are built once.

The values are never written in place. They are built outside inference mode (an
inference tensor cannot be saved for a later backward) and without autograd, and kept
only when they are plain tensors: a tensor made under a fake or functional mode
(``torch.compile``, ``torch.export``) is used for that call and not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")

_CACHE: dict[Hashable, tuple[object, object]] = {}


def _plain(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return type(value) is torch.Tensor and not value.is_inference()
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return True


def cached(key: Hashable, owner: object, build: Callable[[], T]) -> T:
    """``build()``, kept under ``key``; ``owner`` (an object the key names by ``id``, or
    ``None``) must be the same object for a kept value to answer."""
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is owner:
        return hit[1]  # type: ignore[return-value]
    if torch.compiler.is_compiling():
        return build()
    with torch.inference_mode(False), torch.no_grad():
        value = build()
    if _plain(value):
        _CACHE[key] = (owner, value)
    return value
