"""The only way onto the network: every MQTT payload is made here.

Why one module: the privacy promise (no pixels, landmarks, embeddings or
attributes on the wire) is easiest to keep when exactly one place turns
values into bytes, and the faces it writes come from `Observation` alone.
Each function matches one JSON Schema in `edge/wire/schemas/`.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from edge.wire.observation import Identification, Observation

TIME_DECIMALS = 3
RATE_DECIMALS = 1
_SEPARATORS = (",", ":")


def timestamp(epoch_seconds: float) -> str:
    """RFC 3339 UTC with milliseconds: precise enough for latency, the same on every device."""
    moment = datetime.fromtimestamp(epoch_seconds, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(document: Mapping[str, object]) -> bytes:
    return json.dumps(document, separators=_SEPARATORS, ensure_ascii=False, allow_nan=False).encode()


def _face(observation: Observation) -> dict[str, object]:
    if not isinstance(observation, Observation):
        raise TypeError(f"only Observation may be published, got {type(observation).__name__}")
    pose = observation.pose
    return {
        "box": [float(v) for v in observation.box],
        "score": float(observation.score),
        "pose": None if pose is None else {"yaw": int(pose.yaw), "pitch": int(pose.pitch), "roll": int(pose.roll)},
        "track": int(observation.track),
    }


def detections(device: str, seq: int, frame_number: int, capture_time: float,
               observations: Sequence[Observation]) -> bytes:
    """One processed frame: its identity, its capture time and the anonymised faces."""
    return _dump({
        "device": device,
        "seq": int(seq),
        "frame": int(frame_number),
        "captured": timestamp(capture_time),
        "faces": [_face(o) for o in observations],
    })


def identities(device: str, seq: int, identification: Identification) -> bytes:
    """One match on the `identities` topic: the track, the pseudonymous label and the score; nothing else.

    `seq` is the identities topic's own counter (the outbox numbers each stream apart).
    """
    if not isinstance(identification, Identification):
        raise TypeError(f"only Identification may be published as an identity, got {type(identification).__name__}")
    return _dump({
        "device": device,
        "seq": int(seq),
        "track": int(identification.track),
        "label": str(identification.label),
        "score": float(identification.score),
    })


# status and health's certificate.detail is one sentence or two, bounded.
MAX_DETAIL_CHARS = 400


@dataclass(frozen=True, slots=True)
class CertificateReport:
    """The device certificate as status and health show it (edge.trust.renewal.CertificateStatus).

    Why on the wire: a device left alone for years must say, before it is too
    late, that its certificate is running out, that it was revoked, or that it
    expired and why nothing arrives any more.
    """

    state: str  # valid, renewing, expired, revoked
    serial: str
    expires: float
    days_left: float
    detail: str


def _certificate(report: CertificateReport | None) -> dict[str, object] | None:
    if report is None:
        return None
    return {"state": report.state, "serial": report.serial, "expires": timestamp(report.expires),
            "days_left": round(float(report.days_left), RATE_DECIMALS), "detail": report.detail[:MAX_DETAIL_CHARS]}


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What the retained status topic says while the device is online."""

    mode: str
    model: str
    accelerator: str
    firmware: str
    certificate: CertificateReport | None = None


@dataclass(frozen=True, slots=True)
class UncleanStop:
    """The run before this one ended without a clean stop (power cut, SIGKILL), and what it may have lost.

    `last_reserved_seq`: that run reserved detections seqs up to here; this run
    starts after it, so numbers between the last one a subscriber received and
    this one were partly never used. `may_be_missing`: at most this many of them
    were real messages that were neither acknowledged nor on disk (0 under
    `[outbox] durability = "strict"`).
    """

    may_be_missing: int
    last_reserved_seq: int


def status_online(device: str, status: DeviceStatus, since: float, unclean: UncleanStop | None = None) -> bytes:
    """Retained on every connection; `unclean_stop` is null unless the previous run ended without a clean stop."""
    return _dump({
        "device": device,
        "state": "online",
        "mode": status.mode,
        "model": status.model,
        "accelerator": status.accelerator,
        "firmware": status.firmware,
        "since": timestamp(since),
        "unclean_stop": None if unclean is None else {"may_be_missing": int(unclean.may_be_missing),
                                                      "last_reserved_seq": int(unclean.last_reserved_seq)},
        "certificate": _certificate(status.certificate),
    })


