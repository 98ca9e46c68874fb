"""The ports the demo and the tests' brokers listen on (edge.demo.broker.free_port)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from edge.demo import broker
from edge.demo.broker import LOOPBACK, LOWEST_PICKED_PORT, free_port


def ephemeral_low() -> int:
    return int(broker.EPHEMERAL_RANGE_FILE.read_text().split()[0])


def test_a_picked_port_is_free_and_below_the_ports_of_outgoing_connections() -> None:
    """No connection this machine opens can take it between the pick and the broker's bind."""
    for _ in range(50):
        port = free_port()
        assert LOWEST_PICKED_PORT <= port < ephemeral_low()
        with socket.socket() as s:
            s.bind((LOOPBACK, port))


def free_pair() -> tuple[socket.socket, int]:
    """A listening socket on some port P with P - 1 free: the two-port range of the test below."""
    while True:
        held = socket.socket()
        held.bind((LOOPBACK, 0))
        held.listen()
        below = held.getsockname()[1] - 1
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, below))
            except OSError:
                held.close()
                continue
        return held, below


def test_a_port_in_use_is_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the range narrowed to two ports and one of them listened on, the other is picked."""
    held, free = free_pair()
    with held:
        monkeypatch.setattr(broker, "LOWEST_PICKED_PORT", free)
        monkeypatch.setattr(broker, "DEFAULT_EPHEMERAL_LOW", free + 2)
        monkeypatch.setattr(broker, "EPHEMERAL_RANGE_FILE", Path("/nonexistent/ip_local_port_range"))
        assert {free_port() for _ in range(20)} == {free}


def test_without_room_below_the_kernels_range_the_kernel_picks(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text(f"{LOWEST_PICKED_PORT}\t60999\n")
    monkeypatch.setattr(broker, "EPHEMERAL_RANGE_FILE", narrow)
    port = free_port()
    with socket.socket() as s:
        s.bind((LOOPBACK, port))
