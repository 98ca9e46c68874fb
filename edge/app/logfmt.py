"""The service's log: one logfmt line per event on stderr, which journald keeps.

Why logfmt: a device left alone is read through `journalctl`, by people and
by log shippers. One line per event, `key=value` pairs with the same keys
every time, reads well in a terminal and parses without a schema:

    ts=2026-12-01T16:16:25.123Z level=info event=start msg="detection started" source=picamera2 broker=mqtt.example:8883

`event` names what happened (`start`, `camera-fault`, `camera-back`,
`source-ended`, `reload`, `stop`, ...); lines from modules that log plain
messages carry their module's name as the event (`publish`, `outbox`).
`msg` is the human sentence, always quoted.

Native libraries (libjpeg, libpng, OpenCV, the TFLite runtime) write their
warnings straight to file descriptor 2, bypassing Python. `NativeStderr`
moves that descriptor onto a pipe, keeps Python's own stderr on the real one,
and turns each kind of library message into one plain-words logfmt line:
said once, then again only as its count passes 10, 100, 1000...
It is a process-wide change, so only entry points install it.
"""
from __future__ import annotations

import atexit
import faulthandler
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from edge.common.threads import NamedThread

LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
               logging.CRITICAL: "critical"}
# Characters that make a value need quotes.
_NEEDS_QUOTES = re.compile(r'[\s="\\]')
MS_PER_S = 1000


def quote(value: object) -> str:
    """A logfmt value: bare when it can be, else double-quoted with `\\`, `"` and line breaks escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    else:
        text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return quoted(text)


def quoted(text: str) -> str:
    """Always in double quotes (`msg` is, so a sentence reads the same whatever it holds)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


def timestamp(seconds: float) -> str:
    """UTC, millisecond precision, as journald and log shippers sort it."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * MS_PER_S):03d}Z"


def line(ts: float, level: str, event: str, msg: str, fields: Mapping[str, object] = {}) -> str:
    """One event as one logfmt line: ts, level, event and msg first, then the event's own fields."""
    parts = [f"ts={timestamp(ts)}", f"level={level}", f"event={quote(event)}", f"msg={quoted(msg)}"]
    parts.extend(f"{key}={quote(value)}" for key, value in fields.items())
    return " ".join(parts)


class LogfmtFormatter(logging.Formatter):
    """`logging` records as logfmt lines; `extra={"event": ..., "fields": {...}}` names the event and its keys."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None) or record.name.rsplit(".", 1)[-1]
        fields: dict[str, object] = dict(getattr(record, "fields", None) or {})
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = f"{type(error).__name__}: {error}"
            fields["traceback"] = self.formatException(record.exc_info)
        level = LEVEL_NAMES.get(record.levelno, record.levelname.lower())
        return line(record.created, level, str(event), record.getMessage(), fields)


def event(logger: logging.Logger, name: str, msg: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one named event with its fields (the message is taken as is, never %-formatted)."""
    logger.log(level, "%s", msg, extra={"event": name, "fields": fields})


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Every logger of the process writes logfmt lines to `stream` (stderr); for entry points only."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@dataclass(frozen=True, slots=True)
class NativeNoise:
    """What a native library's stderr line means, in plain words."""

    kind: str
    library: str
    plain: str
    level: int = logging.WARNING


# First match wins; `pattern` is searched in the raw line.
NATIVE_RULES: tuple[tuple[re.Pattern[str], NativeNoise], ...] = (
    (re.compile(r"Corrupt JPEG data|Premature end of JPEG|Invalid SOS|JPEG datastream|Bogus marker|"
                r"Unsupported marker|unknown JFIF|Huffman|extraneous bytes"),
     NativeNoise("damaged-jpeg", "libjpeg", "a damaged JPEG image (truncated or corrupted data); "
                 "an image that could not be decoded is named on its own line")),
    (re.compile(r"^libpng warning"),
     NativeNoise("png-warning", "libpng", "a PNG image has a harmless defect in its metadata; it was read")),
    (re.compile(r"^libpng error"),
     NativeNoise("damaged-png", "libpng", "a damaged PNG image could not be read")),
    (re.compile(r"TensorFlow Lite|XNNPACK|tflite|LiteRT", re.IGNORECASE),
     NativeNoise("tflite", "tflite", "the inference runtime reported", logging.DEBUG)),
    (re.compile(r"^\[ ?(WARN|ERROR|INFO)"),
     NativeNoise("opencv", "opencv", "OpenCV reported a problem (what it means for this device is said on its own line)")),
)
UNKNOWN_NOISE = NativeNoise("other", "native", "a library wrote to stderr")
# Distinct unknown lines remembered; past this they are counted under one kind.
MAX_DISTINCT_UNKNOWN = 64
READ_CHUNK = 65536
# At exit, how long to wait for the last library lines (a child process may still hold the pipe).
CLOSE_WAIT_S = 1.0


def classify(text: str) -> NativeNoise:
    for pattern, noise in NATIVE_RULES:
        if pattern.search(text):
            return noise
    return UNKNOWN_NOISE


def _worth_repeating(count: int) -> bool:
    """Said the first time, then at 10, 100, 1000...: a recurring fault stays visible without flooding."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1


class NativeStderr:
    """File descriptor 2 on a pipe; each line a native library writes becomes a logfmt event, said once."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("edge.native")
        self.counts: dict[str, int] = {}
        self._read_fd: int | None = None
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        """Python's stderr (and faulthandler's) stays on the real descriptor; fd 2 goes to the pipe."""
        sys.stderr.flush()
        real = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        sys.stderr = os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
        faulthandler.enable(file=sys.stderr)  # a crash in native code still leaves its traceback in the journal
        self._read_fd = read_fd
        self._real_fd = real
        self._thread = NamedThread(target=self._read, name="native-stderr", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def close(self) -> None:
        """At exit: fd 2 back on the real stderr, and what the pipe still holds is read and said."""
        if self._thread is None:
            return
        os.dup2(self._real_fd, 2)  # the pipe's last writer goes away: the reader sees its end
        self._thread.join(CLOSE_WAIT_S)
        self._thread = None

    def _read(self) -> None:
        assert self._read_fd is not None
        pending = b""
        while True:
            try:
                chunk = os.read(self._read_fd, READ_CHUNK)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                text = raw.decode("utf-8", "backslashreplace").strip()
                if text:
                    self.heard(text)

    def heard(self, text: str) -> None:
        """One line from a library: logged the first time its kind is heard, then at 10, 100, 1000..."""
        noise = classify(text)
        key = noise.kind
        if noise is UNKNOWN_NOISE:
            key = text if len(self.counts) < MAX_DISTINCT_UNKNOWN or text in self.counts else noise.kind
        count = self.counts.get(key, 0) + 1
        self.counts[key] = count
        if _worth_repeating(count):
            event(self.log, "library-noise", noise.plain, level=noise.level, library=noise.library, kind=noise.kind,
                  count=count, detail=text)
