"""Summary statistics for the figures the device reports and the benchmarks print.

Why one nearest-rank percentile: the health topic, `edge-camera bench` and
the benchmark scripts all report medians and tail latencies, and two
definitions (nearest rank here, numpy's interpolation there) would make the
same samples read differently in different places. Nearest rank is always
one of the measured values, and needs no numpy, so the field tool can share
this module.
"""
from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (`q` in 0..100): always one of the measured values, None when there are none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q}: expected a number from 0 to 100")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
