"""Per-face track numbers from box overlap between consecutive frames.

Why: subscribers want to follow a face across frames (count dwell, smooth a
box) without the device ever knowing or publishing who it is. Track numbers
start at a random value on each run and live only in memory, so they cannot
link two runs or be used as an identifier.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

from edge.vision.detection import Box

TRACK_MODULUS = 2**31
DEFAULT_MIN_IOU = 0.3
DEFAULT_MAX_MISSED = 5


@dataclass(frozen=True, slots=True)
class Track:
    number: int
    box: Box
    missed: int


@dataclass(frozen=True, slots=True)
class TrackerState:
    """Everything the tracker remembers: live tracks and the next number to hand out."""

    tracks: tuple[Track, ...]
    next_number: int


def initial_state(start: int | None = None) -> TrackerState:
    """A fresh state; the first track number is random unless a test pins it."""
    first = secrets.randbelow(TRACK_MODULUS) if start is None else start % TRACK_MODULUS
    return TrackerState(tracks=(), next_number=first)


def step(
    state: TrackerState,
    boxes: tuple[Box, ...],
    min_iou: float = DEFAULT_MIN_IOU,
    max_missed: int = DEFAULT_MAX_MISSED,
) -> tuple[TrackerState, tuple[int, ...]]:
    """Assign a track number to each box: greedy best-overlap matching, new numbers for the rest.

    Tracks survive `max_missed` frames without a match so a face that blinks
    out of one frame keeps its number.
    """
    pairs = sorted(
        ((box.iou(track.box), bi, ti) for bi, box in enumerate(boxes) for ti, track in enumerate(state.tracks)),
        reverse=True,
    )
    box_to_track: dict[int, int] = {}
    used_tracks: set[int] = set()
    for overlap, bi, ti in pairs:
        if overlap < min_iou:
            break
        if bi in box_to_track or ti in used_tracks:
            continue
        box_to_track[bi] = ti
        used_tracks.add(ti)

    next_number = state.next_number
    numbers: list[int] = []
    live: list[Track] = []
    for bi, box in enumerate(boxes):
        if bi in box_to_track:
            number = state.tracks[box_to_track[bi]].number
        else:
            number = next_number
            next_number = (next_number + 1) % TRACK_MODULUS
        numbers.append(number)
        live.append(Track(number, box, 0))
    for ti, track in enumerate(state.tracks):
        if ti not in used_tracks and track.missed < max_missed:
            live.append(Track(track.number, track.box, track.missed + 1))
    return TrackerState(tuple(live), next_number), tuple(numbers)


class Tracker:
    """The imperative shell over `step`, for the run loop."""

    def __init__(self, min_iou: float = DEFAULT_MIN_IOU, max_missed: int = DEFAULT_MAX_MISSED) -> None:
        self._state = initial_state()
        self._min_iou = min_iou
        self._max_missed = max_missed

    def assign(self, boxes: tuple[Box, ...]) -> tuple[int, ...]:
        self._state, numbers = step(self._state, boxes, self._min_iou, self._max_missed)
        return numbers