def status_offline(device: str) -> bytes:
    """The last will: the broker publishes it when the device vanishes."""
    return _dump({"device": device, "state": "offline"})


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One periodic health sample; None means the figure is not available on this hardware."""

    time: float
    fps: float
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    frames_processed: int
    frames_dropped: int
    outbox_depth: int
    outbox_dropped: int
    outbox_refused: int
    outbox_oldest_age_s: float | None
    mqtt_connected: bool
    mqtt_protocol: str | None
    mqtt_delivered: int
    mqtt_refused: int
    mqtt_last_refusal: str | None
    accelerator: str
    cpu_temperature_c: float | None
    cpu_throttled: int | None
    camera_state: str = "ok"
    camera_faults: int = 0
    camera_last_fault: str | None = None
    certificate: CertificateReport | None = None
    # Identification since start (tracks tried, matched, dropped for a busy worker); None on a device
    # without a [policy] section, which can never identify, and then `identification` is left out.
    identification_tried: int | None = None
    identification_matched: int = 0
    identification_dropped: int = 0


# health's camera.last_fault is one line of text, bounded.
MAX_FAULT_CHARS = 200


def _maybe(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(float(value), decimals)


def health(device: str, report: HealthReport) -> bytes:
    document: dict[str, object] = {
        "device": device,
        "time": timestamp(report.time),
        "fps": round(report.fps, RATE_DECIMALS),
        "latency_ms": {
            "p50": _maybe(report.latency_p50_ms, RATE_DECIMALS),
            "p90": _maybe(report.latency_p90_ms, RATE_DECIMALS),
            "p99": _maybe(report.latency_p99_ms, RATE_DECIMALS),
        },
        "frames": {"processed": report.frames_processed, "dropped": report.frames_dropped},
        "outbox": {
            "depth": report.outbox_depth,
            "dropped": report.outbox_dropped,
            "refused": report.outbox_refused,
            "oldest_age_s": _maybe(report.outbox_oldest_age_s, RATE_DECIMALS),
        },
        "mqtt": {
            "connected": report.mqtt_connected,
            "protocol": report.mqtt_protocol,
            "delivered": report.mqtt_delivered,
            "refused": report.mqtt_refused,
            "last_refusal": report.mqtt_last_refusal,
        },
        "accelerator": report.accelerator,
        "cpu": {
            "temperature_c": _maybe(report.cpu_temperature_c, RATE_DECIMALS),
            "throttled": report.cpu_throttled,
        },
        "camera": {
            "state": report.camera_state,
            "faults": report.camera_faults,
            "last_fault": None if report.camera_last_fault is None else report.camera_last_fault[:MAX_FAULT_CHARS],
        },
        "certificate": _certificate(report.certificate),
    }
    if report.identification_tried is not None:
        document["identification"] = {"tried": report.identification_tried,
                                      "matched": report.identification_matched,
                                      "dropped": report.identification_dropped}
    return _dump(document)


def renewal_request(device: str, requested: float, rotation: bool, csr_pem: bytes, certificate_pem: bytes,
                    proof: bytes) -> bytes:
    """Retained on the device's csr topic: public material only (a CSR, the current certificate, a signature).

    No private key ever reaches this function: the caller hands in PEM text
    that begins with a CSR or CERTIFICATE marker, and anything else is refused.
    """
    csr, cert = csr_pem.decode("ascii"), certificate_pem.decode("ascii")
    if not csr.startswith("-----BEGIN CERTIFICATE REQUEST-----") or not cert.startswith("-----BEGIN CERTIFICATE-----"):
        raise ValueError("a renewal request carries only a CSR and a certificate, in PEM")
    if "PRIVATE KEY" in csr + cert:
        raise ValueError("a renewal request never carries a private key")
    return _dump({"device": device, "requested": timestamp(requested), "rotation": bool(rotation), "csr": csr,
                  "certificate": cert, "proof": base64.b64encode(proof).decode("ascii")})


AUDIT_FIELDS = ("seq", "time", "event", "data", "prev", "hash")
AUDIT_VALUE_TYPES = (str, int, float, bool, type(None))


def _audit_value_ok(value: object) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, AUDIT_VALUE_TYPES)


def audit(device: str, record: Mapping[str, object]) -> bytes:
    """An audit record exactly as the hash-chained log holds it, so subscribers can check the chain.

    Only policy decisions are audited; their `data` holds scalar values only,
    so nothing structured (an image, a landmark array) can ride along.
    Lists of strings are allowed for the reasons of a policy decision.
    """
    if set(record) != set(AUDIT_FIELDS):
        raise ValueError(f"audit record has fields {sorted(record)}, expected exactly {sorted(AUDIT_FIELDS)}")
    data = record["data"]
    if not isinstance(data, Mapping) or not all(_audit_value_ok(v) for v in data.values()):
        raise ValueError("audit record data must map names to scalars or lists of strings")
    return _dump({"device": device, **{k: record[k] for k in AUDIT_FIELDS}})


@dataclass(frozen=True, slots=True)
class DiscoveryDevice:
    """How Home Assistant shows the device."""

    device: str
    model: str
    firmware: str


def discovery(prefix: str, topic_root: str, info: DiscoveryDevice) -> tuple[tuple[str, bytes], ...]:
    """Home Assistant MQTT discovery: a face-count sensor and a presence binary sensor, available while status is online."""
    base = f"{topic_root}/{info.device}"
    common = {
        "state_topic": f"{base}/detections",
        "availability_topic": f"{base}/status",
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {"identifiers": [f"edge-camera-{info.device}"], "name": f"Edge camera {info.device}",
                   "model": info.model, "sw_version": info.firmware, "manufacturer": "edge-camera"},
    }
    count = {"name": "Faces", "unique_id": f"edge-camera-{info.device}-faces", "state_class": "measurement",
             "value_template": "{{ value_json.faces | length }}", **common}
    presence = {"name": "Presence", "unique_id": f"edge-camera-{info.device}-presence", "device_class": "occupancy",
                "value_template": "{{ 'ON' if value_json.faces | length > 0 else 'OFF' }}", **common}
    return (
        (f"{prefix}/sensor/{info.device}/faces/config", _dump(count)),
        (f"{prefix}/binary_sensor/{info.device}/presence/config", _dump(presence)),
    )
