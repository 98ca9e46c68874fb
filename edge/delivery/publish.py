"""The MQTT client: drains the outbox to the broker and reports every refusal.

Why this shape:
- paho keeps unacknowledged messages only in memory and its queue is
  unbounded by default, so it is never the only copy: messages come from the
  outbox, at most `inflight` at a time, and leave the outbox only when a
  PUBACK with a success reason code arrives. A failure reason code (0x87 Not
  authorized, say) is not a delivery: the message is marked refused in the
  outbox, counted and logged.
- One pump thread owns all bookkeeping; paho's callbacks only post events to
  it, so no lock of ours is ever taken while paho holds its own.
- One thread touches the TLS socket. OpenSSL's connection object is not safe
  for use from several threads at once, and paho-mqtt 2.x, when its loop runs
  on a thread of ours (`loop_forever`), writes each publish straight to the
  socket from the calling thread: the frame loop's health raced the pump and
  paho's own reads and pings, and Mosquitto dropped the device with "bad
  record mac". So paho runs its own network thread (`loop_start`), where
  `publish` only queues a packet and wakes that thread, and the frame loop
  never calls paho at all: health is handed to the pump like everything else
  (tests/integration/test_tls_single_writer.py).
- paho's own reconnect delay doubles without jitter; a fleet that lost its
  broker would come back in lock-step, so the delay is re-drawn with jitter
  before every attempt.
- MQTT 5 first (reason codes in PUBACK, session expiry); a broker that
  answers "unsupported protocol version" gets MQTT 3.1.1, where refused
  messages are dropped by the broker silently (docs/mqtt.md). Silence is
  not such an answer: a broker busy with a fleet's reconnection storm can
  take more than 5 s to answer a CONNECT, so only several MQTT 5 CONNECTs
  in a row that got no CONNACK (closed, or unanswered for ever longer:
  `connack_wait_s`) mean a broker that cannot parse them.
"""
from __future__ import annotations

import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.common.threads import NamedThread, name_this_thread
from edge.wire import serialize
from edge.common import schema
from edge.common.backoff import backoff_delay
from edge.common.errors import ConfigError
from edge.common.schema import Kind, setting
from edge.common.topics import (CRL_TOPIC_LEAF, DEFAULT_TOPIC_ROOT, IDENTITIES_LEAF, MQTT_WILDCARDS, crl_topic,
                                renewal_certificate_topic)
