"""The fleet simulator's bookkeeping for a cluster run: how devices are spread over nodes, what an event did."""
from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.fleet_sim import connected_after, event_outages, where  # noqa: E402
from edge.delivery.brokers import BrokerAddress, parse_address  # noqa: E402

NODES = tuple(BrokerAddress("127.0.0.1", 9000 + i) for i in range(3))


def test_one_broker_is_host_and_port() -> None:
    assert where(7, NODES[:1]) == {"host": "127.0.0.1", "port": 9000}


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=2, max_value=5))
def test_every_device_lists_every_node_once_starting_at_its_own(index: int, count: int) -> None:
    nodes = tuple(BrokerAddress("10.0.0.1", 1000 + i) for i in range(count))
    listed = [parse_address(a, 1) for a in where(index, nodes)["brokers"]]  # type: ignore[union-attr]
    assert listed[0] == nodes[index % count]
    assert sorted(listed, key=str) == sorted(nodes, key=str)
    # the rotation keeps the cluster's order, so a failed node's devices go to the next one
    assert listed == [nodes[(index + k) % count] for k in range(count)]


def test_devices_spread_evenly_over_the_nodes() -> None:
    firsts = [where(i, NODES)["brokers"][0] for i in range(30)]  # type: ignore[index]
    assert {firsts.count(str(n)) for n in NODES} == {10}


def test_an_event_counts_the_devices_it_cut_off_and_those_that_moved() -> None:
    a, b, c = (str(n) for n in NODES)
    outages = {
        "moved-fast": [(60.2, 61.0, c, a)],
        "moved-slow": [(60.1, 63.5, c, b)],
        "same-node": [(61.0, 62.0, a, a)],  # dropped, then back on its own node
        "before": [(10.0, 11.0, b, c)],  # an outage before the event is not its doing
        "later-too": [(60.5, 62.5, c, a), (200.0, 201.0, a, b)],
    }
    record = event_outages(60.0, outages)
    assert record["devices_cut_off"] == 4
    assert record["devices_moved"] == 3
    assert record["reconnect_s"] == (2.5, 3.5)  # median and max, from the event's start


def test_an_event_that_cut_nobody_off() -> None:
    assert event_outages(60.0, {"d": [(1.0, 2.0, "x", "y")]}) == {"devices_cut_off": 0, "devices_moved": 0,
                                                                  "reconnect_s": None}


def test_devices_connected_after_an_event_are_read_at_the_first_sample_past_each_mark() -> None:
    timeline = [{"t": 99.0, "connected": 500}, {"t": 101.4, "connected": 3}, {"t": 104.0, "connected": 120},
                {"t": 112.5, "connected": 500}]  # a stalled host: samples seconds apart
    assert connected_after(timeline, 100.0, (1, 5, 10, 20)) == [(1, 3), (5, 500), (10, 500)]
