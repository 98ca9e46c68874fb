"""The broker list and the rotation over it: pure functions, no network (failover itself: tests/integration/test_cluster.py)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.common.backoff import backoff_delay
from edge.common.errors import ConfigError
from edge.delivery.brokers import (
    AddressError,
    BrokerAddress,
    backoff_round,
    broker_addresses,
    next_index,
    parse_address,
    parse_addresses,
)
from edge.delivery.publish import MqttConfig

TLS = {"ca": "ca.pem", "cert": "device.pem", "key": "device-key.pem"}


@pytest.mark.parametrize(("text", "expected"), [
    ("broker-1", BrokerAddress("broker-1", 8883)),
    ("broker-1:1883", BrokerAddress("broker-1", 1883)),
    ("10.0.0.5:8884", BrokerAddress("10.0.0.5", 8884)),
    ("[::1]", BrokerAddress("::1", 8883)),
    ("[fd00::5]:8884", BrokerAddress("fd00::5", 8884)),
    ("  spaced.example:9 ", BrokerAddress("spaced.example", 9)),
])
def test_an_address_is_host_and_port_with_the_configured_port_as_default(text: str, expected: BrokerAddress) -> None:
    assert parse_address(text, 8883) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"),
    ("host:0", "port '0'"),
    ("host:65536", "port '65536'"),
    ("host:https", "port 'https'"),
    (":8883", "no host"),
    ("fd00::5", "needs brackets"),
    ("[fd00::5", r"is not '\[ipv6\]'"),
    ("my host:1", "space"),
])
def test_a_bad_address_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(AddressError, match=says):
        parse_address(text, 8883)


def test_an_address_listed_twice_is_refused_even_when_written_differently() -> None:
    with pytest.raises(AddressError, match="listed twice"):
        parse_addresses(("b1", "b1:8883"), 8883)


def test_without_a_list_the_single_host_and_port_are_the_only_address() -> None:
    assert broker_addresses("broker", 1884, ()) == (BrokerAddress("broker", 1884),)
    assert MqttConfig.from_mapping({**TLS, "host": "b", "port": 8884}).addresses == (BrokerAddress("b", 8884),)


def test_the_list_keeps_its_order_and_takes_the_default_port_from_the_port_setting() -> None:
    config = MqttConfig.from_mapping({**TLS, "brokers": ["n1:8883", "n2", "[::1]:9"], "port": 8884})
    assert config.addresses == (BrokerAddress("n1", 8883), BrokerAddress("n2", 8884), BrokerAddress("::1", 9))


@pytest.mark.parametrize(("value", "says"), [
    (["n1", "n1"], "listed twice"),
    (["n1:99999"], "not a TCP port"),
    ("n1,n2", "is not a list of text values"),
    ([1883], "is not a list of text values"),
])
def test_a_bad_list_in_the_file_is_a_configuration_error_naming_the_key(value: object, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        MqttConfig.from_mapping({**TLS, "brokers": value})
    text = str(error.value)
    assert "[mqtt] brokers" in text and says in text and "host:port" in text


def test_an_entry_that_repeats_another_through_the_default_port_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"\[mqtt\] brokers.*listed twice"):
        MqttConfig.from_mapping({**TLS, "brokers": ["b1", "b1:8884"], "port": 8884})
    assert len(MqttConfig.from_mapping({**TLS, "brokers": ["b1", "b1:8884"]}).addresses) == 2


def test_host_and_brokers_together_are_refused_rather_than_one_silently_ignored() -> None:
    with pytest.raises(ConfigError, match=r"\[mqtt\] host.*together with brokers"):
        MqttConfig.from_mapping({**TLS, "host": "b0", "brokers": ["b1", "b2"]})


@given(st.integers(1, 9), st.integers(0, 8))
def test_rotation_visits_every_address_once_per_round_from_any_start(count: int, start: int) -> None:
    start %= count
    seen, index = [], start
    for _ in range(count):
        seen.append(index)
        index = next_index(index, count)
    assert sorted(seen) == list(range(count))
    assert index == start


@given(st.integers(1, 9), st.integers(0, 200))
def test_the_backoff_step_grows_only_after_a_full_round_of_failures(count: int, attempt: int) -> None:
    assert backoff_round(attempt, count) == attempt // count
    # every address of the first round is tried after the shortest (jittered) wait
    assert all(backoff_round(a, count) == 0 for a in range(count))
    assert backoff_round(count, count) == 1


def test_one_address_backs_off_as_before() -> None:
    assert [backoff_round(a, 1) for a in range(5)] == [0, 1, 2, 3, 4]


def test_a_dead_node_costs_one_short_wait_not_a_growing_one() -> None:
    """Three nodes, backoff 1..60 s: after one node fails, the wait before the next is at most the minimum."""
    rng = random.Random(7)
    waits = [backoff_delay(backoff_round(a, 3), 1.0, 60.0, rng) for a in range(6)]
    assert all(0.5 <= w <= 1.0 for w in waits[:3])
    assert all(1.0 <= w <= 2.0 for w in waits[3:])
