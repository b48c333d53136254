"""The output-grid helpers: the Python bisection (traceable by torch.compile) is the stdlib's."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from infdepth.ode._outputs import bisect_left, bisect_right

keys = st.lists(st.floats(-10, 10, allow_nan=False), max_size=30).map(sorted)


@given(keys, st.floats(-12, 12, allow_nan=False), st.integers(0, 30))
def test_bisection_equals_the_standard_library(a: list[float], x: float, lo: int) -> None:
    lo = min(lo, len(a))
    for k in (x, *a[:3]):  # ties included
        assert bisect_left(a, k, lo=lo) == bisect.bisect_left(a, k, lo=lo)
        assert bisect_right(a, k, lo=lo) == bisect.bisect_right(a, k, lo=lo)
