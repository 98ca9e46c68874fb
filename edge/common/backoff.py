"""Capped exponential backoff with jitter, for everything the device retries (the broker, the camera).

Why jitter: a fleet that lost its broker, or a site whose power came back,
would otherwise retry in lock-step and hit the broker (or the USB bus) at
the same instants.
"""
from __future__ import annotations

import random


def backoff_delay(attempt: int, minimum: float, maximum: float, rng: random.Random) -> float:
    """Capped exponential backoff with 'equal jitter': never below half the step, never above the cap."""
    step = min(maximum, minimum * (2 ** min(attempt, 32)))
    return rng.uniform(step / 2, step)
