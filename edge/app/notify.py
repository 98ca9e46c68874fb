"""systemd's notify protocol, with the standard library only (no python-systemd on the device).

The protocol (sd_notify(3)): one datagram of newline-separated `KEY=value`
lines to the AF_UNIX socket named in `$NOTIFY_SOCKET`; a name starting with
`@` is a Linux abstract socket (leading NUL byte in the address). systemd
takes the sender's credentials from the kernel, so nothing else is sent.

What the service says and when (the unit is `Type=notify`, `WatchdogSec=`):
- `READY=1` once the configuration is loaded and the MQTT client started,
  even before the first frame: a camera that is not there yet is a retry
  state, not a failed start.
- `WATCHDOG=1` from healthy turns of the main loop, at most every half of
  `$WATCHDOG_USEC` (the manual's advice), and only when `$WATCHDOG_PID` is
  unset or names this process. A hung loop stops the pings and systemd
  restarts the service.
- `STATUS=` with the mode and frame rate; `STOPPING=1` once, on shutdown.

Outside systemd (`$NOTIFY_SOCKET` unset) every call does nothing. A send
that fails (systemd re-executing, say) is logged once and never stops the
service: detection matters more than supervision.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
US_PER_S = 1_000_000
# Ping at this fraction of the watchdog timeout, as sd_watchdog_enabled(3) recommends.
WATCHDOG_FRACTION = 0.5


def notify_address(value: str | None) -> bytes | None:
    """The socket address for `$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket; None if unusable."""
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None  # e.g. systemd 254's vsock: addresses, which a Pi's systemd never hands out


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings, or None when systemd expects none from this process (sd_watchdog_enabled(3))."""
    raw = environ.get(WATCHDOG_USEC, "")
    owner = environ.get(WATCHDOG_PID, "")
    if owner and owner != str(pid):
        return None  # the variables were meant for the process that started us
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / US_PER_S * WATCHDOG_FRACTION


class Notifier:
    """Sends notify messages; one fresh datagram socket per message, as libsystemd does, so nothing to close."""

    def __init__(self, address: bytes | None, watchdog_every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.watchdog_every_s = watchdog_every_s if address is not None else None
        self._clock = clock
        self._last_ping: float | None = None
        self._stopping = False
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> "Notifier":
        env = os.environ if environ is None else environ
        raw = env.get(NOTIFY_SOCKET)
        address = notify_address(raw)
        if raw and address is None:
            log.warning("%s=%r is not a socket path or @abstract name; systemd will not hear from this service",
                        NOTIFY_SOCKET, raw)
        return cls(address, watchdog_interval(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram; True if it was sent. Newlines inside a value would start a new key, so they are flattened."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a busy manager costs a message, never a frame
                sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify systemd at %r: %s; continuing without supervision messages",
                            self.address, exc.strerror or exc)
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        """systemd arms the watchdog from here (systemd.service(5): 'activated when the start-up is completed')."""
        self._stopping = False
        self.send("READY=1", f"STATUS={status}")
        self._last_ping = self._clock()

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Call on every healthy turn of the main loop; sends at most once per `watchdog_every_s`."""
        if self.watchdog_every_s is None or self._stopping:
            return
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_every_s:
            return
        self._last_ping = now
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        """Once per run: systemd then expects the process to exit, and the watchdog pings stop."""
        if self._stopping:
            return
        self._stopping = True
        self.send("STOPPING=1", f"STATUS={status}")
