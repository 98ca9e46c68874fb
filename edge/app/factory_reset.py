"""`edge-camera factory-reset`: record the reset where the fleet can see it, then forget this deployment.

What it does, in order, and stops at the first step that fails:
1. asks for confirmation: the device id typed at a terminal, or `--yes` for
   scripts (refused when stdin is not a terminal and `--yes` is absent);
2. refuses while the service runs (`systemctl stop edge-camera` first): it
   holds the outbox open and would write it again;
3. connects to the configured broker with the device's own TLS identity,
   within `--timeout`; if it cannot, it says why and goes on only with
   `--offline`;
4. appends a `factory-reset` record to the audit log carrying the log's head
   (the hash of its last record, its record count and whether the chain is
   intact) and publishes it on the device's `audit` topic, waiting for the
   PUBACK: the fleet then holds proof of how far the log reached before the
   reset;
5. destroys the device key (both `[policy] key` and `[mqtt] key`), the
   certificates bound to it, the certificate request and device-id file that
   first boot made, the identification gallery, and the outbox with its SQLite
   journal files;
6. says what happens next: first boot makes a new key and request.

Kept: the audit log (the device's history, with the reset in it, and no
secret or biometric data: a reset cannot hide what the device did before),
the trust anchor and CRLs (fleet-wide and public), and the configuration.

How files are destroyed: unlinked, then each directory fsynced so the unlink
itself survives a power cut. Overwriting before unlinking is theatre on flash:
an SD card's or eMMC's controller writes the new data to other cells and
keeps the old ones until it erases them on its own schedule, so the
overwrite reaches neither. Erasure that holds against someone with the card
needs storage encryption whose key is destroyed, or destroying the card.

Exit codes (edge-camera's, README): 0 reset done; 1 failed: the broker could
not be reached or did not acknowledge within the bound and `--offline` was
not given (nothing destroyed; "nothing was destroyed" in the message), or a
file could not be destroyed (each one named; run again); 2 bad usage or
configuration, not confirmed, no terminal without `--yes`, or the service is
running (nothing changed); 7 the audit log cannot be written (nothing
destroyed); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from edge.app.config import DEFAULT_CONFIG
from edge.common.errors import EdgeError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edge.app.config import ServiceConfig
    from edge.delivery.publish import MqttConfig

EVENT = "factory-reset"
DEFAULT_TIMEOUT_S = 10.0
SERVICE_UNIT = "edge-camera.service"
FIRST_BOOT_UNIT = "edge-camera-firstboot.service"
# The outbox's SQLite database and the journal files SQLite keeps beside it.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
CSR_GLOB = "*.csr"
DEVICE_ID_FILE = "device-id"  # written by first boot (provisioning/first_boot.py), made again with the new key
SYSTEMCTL_TIMEOUT_S = 10.0
EXIT_OK = 0
EXIT_PARTIAL = 1


class ResetRefused(EdgeError):
    """Not confirmed, or not safe to run now: nothing was changed."""

    exit_code = 2


class BrokerUnreachable(EdgeError):
    """The audit head could not be handed to the broker within the bound, and `--offline` was not given."""


@dataclass(frozen=True, slots=True)
class ResetPlan:
    """What a reset destroys (the files that exist now) and where its record goes."""

    device: str
    audit_log: Path
    doomed: tuple[Path, ...]
    state_dirs: tuple[Path, ...]


def plan_reset(config: ServiceConfig) -> ResetPlan:
    """Every file of this deployment's identity, gallery and outbox that exists; nothing outside the list."""
    from edge.app.service import OUTBOX_FILE
    from edge.identify.gallery import GALLERY_FILES  # file names only: erasure needs no grant
    from edge.policy.config import AUDIT_LOG_FILE
    from edge.trust.device_key import DEVICE_KEY_FILE

    state_dirs = _unique([config.device.state_dir] + ([config.policy.state_dir] if config.policy else []))
    named: list[Path | None] = [config.mqtt.key, config.mqtt.cert]
    if config.policy is not None:
        named += [config.policy.key, config.policy.certificate]
    for state in state_dirs:
        named += [state / DEVICE_KEY_FILE, state / DEVICE_ID_FILE, *(state / name for name in GALLERY_FILES),
                  *(state / f"{OUTBOX_FILE}{suffix}" for suffix in SQLITE_SUFFIXES), *sorted(state.glob(CSR_GLOB))]
    audit_log = config.policy.audit_log if config.policy is not None else config.device.state_dir / AUDIT_LOG_FILE
    doomed = tuple(path for path in _unique(p for p in named if p is not None)
                   if path.is_file() or path.is_symlink())
    return ResetPlan(config.device.id, audit_log, doomed, tuple(state_dirs))


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for path in paths:
        seen.setdefault(Path(os.path.abspath(path)), None)
    return list(seen)


