"""What a subscriber does with QoS 1's duplicates: keep the first message for each (device, seq).

Why: QoS 1 is at-least-once. A PUBACK lost to a dropped connection makes the
device send the message again, and a power cut can resend a partly
acknowledged outbox window (docs/mqtt.md), so the same detection can arrive
twice. A device's `seq` never repeats while its outbox file lives, so
(device, seq) names a message.

Bounded memory: per device, `floor` (every seq up to it was seen) and the
seqs seen above it (`above`, non-empty only while there are gaps). Gaps are
lost messages or messages still on their way; when more than `MAX_AHEAD`
seqs wait above a gap, the gap is given up (counted in `gaps_given_up`) and
the floor moves past it. A device whose outbox was deleted (factory reset)
starts again at seq 1: its messages look old, so the subscriber should
forget that device's state when its retained `status` says it started
afresh, or the operator resets it (`forget`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_AHEAD = 1024


@dataclass(frozen=True, slots=True)
class DeviceSeqs:
    floor: int = 0
    above: frozenset[int] = frozenset()
    gaps_given_up: int = 0


def first_time(state: DeviceSeqs, seq: int, max_ahead: int = MAX_AHEAD) -> tuple[DeviceSeqs, bool]:
    """Whether `seq` is seen for the first time, and the state that remembers it."""
    if seq <= state.floor or seq in state.above:
        return state, False
    floor, above, given_up = state.floor, set(state.above), state.gaps_given_up
    above.add(seq)
    if len(above) > max_ahead:
        lowest = min(above)
        given_up += lowest - floor - 1
        floor = lowest
        above.discard(lowest)
    while floor + 1 in above:
        floor += 1
        above.discard(floor)
    return DeviceSeqs(floor, frozenset(above), given_up), True


@dataclass
class Deduplicator:
    """The subscriber's memory of every device, over `first_time`."""

    max_ahead: int = MAX_AHEAD
    devices: dict[str, DeviceSeqs] = field(default_factory=dict)
    duplicates: int = 0

    def first_time(self, device: str, seq: int) -> bool:
        state, new = first_time(self.devices.get(device, DeviceSeqs()), seq, self.max_ahead)
        self.devices[device] = state
        self.duplicates += not new
        return new

    def forget(self, device: str) -> None:
        self.devices.pop(device, None)
