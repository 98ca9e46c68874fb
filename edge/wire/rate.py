"""Which frames become a `detections` message: every frame with faces, or changes at once and a capped rate.

Why a cap: the per-frame stream is 30 messages a second per device while a
face is in view, so 1,000 devices send 30,000 a second to one broker, and a
managed broker bills and throttles per message. Subscribers mostly need
presence, counts and tracks, and those change far less often than frames
arrive. So in `capped` mode a frame is published at once when the set of
track numbers in view changes (a face came, went, or was re-tracked; the
face count changing is a case of it), and otherwise at most `max_per_s`
times a second, carrying that frame's (the latest) observations. The
per-frame stream stays available as `mode = "per-frame"`.

Pure: `decide` is a function of the previous state, the frame's track numbers
and the time; the service keeps the state (docs/fleet-scale.md for the
default and the measured broker load).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from edge.common import schema
from edge.common.schema import Kind, setting

CAPPED = "capped"
PER_FRAME = "per-frame"
MODES = (CAPPED, PER_FRAME)
# One message a second while nothing changes: presence, counts and tracks stay at most a second old
# between changes, and changes go out at once (docs/fleet-scale.md: 500 devices at this rate on one core).
DEFAULT_MAX_PER_S = 1.0
MAX_PER_S_LIMIT = 1000.0


@dataclass(frozen=True, slots=True)
class RateConfig(schema.Section):
    """The `[detections]` section: how often the device publishes while the scene does not change."""

    SECTION: ClassVar[str] = "detections"

    mode: str = setting(CAPPED, kind=Kind.TEXT, check=schema.one_of(MODES),
                        expected=f"{schema.choices_text(MODES)}: capped publishes changes at once and otherwise "
                                 "at most max_per_s a second, per-frame publishes every frame with faces")
    max_per_s: float = setting(DEFAULT_MAX_PER_S, kind=Kind.NUMBER, check=schema.positive_up_to(MAX_PER_S_LIMIT),
                               expected=f"messages a second while the faces in view do not change (capped mode), "
                                        f"more than 0 and at most {MAX_PER_S_LIMIT:g}")

    @property
    def min_interval_s(self) -> float | None:
        """Seconds between unchanged messages; None for the per-frame stream."""
        return None if self.mode == PER_FRAME else 1.0 / self.max_per_s


PER_FRAME_STREAM = RateConfig(mode=PER_FRAME)


@dataclass(frozen=True, slots=True)
class RateState:
    """What the decision remembers: the tracks in the last frame seen and when a message last went out."""

    tracks: frozenset[int] = frozenset()
    last_sent: float | None = None


def decide(state: RateState, tracks: frozenset[int], now: float,
           min_interval_s: float | None) -> tuple[RateState, bool]:
    """Whether this frame (with these track numbers in view, at `now` seconds) is published.

    - The set of tracks changed (including to or from no faces): yes, at once.
      An empty set after faces is published once, so subscribers see the
      scene empty; further empty frames are not.
    - Unchanged and empty: no.
    - Unchanged with faces: per-frame (`min_interval_s` None) yes; capped, yes
      once `min_interval_s` has passed since the last message. A clock that
      stepped back counts as the interval having passed, so a device is never
      silenced by its clock.
    """
    changed = tracks != state.tracks
    if changed:
        send = True
    elif not tracks:
        send = False
    elif min_interval_s is None or state.last_sent is None:
        send = True
    else:
        elapsed = now - state.last_sent
        send = elapsed >= min_interval_s or elapsed < 0
    return RateState(tracks, now if send else state.last_sent), send