def destroy(paths: Iterable[Path]) -> list[str]:
    """Unlink each file, then fsync each directory once; the problems, one line per file that remains."""
    problems: list[str] = []
    directories: dict[Path, None] = {}
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
            continue
        directories.setdefault(path.parent, None)
    for directory in directories:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            problems.append(f"{directory}: the removals may not survive a power cut ({exc.strerror})")
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return problems


def service_active(unit: str = SERVICE_UNIT) -> bool:
    """Whether systemd runs the service now; False where there is no systemd to ask."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return False
    try:
        done = subprocess.run([systemctl, "is-active", "--quiet", unit], timeout=SYSTEMCTL_TIMEOUT_S, check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


class AuditChannel:
    """One MQTT connection with the device's own identity, for one record: connect, publish at QoS 1, PUBACK.

    Why not the service's Publisher: it drains an outbox this command is about
    to destroy, and a one-shot needs none of its reconnecting. The client id
    is the device's, with a clean start, so the broker also drops the
    session this deployment kept there.
    """

    def __init__(self, device: str, config: MqttConfig, timeout_s: float) -> None:
        self.device, self.config, self.timeout_s = device, config, timeout_s
        self._client: mqtt.Client | None = None
        self._connack = threading.Event()
        self._puback = threading.Event()
        self._connect_reason: Any = None
        self._publish_reason: Any = None

    def open(self) -> str | None:
        """Connected within the bound, or why not."""
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from edge.common.errors import ConfigError
        from edge.delivery.publish import PROTOCOLS, tls_context

        first = self.config.addresses[0]  # `host` and `port`, or the first of `[mqtt] brokers`
        where = str(first)
        try:
            context = tls_context(self.config)
        except ConfigError as exc:
            return f"the device's TLS identity cannot be used ({exc.message})"
        protocol = PROTOCOLS[self.config.protocol]
        v5 = protocol == MQTTProtocolVersion.MQTTv5
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device, protocol=protocol,
                             clean_session=None if v5 else True)
        client.tls_set_context(context)
        client.connect_timeout = self.timeout_s
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        try:
            client.connect(first.host, first.port, keepalive=max(int(self.timeout_s) * 2, 5),
                           clean_start=True if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}"
        self._client = client
        client.loop_start()
        if not self._connack.wait(self.timeout_s):
            return f"{where} did not answer within {self.timeout_s:.0f} s"
        if getattr(self._connect_reason, "is_failure", False):
            return f"{where} refused the connection: {self._connect_reason}"
        return None

    def publish(self, topic: str, payload: bytes) -> str | None:
        """Acknowledged by the broker within the bound, or why not."""
        assert self._client is not None, "open() first"
        deadline = time.monotonic() + self.timeout_s
        info = self._client.publish(topic, payload, qos=1)
        if not self._puback.wait(max(0.0, deadline - time.monotonic())) or not info.is_published():
            return f"no acknowledgement from the broker within {self.timeout_s:.0f} s"
        if getattr(self._publish_reason, "is_failure", False):
            return f"the broker refused the record on {topic}: {self._publish_reason}"
        return None

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, _client: object, _userdata: object, _flags: object, reason: object,
                    _properties: object) -> None:
        self._connect_reason = reason
        self._connack.set()

    def _on_publish(self, _client: object, _userdata: object, _mid: int, reason: object, _properties: object) -> None:
        self._publish_reason = reason
        self._puback.set()


def _confirm(device: str, stdin: TextIO, out: TextIO) -> None:
    out.write(f"To go ahead, type this device's id ({device}): ")
    out.flush()
    typed = stdin.readline().strip()
    if typed != device:
        raise ResetRefused(f"'{typed}' is not this device's id: nothing was changed",
                           f"type {device} exactly, or pass --yes from a script")


def factory_reset(config: ServiceConfig, *, yes: bool, offline: bool, timeout_s: float,
                  stdin: TextIO, out: TextIO, is_active: Callable[[], bool] = service_active) -> int:
    """The command's steps (module docstring) for a loaded configuration; returns the exit code."""
    from edge.delivery.publish import Topics
    from edge.trust.audit import AuditLog, verify_log
    from edge.wire import serialize

    if is_active():
        raise ResetRefused(f"{SERVICE_UNIT} is running: nothing was changed",
                           "stop it first (systemctl stop edge-camera), then run this again")
    plan = plan_reset(config)
    out.write(f"factory reset of {plan.device}: this destroys\n")
    for path in plan.doomed:
        out.write(f"  {path}\n")
    if not plan.doomed:
        out.write("  (nothing: no key, gallery or outbox is there)\n")
    out.write(f"and keeps the audit log {plan.audit_log}, the trust anchor, CRLs and configuration\n")
    if not yes:
        _confirm(plan.device, stdin, out)
    channel = AuditChannel(plan.device, config.mqtt, timeout_s)
    try:
        problem = channel.open()
        if problem is not None and not offline:
            raise BrokerUnreachable(f"the broker cannot take the audit head: {problem}; nothing was changed",
                                    "bring the broker back, or pass --offline to reset without telling it "
                                    "(the record stays in the audit log)")
        before = verify_log(plan.audit_log)
        record = AuditLog(plan.audit_log).append(EVENT, {
            "head": before.head, "records": before.records, "intact": before.ok,
            "destroys": [str(path) for path in plan.doomed]})
        out.write(f"audit log: record {record['seq']} '{EVENT}', head {record['hash']}\n")
        if problem is None:
            topic = Topics.for_device(config.mqtt.topic_root, plan.device).audit
            problem = channel.publish(topic, serialize.audit(plan.device, record))
            if problem is not None and not offline:
                raise BrokerUnreachable(f"the audit head was not acknowledged: {problem}; nothing was destroyed",
                                        "run again when the broker is back, or with --offline")
        if problem is None:
            out.write(f"published on {config.mqtt.topic_root}/{plan.device}/audit and acknowledged by the broker\n")
        else:
            out.write(f"not published ({problem}); going ahead as --offline asks: compare the head above "
                      "with the broker's last audit record later\n")
    finally:
        channel.close()
    failures = destroy(plan.doomed)
    for failure in failures:
        out.write(f"NOT destroyed: {failure}\n")
    if failures:
        out.write("run factory-reset again once the cause is fixed\n")
        return EXIT_PARTIAL
    state = plan.state_dirs[0]
    out.write(f"destroyed {len(plan.doomed)} file(s). Next: first boot makes a new device key and certificate "
              f"request in {state} (reboot, or systemctl start {FIRST_BOOT_UNIT}); sign the request with "
              "edge-provision, install the new bundle, then start edge-camera.\n")
    return EXIT_OK


