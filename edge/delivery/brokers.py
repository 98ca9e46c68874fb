"""Which broker to try next: the `[mqtt] brokers` list, parsed, and the rotation over it.

Why: a fleet on a clustered broker (RabbitMQ, EMQX, HiveMQ; docs/fleet-cluster.md)
reaches it through several addresses, one per node. When the node a device
talks to fails, the device moves to the next address and keeps its outbox:
whatever the dead node never acknowledged is published again through the
next one. Plain functions over frozen values, so the rotation is tested
without a network (tests/unit/test_brokers.py); `edge.delivery.publish`
applies it to paho's client.

Why the backoff grows per round, not per attempt: the nodes of a cluster are
equivalent, so one dead node should cost a device one short (jittered) wait
before it tries the next, not an ever longer one; only when every address
has failed in turn is the broker side really down, and then the delay grows
as it does with a single broker.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_PORT = 65535
EXPECTED = "broker addresses as 'host' or 'host:port' ('[ipv6]:port' for IPv6), each once"


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class AddressError(ValueError):
    """An entry of the list is not an address; the message says which and why."""


def parse_address(text: str, default_port: int) -> BrokerAddress:
    """'host', 'host:port' or '[v6]:port'; a missing port is `default_port` (the `[mqtt] port` setting)."""
    entry = text.strip()
    if not entry:
        raise AddressError("an empty entry")
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise AddressError(f"{text!r} is not '[ipv6]' or '[ipv6]:port'")
        port_text = rest[1:] if rest else ""
    elif entry.count(":") > 1:
        raise AddressError(f"{text!r}: an IPv6 address needs brackets, as in '[{entry}]:8883'")
    else:
        host, _, port_text = entry.partition(":")
        if not host:
            raise AddressError(f"{text!r} has no host")
    if any(c.isspace() for c in host):
        raise AddressError(f"{text!r} has a space in its host name")
    if not port_text:
        return BrokerAddress(host, default_port)
    if not port_text.isdigit() or not 1 <= int(port_text) <= MAX_PORT:
        raise AddressError(f"{text!r} has port {port_text!r}, not a TCP port 1 to {MAX_PORT}")
    return BrokerAddress(host, int(port_text))


def parse_addresses(entries: tuple[str, ...], default_port: int) -> tuple[BrokerAddress, ...]:
    addresses = tuple(parse_address(e, default_port) for e in entries)
    seen: set[BrokerAddress] = set()
    for address in addresses:
        if address in seen:
            raise AddressError(f"{address} is listed twice")
        seen.add(address)
    return addresses


def list_problem(entries: tuple[str, ...]) -> str | None:
    """The `[mqtt] brokers` check: what is wrong with the list (ports checked against a placeholder default)."""
    try:
        parse_addresses(entries, default_port=1)
    except AddressError as exc:
        return f"has {exc}"
    return None


def broker_addresses(host: str, port: int, entries: tuple[str, ...]) -> tuple[BrokerAddress, ...]:
    """The addresses to rotate over: the list when it is set, otherwise the single `host` and `port`."""
    return parse_addresses(entries, port) if entries else (BrokerAddress(host, port),)


def next_index(current: int, count: int) -> int:
    """After a failure on address `current`, the one to try next (the first again after the last)."""
    return (current + 1) % count


def backoff_round(attempt: int, count: int) -> int:
    """The backoff step for the `attempt`-th failure in a row: one step per full round over the addresses."""
    return attempt // count
