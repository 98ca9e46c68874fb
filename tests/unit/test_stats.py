"""The one percentile: nearest rank, as the health topic, `edge-camera bench` and the benchmarks report it."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from edge.common.stats import percentile


def test_nearest_rank_is_one_of_the_values() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.0  # the lower middle, not numpy's interpolated 2.5
    assert percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert percentile([7.0], 0) == 7.0 and percentile([7.0, 9.0], 100) == 9.0


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_is_a_member_and_grows_with_q(values: list[float], q: float) -> None:
    got = percentile(values, q)
    assert got in values
    assert got is not None and got <= (percentile(values, min(100.0, q + 10)) or got)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_a_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="from 0 to 100"):
        percentile([1.0], q)