def cmd_factory_reset(args: argparse.Namespace) -> int:
    from edge.app.config import load
    from edge.common import schema
    from edge.common.schema import Kind

    if not args.yes and not sys.stdin.isatty():
        raise ResetRefused("stdin is not a terminal, so the reset cannot be confirmed: nothing was changed",
                           "run it at a terminal, or pass --yes from a script")
    timeout = schema.read_flag("--timeout", args.timeout, kind=Kind.NUMBER, check=schema.positive,
                               expected="seconds to wait for the broker, more than 0")
    return factory_reset(load(Path(args.config)), yes=args.yes, offline=args.offline,
                         timeout_s=DEFAULT_TIMEOUT_S if timeout is None else float(timeout),
                         stdin=sys.stdin, out=sys.stdout)


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`edge-camera factory-reset`; the handler is set as `func`."""
    reset = subparsers.add_parser(
        "factory-reset", help="publish the audit head, then destroy the device key, gallery and outbox",
        description=(__doc__ or "").split("\n\n")[0])
    reset.add_argument("--config", default=str(DEFAULT_CONFIG),
                       help=f"the service's TOML configuration (default {DEFAULT_CONFIG})")
    reset.add_argument("--yes", action="store_true", help="do not ask for the device id (for scripts)")
    reset.add_argument("--offline", action="store_true",
                       help="go ahead when the broker cannot be reached (the record stays in the audit log)")
    reset.add_argument("--timeout", metavar="S", help=f"seconds to wait for the broker (default {DEFAULT_TIMEOUT_S:.0f})")
    reset.set_defaults(func=cmd_factory_reset)
