"""The service's log lines (logfmt) and library noise said once in plain words."""
from __future__ import annotations

import logging

import pytest

from edge.app import logfmt
from edge.app.logfmt import LogfmtFormatter, NativeStderr, classify, line, quote
from edge.common.errors import plain_crypto


def parse(text: str) -> dict[str, str]:
    """A small logfmt reader: what a log shipper does with the line."""
    pairs: dict[str, str] = {}
    i = 0
    while i < len(text):
        key_end = text.index("=", i)
        key = text[i:key_end]
        i = key_end + 1
        if text[i] == '"':
            value, i = [], i + 1
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                    value.append({"n": "\n", "r": "\r", "t": "\t"}.get(text[i], text[i]))
                else:
                    value.append(text[i])
                i += 1
            pairs[key] = "".join(value)
            i += 2
        else:
            end = text.find(" ", i)
            end = len(text) if end < 0 else end
            pairs[key] = text[i:end]
            i = end + 1
    return pairs


def test_a_line_has_ts_level_event_and_a_quoted_msg_first() -> None:
    text = line(0.5, "info", "start", "edge-camera started", {"source": "picamera2", "broker": "mqtt:8883"})
    assert text == ('ts=1970-01-01T00:00:00.500Z level=info event=start msg="edge-camera started" '
                    'source=picamera2 broker=mqtt:8883')


@pytest.mark.parametrize("value", ['say "hi"', "a=b", "two\nlines", "back\\slash", "", "tab\there"])
def test_values_that_need_quotes_round_trip(value: str) -> None:
    text = line(0.0, "warning", "camera-fault", value, {"detail": value})
    parsed = parse(text)
    assert parsed["msg"] == value and parsed["detail"] == value
    assert "\n" not in text


def test_plain_values() -> None:
    assert [quote(v) for v in (None, True, 3, 2.50, "ok")] == ["null", "true", "3", "2.5", "ok"]


def test_the_formatter_names_the_event_and_keeps_a_traceback_on_one_line() -> None:
    logger = logging.getLogger("edge.delivery.publish")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "cannot reach %s", ("broker",), None)
    assert parse(LogfmtFormatter().format(record)) | {"ts": ""} == {
        "ts": "", "level": "warning", "event": "publish", "msg": "cannot reach broker"}
    try:
        raise ValueError("bad")
    except ValueError:
        import sys
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "failed", (), sys.exc_info(),
                                   extra={"event": "exit", "fields": {"code": 78}})
    text = LogfmtFormatter().format(record)
    assert "\n" not in text
    fields = parse(text)
    assert fields["event"] == "exit" and fields["code"] == "78" and fields["error"] == "ValueError: bad"
    assert "Traceback" in fields["traceback"]


def test_library_noise_is_said_once_then_at_10_100_1000(caplog: pytest.LogCaptureFixture) -> None:
    native = NativeStderr(logging.getLogger("edge.native.test"))
    with caplog.at_level(logging.DEBUG, logger="edge.native.test"):
        for _ in range(100):
            native.heard("Corrupt JPEG data: 29633 extraneous bytes before marker 0xd9")
        native.heard("libpng warning: iCCP: known incorrect sRGB profile")
        native.heard("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    said = [(r.fields["kind"], r.fields["count"], r.levelno) for r in caplog.records]  # type: ignore[attr-defined]
    assert said == [("damaged-jpeg", 1, logging.WARNING), ("damaged-jpeg", 10, logging.WARNING),
                    ("damaged-jpeg", 100, logging.WARNING), ("png-warning", 1, logging.WARNING),
                    ("tflite", 1, logging.DEBUG)]
    assert "damaged JPEG" in caplog.records[0].getMessage()


def test_opencv_and_unknown_lines_are_classified() -> None:
    assert classify("[ WARN:0@0.013] global loadsave.cpp:278 findDecoder imread_('x.jpg'): can't open").kind == "opencv"
    assert classify("something else entirely").library == "native"


def test_native_stderr_reads_fd_2_in_a_child(tmp_path) -> None:
    """Installed in a process of its own (it moves fd 2): a C-level write becomes one logfmt line."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import os
        from edge.app import logfmt
        logfmt.NativeStderr().install()
        logfmt.configure()
        os.write(2, b"Premature end of JPEG file\\n")
        os.write(2, b"Premature end of JPEG file\\n")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (only,) = proc.stderr.splitlines()
    fields = parse(only)
    assert fields["event"] == "library-noise" and fields["library"] == "libjpeg" and fields["count"] == "1"
    assert fields["detail"] == "Premature end of JPEG file"


@pytest.mark.parametrize("raw, plain", [
    ("error parsing asn1 value: ParseError { kind: ShortData { needed: 357 } }",
     "damaged DER data: it ends too early (a truncated file)"),
    ('error parsing asn1 value: ParseError { kind: UnexpectedTag { actual: Tag { value: 5 } }, location: ["x"] }',
     "damaged DER data: an unexpected field"),
    ("validation failed: candidates exhausted: signature does not match",
     "no chain to a trusted issuer was found: signature does not match"),
    ("validation failed: cert is not valid at validation time",
     "a certificate in the chain is expired or not yet valid by the device's clock"),
    ("nothing to reword", "nothing to reword"),
])
def test_cryptography_messages_in_plain_words(raw: str, plain: str) -> None:
    assert plain_crypto(raw) == plain


def test_event_helper_passes_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("edge.test.event")
    with caplog.at_level(logging.INFO, logger="edge.test.event"):
        logfmt.event(logger, "start", "100% ready", source="virtual")
    (record,) = caplog.records
    assert record.getMessage() == "100% ready" and record.fields == {"source": "virtual"}  # type: ignore[attr-defined]
