"""Errors raised while integrating (bad input raises :class:`infdepth.errors.InputError`)."""

from __future__ import annotations

from infdepth.errors import DivergenceError


class SolverError(RuntimeError):
    """The solver could not reach the requested time: too many steps or a step too small.

    The message names the time reached and the step size.
    """


class NonFiniteStateError(SolverError, DivergenceError):
    """The state (or its error estimate) became NaN or infinite; names the time and step."""
