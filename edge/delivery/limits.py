"""The limits a managed broker puts on one connection, as pure decisions for the publisher's pump.

Why on the device: AWS IoT Core (and brokers configured like it) refuses a
payload over 128 KB and throttles, then disconnects, a connection that
publishes more than 100 messages a second; a device that learned this from
disconnections would reconnect, resend its backlog at full speed and be
thrown out again. So the pump never offers more than the broker takes: no
more than `max_publishes_per_s` in any one-second window, and a message over
`max_payload_bytes` is refused on the device (kept in the outbox as refused,
counted and logged, like a broker refusal) instead of being sent to be
dropped. In-flight messages are the existing `[mqtt] inflight` setting.
Values per broker: docs/fleet-scale.md.
"""
from __future__ import annotations

from collections.abc import Sequence

WINDOW_S = 1.0
KIB = 1024
# AWS IoT Core's published limits: 128 KB payload, 100 publishes per second per connection.
DEFAULT_MAX_PAYLOAD_BYTES = 128 * KIB
AWS_PUBLISHES_PER_S = 100
# Ten below AWS's limit: the retained status (and Home Assistant discovery) go out at connection from paho's
# thread, outside this count.
DEFAULT_MAX_PUBLISHES_PER_S = AWS_PUBLISHES_PER_S - 10


def publish_room(sent: Sequence[float], now: float, limit: int) -> tuple[tuple[float, ...], int, float | None]:
    """How many publishes may go now, given the times of earlier ones, so no one-second window holds more
    than `limit`.

    Returns the times still inside the window (the caller keeps only these), the room, and when the room is
    0 the seconds until the oldest leaves the window (when to look again). A clock that stepped back
    forgets the times ahead of it rather than blocking until it catches up.
    """
    recent = tuple(t for t in sent if now - WINDOW_S < t <= now)
    room = max(0, limit - len(recent))
    wait = None if room else max(0.0, recent[0] + WINDOW_S - now)
    return recent, room, wait


def oversized(size: int, limit: int) -> str | None:
    """Why a payload is not sent, or None when it fits the broker's payload limit."""
    if size <= limit:
        return None
    return f"payload of {size} bytes is over [mqtt] max_payload_bytes {limit}: not sent"
