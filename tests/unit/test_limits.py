"""Managed-broker limits as pure decisions (edge/delivery/limits.py): publishes per second and payload size."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.common.errors import ConfigError
from edge.delivery.limits import (AWS_PUBLISHES_PER_S, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_PUBLISHES_PER_S,
                                  oversized, publish_room)
from edge.delivery.publish import MqttConfig

MQTT = {"ca": "ca.pem", "cert": "device.pem", "key": "device-key.pem"}


def test_defaults_fit_aws_iot_core() -> None:
    config = MqttConfig.from_mapping(MQTT)
    assert config.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES == 128 * 1024
    assert config.max_publishes_per_s == DEFAULT_MAX_PUBLISHES_PER_S < AWS_PUBLISHES_PER_S
    assert config.inflight <= 100  # AWS IoT Core: 100 unacknowledged QoS 1 messages per connection


def test_room_is_what_the_last_second_left() -> None:
    assert publish_room((), 10.0, 5) == ((), 5, None)
    assert publish_room((9.0, 9.5, 9.9), 10.0, 5) == ((9.5, 9.9), 3, None)  # 9.0 left the window
    recent, room, wait = publish_room((9.2, 9.4, 9.6), 10.0, 3)
    assert (recent, room) == ((9.2, 9.4, 9.6), 0) and wait == pytest.approx(0.2)


def test_a_clock_that_stepped_back_does_not_block_publishing() -> None:
    assert publish_room((100.0, 100.5), 50.0, 2) == ((), 2, None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 0.2), min_size=1, max_size=200), st.integers(1, 20))
def test_no_one_second_window_ever_holds_more_than_the_limit(gaps: list[float], limit: int) -> None:
    """A pump that asks at arbitrary moments and publishes all the room it gets stays under the limit."""
    now, sent, published = 0.0, (), []
    for gap in gaps:
        now += gap
        sent, room, _wait = publish_room(sent, now, limit)
        sent += (now,) * room
        published += [now] * room
    for t in published:
        assert sum(1 for u in published if t - 1.0 < u <= t) <= limit


def test_a_payload_over_the_limit_is_named_with_its_size() -> None:
    assert oversized(100, 100) is None
    assert oversized(101, 100) == "payload of 101 bytes is over [mqtt] max_payload_bytes 100: not sent"


@pytest.mark.parametrize("key", ["max_payload_bytes", "max_publishes_per_s"])
def test_bad_limits_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MqttConfig.from_mapping({**MQTT, key: 0})
    assert err.value.where == f"[mqtt] {key}"