from edge.delivery import brokers as rotation
from edge.delivery.limits import DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_PUBLISHES_PER_S, oversized, publish_room
from edge.delivery.outbox import Outbox, Pending

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL_VERSION = 0x84
# "auto": MQTT 5 CONNECTs in a row without a CONNACK (closed before one, or unanswered) before MQTT 3.1.1.
FALLBACK_AFTER_UNANSWERED = 3
# A 3.1.1-only broker may neither answer nor close when it cannot parse an MQTT 5 CONNECT; the first
# CONNECT is given this long, each later one twice as long as the one before (connack_wait_s).
CONNACK_TIMEOUT_S = 5.0
# TCP and TLS together, per attempt (paho's default is 5 s). A broker taking a fleet's handshakes after its
# restart answers late, and a handshake given up is work the broker did for nothing and must do again: in the
# 500-device storm Mosquitto logged 409 of them. The cost is slower failover from a cluster node that drops
# packets instead of refusing them: 20 s before the next address, not 5 (docs/fleet-scale.md).
CONNECT_TIMEOUT_S = 20.0
CONTROL_HEADROOM = 16
EVENT_POLL_S = 0.5
MIN_WAIT_S = 0.001
STOP_FLUSH_S = 2.0
PROTOCOLS = {"auto": MQTTProtocolVersion.MQTTv5, "5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
MAX_PORT = 65535
PROTOCOL_NAMES = {MQTTProtocolVersion.MQTTv5: "5", MQTTProtocolVersion.MQTTv311: "3.1.1"}


def connack_wait_s(unanswered: int) -> float:
    """How long an MQTT 5 CONNECT waits for its CONNACK after `unanswered` CONNECTs in a row got none.

    Why it grows: one late CONNACK is what a broker busy with a reconnection
    storm gives (it answered after more than 5 s on a loaded host,
    docs/fleet-scale.md); doubling gives such a broker more time with each
    attempt, while a broker that cannot parse MQTT 5 and stays silent still
    gets the device to MQTT 3.1.1 within a minute (5 + 10 + 20 s plus backoff).
    """
    return CONNACK_TIMEOUT_S * 2 ** min(unanswered, FALLBACK_AFTER_UNANSWERED)


def _port(value: int) -> str | None:
    return None if 1 <= value <= MAX_PORT else f"is not between 1 and {MAX_PORT}"


def _plain_prefix(value: str) -> str | None:
    if not value or any(c in value for c in MQTT_WILDCARDS) or value.endswith("/"):
        return "is not a plain topic prefix"
    return None


def _topic(value: str) -> str | None:
    return "is not a topic name" if any(c in value for c in MQTT_WILDCARDS) else None


DEFAULT_HOST = "localhost"
MUTUAL_TLS = "the device uses mutual TLS with a pinned CA"


@dataclass(frozen=True, slots=True)
class MqttConfig(schema.Section):
    """The `[mqtt]` section. `ca`, `cert` and `key` are required in the file; relative paths there
    are relative to the file's folder (`edge.app.config`)."""

    SECTION: ClassVar[str] = "mqtt"

    host: str = setting(DEFAULT_HOST, kind=Kind.TEXT, check=schema.not_empty, expected="the broker's host name")
    port: int = setting(8883, kind=Kind.WHOLE, check=_port, expected=f"a TCP port, 1 to {MAX_PORT}")
    # Several nodes of one clustered broker: tried in turn, the next when one fails (edge.delivery.brokers).
    brokers: tuple[str, ...] = setting((), kind=Kind.TEXTS, check=rotation.list_problem,
                                       expected=rotation.EXPECTED + "; a port left out is [mqtt] port; "
                                       "set either host or brokers")
    topic_root: str = setting(DEFAULT_TOPIC_ROOT, kind=Kind.TEXT, check=_plain_prefix,
                              expected=f"a prefix like '{DEFAULT_TOPIC_ROOT}' without wildcards or trailing slash")
    crl_topic: str = setting("", kind=Kind.TEXT, check=_topic,
                             expected=f"the fleet's CRL topic without wildcards (default: <topic_root>/{CRL_TOPIC_LEAF})")
    ca: Path | None = setting(None, kind=Kind.PATH, expected=f"the CA certificate's path: {MUTUAL_TLS}")
    cert: Path | None = setting(None, kind=Kind.PATH, expected=f"the device certificate's path: {MUTUAL_TLS}")
    key: Path | None = setting(None, kind=Kind.PATH, expected=f"the device key's path: {MUTUAL_TLS}")
    protocol: str = setting("auto", kind=Kind.TEXT, check=schema.one_of(PROTOCOLS),
                            expected=f"an MQTT version: {schema.choices_text(PROTOCOLS)}")
    keepalive_s: int = setting(30, kind=Kind.WHOLE, check=schema.positive, expected="whole seconds, more than 0")
    session_expiry_s: int = setting(7 * 24 * 3600, kind=Kind.WHOLE, check=schema.positive,
                                    expected="whole seconds the broker keeps the session, more than 0")
    inflight: int = setting(20, kind=Kind.WHOLE, check=schema.positive,
                            expected="a whole number of messages handed to the client at once, more than 0")
    backoff_min_s: float = setting(1.0, kind=Kind.NUMBER, check=schema.positive,
                                   expected="seconds, more than 0 and at most backoff_max_s")
    backoff_max_s: float = setting(60.0, kind=Kind.NUMBER, check=schema.positive,
                                   expected="seconds, more than 0 and at least backoff_min_s")
    # A managed broker's limits per connection (edge/delivery/limits.py, docs/fleet-scale.md).
    max_payload_bytes: int = setting(DEFAULT_MAX_PAYLOAD_BYTES, kind=Kind.WHOLE, check=schema.positive,
                                     expected="the broker's largest payload in bytes, more than 0 "
                                              "(AWS IoT Core: 131072)")
    max_publishes_per_s: int = setting(DEFAULT_MAX_PUBLISHES_PER_S, kind=Kind.WHOLE, check=schema.positive,
                                       expected="publishes a second on the connection, more than 0 "
                                                "(AWS IoT Core allows 100)")

    def check(self) -> None:
        if self.backoff_min_s > self.backoff_max_s:
            raise schema.refuse(self.SECTION, "backoff_min_s", self.backoff_min_s,
                                f"is larger than backoff_max_s {self.backoff_max_s}", "backoff_min_s <= backoff_max_s")
        if self.brokers and self.host != DEFAULT_HOST:
            raise schema.refuse(self.SECTION, "host", self.host, "is set together with brokers",
                                "either host (one broker) or brokers (a list), not both")
        try:  # with the real default port: 'b1' and 'b1:8883' are one broker when port is 8883
            rotation.parse_addresses(self.brokers, self.port)
        except rotation.AddressError as exc:
            raise schema.refuse(self.SECTION, "brokers", self.brokers, f"has {exc}", rotation.EXPECTED) from None

    @property
    def addresses(self) -> tuple[rotation.BrokerAddress, ...]:
        """The broker addresses in the order they are tried."""
        return rotation.broker_addresses(self.host, self.port, self.brokers)

    @property
    def crl(self) -> str:
        return self.crl_topic or crl_topic(self.topic_root)

    @classmethod
    def from_mapping(cls, data: object) -> "MqttConfig":
        """The file's `[mqtt]` table; the TLS files are required there (code may leave them unset)."""
        for name in ("ca", "cert", "key"):
            if isinstance(data, Mapping) and name not in data:
                raise schema.SettingError(cls.SECTION, name, None, "is missing",
                                          "paths to the CA certificate, the device certificate and its key: "
                                          + MUTUAL_TLS)
        return schema.read_section(cls, data)  # not super(): slots=True makes a new class


@dataclass(frozen=True, slots=True)
class Topics:
    detections: str
    status: str
    health: str
    audit: str
    identities: str  # matches while identification is granted; an ACL of its own restricts who reads it

    @classmethod
    def for_device(cls, root: str, device: str) -> "Topics":
        base = f"{root}/{device}"
        return cls(f"{base}/detections", f"{base}/status", f"{base}/health", f"{base}/audit",
                   f"{base}/{IDENTITIES_LEAF}")


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    protocol: str | None
    delivered: int
    refused: int
    last_refusal: str | None
    inflight: int
    broker: str | None = None  # the address connected to (`[mqtt] brokers`: which node), None while offline


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Only the configured CA is trusted (pinned), the device proves itself with its own key."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(config.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("[mqtt] ca", f"{config.ca}: {getattr(exc, 'strerror', None) or exc}",
                          "a readable PEM file with the fleet CA certificate") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.cert), str(config.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("[mqtt] cert/key", f"{config.cert} with {config.key}: {getattr(exc, 'strerror', None) or exc}",
                          "the device certificate (PEM, with its chain) and its matching private key") from None
    return context


@dataclass
class _PumpState:
    client: mqtt.Client | None = None
    connected: bool = False
    cursor: int = 0
    inflight: dict[int, Pending] = field(default_factory=dict)
    control: dict[int, str] = field(default_factory=dict)
    sent: tuple[float, ...] = ()  # monotonic times of the publishes in the last second ([mqtt] max_publishes_per_s)
    wait_s: float | None = None  # throttled: when a publish slot frees


class Publisher:
    """Owns one paho client (recreated once for the 3.1.1 fallback) and the pump thread."""

    def __init__(self, device: str, config: MqttConfig, outbox: Outbox, status: serialize.DeviceStatus,
                 *, on_crl: Callable[[bytes], object] | None = None,
                 retained_extra: tuple[tuple[str, bytes], ...] = (),
                 clock: Callable[[], float] | None = None, rng: random.Random | None = None) -> None:
        self.device = device
        self.config = config
        self.outbox = outbox
        self.status = status
        self.topics = Topics.for_device(config.topic_root, device)
        self._on_crl = on_crl
        self._retained_extra = retained_extra
        self._clock = clock or time.time
        self._rng = rng or random.SystemRandom()
        self._context = tls_context(config)
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._protocol = PROTOCOLS[config.protocol]
        self._attempt = 0
        self._addresses = config.addresses
        self._broker = 0  # index into _addresses: the broker tried now (edge.delivery.brokers)
        self._connect_properties: Properties | None = None
        self._lock = threading.Lock()  # guards the figures below, read by health
        # Held by the pump around its publishes and waited for by paho's thread before each new connection
        # (`_on_pre_connect`): no PUBLISH can be queued ahead of a connection's CONNECT.
        self._publish_gate = threading.Lock()
        self._connected = False
        self._delivered = 0
        self._refused = 0
        self._last_refusal: str | None = None
        self._inflight_count = 0
        self._client: mqtt.Client | None = None
        self._fallback = False
        self._ever_connected = False
        self._unanswered = 0  # MQTT 5 CONNECTs in a row that got no CONNACK ("auto" only)
        self._connect_started: float | None = None
        self._refused_retained: set[str] = set()
        self._network: threading.Thread | None = None
        self._client_done = threading.Event()  # this client is being retired: fallback or stop
        self._pump: threading.Thread | None = None
        # Renewal (edge.app.renewal): the handler of the device's certificate topic, subscribed when set, and
        # retained messages of its own (the request) published on every connection until cleared.
        self.on_certificate: Callable[[bytes], object] | None = None
        self.certificate_topic = renewal_certificate_topic(config.topic_root, device)
        self._own_retained: dict[str, bytes] = {}
        self._new_credentials = False
        outbox.add_listener(lambda: self._events.put(("wake",)))

    # --- lifecycle -----------------------------------------------------
    def start(self) -> None:
        self._pump = NamedThread(target=self._pump_loop, name="mqtt-pump", daemon=True)
        self._pump.start()
        self._network = NamedThread(target=self._network_loop, name="mqtt-network", daemon=True)
        self._network.start()

    def stop(self) -> None:
        """Say offline (retained), disconnect cleanly; unacknowledged messages stay in the outbox."""
        self._stopping.set()
        client = self._client
        info = None if client is None else self._publish(client, self.topics.status,
                                                         serialize.status_offline(self.device), qos=1, retain=True)
        if info is not None:
            try:
                info.wait_for_publish(STOP_FLUSH_S)
            except (RuntimeError, ValueError):
                pass
        while self._network is not None and self._network.is_alive():
            # Repeated because a connection attempt in progress can overwrite the state disconnect() sets.
            if self._client is not None:
                self._client.disconnect()
            self._client_done.set()
            self._network.join(EVENT_POLL_S)
        self._events.put(("stop",))
        if self._pump is not None:
            self._pump.join()

    def reload_certificate(self, cert: Path, key: Path) -> None:
        """SIGHUP: a renewed device certificate and key, used from the next connection on.

        Loaded into a scratch context first: a pair that does not load (or does
        not match) raises `ssl.SSLError`/`OSError` and leaves the working one alone.
        """
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key))
        self._context.load_cert_chain(str(cert), str(key))

    def replace_credentials(self, cert: Path, key: Path) -> None:
        """A renewed certificate and key: a fresh TLS context, then a new connection with it.

        The context is built first, so a pair that does not load raises
        `ConfigError` and the working connection stays. The swap itself is the
        network thread's: it retires the client (as for the protocol fallback)
        and makes a new one; the pump starts that client from the outbox's
        first unacknowledged message, so nothing queued is lost (QoS 1 may
        deliver a message twice across the swap; subscribers de-duplicate on seq).
        """
        context = tls_context(replace(self.config, cert=cert, key=key))
        self._context = context
        self.config = replace(self.config, cert=cert, key=key)
        self._new_credentials = True
        client = self._client
        if client is not None:
            client.disconnect()
        self._client_done.set()

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """A retained message of the device's own (the renewal request): sent now if connected and again on
        every connection, so one lost in a reconnection (the swap itself) is sent again. An empty payload
        clears it at the broker; it too is repeated, a few bytes per connection."""
        with self._lock:
            self._own_retained[topic] = payload
        self._events.put(("retained", topic))

    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(self._connected, PROTOCOL_NAMES[self._protocol] if self._connected else None,
                                  self._delivered, self._refused, self._last_refusal, self._inflight_count,
                                  str(self._addresses[self._broker]) if self._connected else None)

    def publish_health(self, payload: bytes) -> None:
        """Hand a health sample to the pump, which publishes it: the caller (the frame loop) never calls paho.

        Health is a periodic sample: QoS 0, and skipped while offline (the next sample supersedes it).
        """
        self._events.put(("health", payload))

    def update_status(self, status: serialize.DeviceStatus) -> None:
        """A new retained status (the accelerator changed, say): published by the pump now if connected,
        and on every later connection."""
        self.status = status
        self._events.put(("status",))

    # --- network thread ------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device, protocol=self._protocol,
                             clean_session=None if v5 else False)
        client.tls_set_context(self._context)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(self.config.inflight)
        client.max_queued_messages_set(self.config.inflight + CONTROL_HEADROOM)
        client.will_set(self.topics.status, serialize.status_offline(self.device), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_pre_connect = self._on_pre_connect
        client.on_socket_open = self._on_socket_open
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.config.session_expiry_s
        self._set_delay(client)
        self._connect_properties = properties
        self._connect_async(client, properties)
        return client

    def _connect_async(self, client: mqtt.Client, properties: Properties | None) -> None:
        address = self._addresses[self._broker]
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        client.connect_async(address.host, address.port, keepalive=self.config.keepalive_s,
                             clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties)

    def _fail_over(self, client: mqtt.Client) -> None:
        """Network thread, after a failure: aim the client's next attempt at the next broker address.

        `connect_async` from paho's own callback only records the address; paho's
        loop makes the attempt after the (jittered) reconnect delay. Messages the
        old node never acknowledged stay in paho's session and in the outbox, and
        go out again through the new node.
        """
        if len(self._addresses) < 2 or self._stopping.is_set() or self._fallback:
            return
        failed = self._addresses[self._broker]
        self._broker = rotation.next_index(self._broker, len(self._addresses))
        log.warning("broker %s failed; next attempt at %s", failed, self._addresses[self._broker])
        self._connect_async(client, self._connect_properties)

    def _network_loop(self) -> None:
        """Supervise paho's own network thread, one client at a time (a second one only for the 3.1.1 fallback).

        `loop_start`, not `loop_forever` on this thread: only in paho's threaded
        mode does `publish` from another thread queue the packet instead of
        writing to the TLS socket itself (see the module docstring).
        """
        while not self._stopping.is_set():
            # Cleared before the client is made: a retirement asked for meanwhile (new credentials) is kept.
            self._client_done.clear()
            client = self._make_client()
            self._client = client
            self._events.put(("client", client))
            self._fallback = False
            client.loop_start()
            self._client_done.wait()
            client.loop_stop()  # joins paho's thread, which ends once disconnect() has taken effect
            if self._new_credentials and not self._stopping.is_set():
                self._new_credentials = False
                self._attempt = 0
                log.info("reconnecting with the renewed device certificate")
                continue
            if not self._fallback:
                return

    def _set_delay(self, client: mqtt.Client) -> None:
        step = rotation.backoff_round(self._attempt, len(self._addresses))
        delay = backoff_delay(step, self.config.backoff_min_s, self.config.backoff_max_s, self._rng)
        self._attempt += 1
        client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]  # paho accepts float seconds

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, _properties: Properties | None) -> None:
        with self._lock:
            self._unanswered = 0  # an answer, whatever it says: the broker parses MQTT 5
            self._connect_started = None
        if reason.is_failure:
            if reason.value == UNSUPPORTED_PROTOCOL_VERSION and self._may_fall_back():
                self._fall_back(client, "the broker answered 'unsupported protocol version'")
                return
            log.error("broker refused the connection: %s", reason)
            self._set_delay(client)  # paho then closes the connection: _on_disconnect moves to the next broker
            return
        self._attempt = 0
        self._ever_connected = True
        with self._lock:
            self._connected = True
        log.info("connected to %s (MQTT %s, session present: %s)", self._addresses[self._broker],
                 PROTOCOL_NAMES[self._protocol], flags.session_present)
        client.subscribe(self.config.crl, qos=1)
        if self.on_certificate is not None:
            client.subscribe(self.certificate_topic, qos=1)
        with self._lock:
            own = tuple(self._own_retained.items())
        for topic, payload in ((self.topics.status, serialize.status_online(self.device, self.status, self._clock(),
                                                                            self.outbox.unclean_stop)),
                               *self._retained_extra, *own):
            with self._lock:
                if topic in self._refused_retained:
                    continue
            info = client.publish(topic, payload, qos=1, retain=True)
            self._events.put(("control", info.mid, topic))
        self._events.put(("connected",))

    def _on_pre_connect(self, _client: mqtt.Client, _userdata: object) -> None:
        """Network thread, as paho begins a new connection: wait out a publish the pump is making.

        Why: paho queues a publish on whatever socket it holds, and while it reconnects it holds the new
        socket a moment before it queues that connection's CONNECT; a PUBLISH queued in that moment goes
        out first and the broker closes the connection for a protocol error (seen in a 500-device
        reconnection storm, where the pump's view of the connection lagged paho's). paho marks itself
        connecting before this call, and the pump publishes only under the gate and only while paho says
        it is connected, so once this returns nothing can come before the CONNECT.
        """
        name_this_thread("mqtt-paho")  # paho's own network thread, started by paho (edge.common.threads)
        with self._publish_gate:
            pass

    def _on_socket_open(self, _client: mqtt.Client, _userdata: object, _sock: object) -> None:
        """The CONNACK clock starts once TCP and TLS are up, so a slow network never looks like an old broker."""
        with self._lock:
            self._connect_started = time.monotonic()

    def _check_connack_timeout(self) -> None:
        """Pump thread: give up an MQTT 5 CONNECT that got no answer within `connack_wait_s`.

        The connection is shut down under paho, which sees it lost and tries
        again after the backoff; `_on_disconnect` counts it as unanswered, and
        only several in a row mean a broker that cannot parse MQTT 5.
        """
        with self._lock:
            started, unanswered = self._connect_started, self._unanswered
        client = self._client
        if (started is None or client is None or not self._may_fall_back()
                or time.monotonic() - started <= connack_wait_s(unanswered)):
            return
        with self._lock:
            if self._connect_started != started:  # answered or closed meanwhile
                return
            self._connect_started = None
        log.warning("no answer to an MQTT 5 CONNECT within %.0f s; connecting again", connack_wait_s(unanswered))
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # The plain socket's shutdown, not SSLSocket's, which would unwrap it under paho's network thread.
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: paho has seen the loss itself

    def _may_fall_back(self) -> bool:
        return (self.config.protocol == "auto" and self._protocol == MQTTProtocolVersion.MQTTv5
                and not self._ever_connected)

    def _fall_back(self, client: mqtt.Client, why: str) -> None:
        log.warning("falling back to MQTT 3.1.1 (%s); refused messages will then be dropped by the broker "
                    "silently, prefer a broker that speaks MQTT 5", why)
        self._protocol = MQTTProtocolVersion.MQTTv311
        self._broker = 0  # the probe's closes moved along the list; 3.1.1 starts again at the first address
        self._fallback = True
        client.disconnect()
        self._client_done.set()

    def _on_connect_fail(self, client: mqtt.Client, _userdata: object) -> None:
        log.warning("cannot reach broker %s; retrying", self._addresses[self._broker])
        with self._lock:
            self._connect_started = None
        self._fail_over(client)
        self._set_delay(client)

    def _on_disconnect(self, client: mqtt.Client, _userdata: object, _flags: object,
                       reason: ReasonCode, _properties: Properties | None) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            self._connect_started = None
        if was and not self._stopping.is_set():
            log.warning("disconnected from broker: %s", reason)
        if not was and self._may_fall_back() and not self._stopping.is_set():
            # A 3.1.1-only broker that cannot parse an MQTT 5 CONNECT closes, or stays silent (amqtt waits for more
            # bytes) until _check_connack_timeout gives up. A storm gives either now and then, never many in a row.
            with self._lock:
                self._unanswered += 1
                unanswered = self._unanswered
            if unanswered >= FALLBACK_AFTER_UNANSWERED:
                self._fall_back(client, f"{unanswered} MQTT 5 CONNECTs in a row got no answer")
                return
        self._events.put(("disconnected",))
        self._fail_over(client)
        self._set_delay(client)

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int,
                    reason: ReasonCode, _properties: Properties | None) -> None:
        self._events.put(("ack", mid, reason))

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int,
                      reasons: list[ReasonCode], _properties: Properties | None) -> None:
        for reason in reasons:
            if reason.is_failure:
                log.error("subscription to the CRL topic %s or the certificate topic %s refused: %s",
                          self.config.crl, self.certificate_topic, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        """The device takes no commands: it reads only the signed CRL and its own renewed certificate, which
        it verifies before use."""
        handler = {self.config.crl: self._on_crl, self.certificate_topic: self.on_certificate}.get(message.topic)
        if handler is None or not message.payload:
            return
        try:
            handler(bytes(message.payload))
        except Exception:  # a bad CRL or certificate must never take the publisher down
            log.exception("handler of %s failed", message.topic)

    # --- pump thread ---------------------------------------------------
    def _pump_loop(self) -> None:
        state = _PumpState()
        while True:
            try:
                wait = EVENT_POLL_S if state.wait_s is None else min(EVENT_POLL_S, max(state.wait_s, MIN_WAIT_S))
                events = [self._events.get(timeout=wait)]
            except queue.Empty:
                events = [("wake",)]
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            acked: list[int] = []
            refused: list[tuple[int, str]] = []
            for event in events:
                kind = event[0]
                if kind == "stop":
                    self.outbox.settle(acked, refused)
                    return
                if kind == "client":
                    # A new client (protocol fallback) has none of the old one's in-flight messages.
                    state = _PumpState(client=event[1])
                elif kind == "connected":
                    state.connected = True
                elif kind == "disconnected":
                    state.connected = False
                elif kind == "control":
                    state.control[event[1]] = event[2]
                elif kind == "ack":
                    self._settle_one(state, event[1], event[2], acked, refused)
                elif kind == "health" and state.connected and state.client is not None:
                    if self._publish(state.client, self.topics.health, event[1], qos=0) is not None:
                        state.sent += (time.monotonic(),)
                elif kind == "status" and state.connected and state.client is not None:
                    self._publish_retained_control(state, self.topics.status,
                                                   serialize.status_online(self.device, self.status, self._clock()))
                elif kind == "retained" and state.connected and state.client is not None:
                    self._publish_own(state, event[1])
            self.outbox.settle(acked, refused)
            self._check_connack_timeout()
            if state.connected and not self._stopping.is_set():
                self._fill(state)
            with self._lock:
                self._inflight_count = len(state.inflight)

    def _publish_own(self, state: _PumpState, topic: str) -> None:
        with self._lock:
            payload = self._own_retained.get(topic)
        if payload is not None:
            self._publish_retained_control(state, topic, payload)

    def _publish_retained_control(self, state: _PumpState, topic: str, payload: bytes) -> None:
        """A retained message of the device's own (status, the renewal request), its PUBACK matched by topic."""
        info = None if state.client is None else self._publish(state.client, topic, payload, qos=1, retain=True)
        if info is not None:
            state.control[info.mid] = topic

    def _publish(self, client: mqtt.Client, topic: str, payload: bytes, qos: int,
                 retain: bool = False) -> mqtt.MQTTMessageInfo | None:
        """One publish of the pump's, only while paho itself says connected (None otherwise; see `_on_pre_connect`)."""
        with self._publish_gate:
            if not client.is_connected():
                return None
            return client.publish(topic, payload, qos=qos, retain=retain)

    def _settle_one(self, state: _PumpState, mid: int, reason: ReasonCode,
                    acked: list[int], refused: list[tuple[int, str]]) -> None:
        pending = state.inflight.pop(mid, None)
        topic = pending.topic if pending is not None else state.control.pop(mid, "control message")
        if reason.is_failure:
            text = f"{topic}: {reason} (0x{reason.value:02x})"
            log.error("broker refused a message, it is not delivered: %s", text)
            with self._lock:
                self._refused += 1
                self._last_refusal = text
            if pending is not None:
                refused.append((pending.id, f"{reason} (0x{reason.value:02x})"))
            else:
                # Mosquitto closes the connection after refusing a retained message; asking
                # again on every reconnect would keep the device from ever publishing.
                with self._lock:
                    self._refused_retained.add(topic)
        elif pending is not None:
            acked.append(pending.id)
            with self._lock:
                self._delivered += 1

    def _fill(self, state: _PumpState) -> None:
        client = state.client
        state.sent, allowed, state.wait_s = publish_room(state.sent, time.monotonic(), self.config.max_publishes_per_s)
        room = min(self.config.inflight - len(state.inflight), allowed)
        if client is None or room <= 0:
            return
        with self._publish_gate:  # see `_on_pre_connect`
            if not client.is_connected():
                return  # the pump's view lags paho's: the messages wait in the outbox for the connected event
            for pending in self.outbox.fetch(state.cursor, room):
                too_big = oversized(len(pending.payload), self.config.max_payload_bytes)
                if too_big is not None:
                    self._refuse_locally(state, pending, too_big)
                    continue
                info = client.publish(pending.topic, pending.payload, qos=pending.qos)
                state.sent += (time.monotonic(),)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    break  # paho's bounded queue is full; the rest stay on disk
                # NO_CONN (the connection was lost after the check): paho keeps the message and sends it
                # on reconnect, so it is in flight either way.
                state.inflight[info.mid] = pending
                state.cursor = pending.id

    def _refuse_locally(self, state: _PumpState, pending: Pending, why: str) -> None:
        """A message the broker's limits would refuse: marked refused in the outbox, counted and logged, never sent."""
        log.error("message for %s not sent: %s", pending.topic, why)
        self.outbox.settle((), [(pending.id, why)])
        with self._lock:
            self._refused += 1
            self._last_refusal = f"{pending.topic}: {why}"
        state.cursor = pending.id
