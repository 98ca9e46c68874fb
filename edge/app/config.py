"""The service's TOML configuration: one file, one section per owner.

Why composed: each module declares its own section with `edge.common.schema`
(one mechanism for every section and for the command-line flags that set the
same things), so an error names the section, the key, the value and what was
expected, and unknown sections and keys are refused. Before any section is read,
the whole file is searched for requests to infer attributes the
responsible-use rules retire (emotion, gender, age, smile, facial hair, hair,
makeup): such a configuration stops the service at start-up with an error
naming the rule, whatever section or spelling it hides in.
"""
from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edge.app.identification import IdentificationConfig
from edge.common import schema
from edge.common.errors import ConfigError
from edge.common.schema import Kind, setting
from edge.common.text import fold
from edge.common.topics import DEFAULT_DISCOVERY_PREFIX, MQTT_WILDCARDS
from edge.trust.renewal import RenewalConfig
from edge.trust.grant import DEVICE_ID_EXPECTED, device_id_problem
from edge.wire.rate import RateConfig

if TYPE_CHECKING:  # the sections' owners import numpy, OpenCV, paho: read only when a file is loaded
    from edge.delivery.outbox import OutboxConfig
    from edge.delivery.publish import MqttConfig
    from edge.policy.config import PolicyConfig
    from edge.sources.camera import CameraConfig
    from edge.vision.pipeline import DetectorConfig

RETIRED_RULE = ("responsible-use rule: inference of emotion, gender, age, smile, facial hair, hair and makeup "
                "is retired for everyone and never offered by this device")
# Compared with words folded by `edge.common.text.fold` with the separators removed.
RETIRED_TERMS = frozenset({
    "emotion", "emotions", "emotionrecognition", "expression", "expressions", "facialexpression", "affect", "mood",
    "gender", "genders", "sex", "age", "ages", "ageestimation", "agerange", "smile", "smiles", "smiling",
    "facialhair", "beard", "moustache", "mustache", "hair", "haircolor", "haircolour", "hairstyle", "bald",
    "makeup", "cosmetics", "lipstick", "eyemakeup", "attribute", "attributes", "faceattributes",
})
DEFAULT_HEALTH_INTERVAL_S = 30.0
# Where the systemd unit, the tools and the docs expect the service's configuration.
DEFAULT_CONFIG = Path("/etc/edge-camera/edge-camera.toml")
SERVICE_SECTIONS = ("device", "camera", "detector", "policy", "identification", "mqtt", "outbox", "health",
                    "homeassistant", "detections", "renewal")
# [mqtt] paths a relative value of which is relative to the configuration file's folder.
MQTT_FILES = ("ca", "cert", "key")


def _walk(node: object, where: str) -> Iterator[tuple[str, str]]:
    """Every key and every string value under `node`, with where it is (`outputs[1]`, `a.b`)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            yield here, str(key)
            yield from _walk(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{where}[{index}]")
    elif isinstance(node, str):
        yield where, node


def _located(document: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """`_walk` over the document, places written as errors name them: `[section] key`."""
    for name, value in document.items():
        yield (f"[{name}]" if isinstance(value, Mapping) else str(name)), str(name)
        for where, word in _walk(value, ""):
            yield (f"[{name}] {where}" if isinstance(value, Mapping) else f"{name}{where}"), word


def refuse_retired_attributes(document: Mapping[str, Any]) -> None:
    """Stop start-up if any key or value asks for a retired attribute."""
    for where, word in _located(document):
        if fold(word, separator="") in RETIRED_TERMS:
            raise ConfigError(where, f"asks for '{word}': refused by the {RETIRED_RULE}",
                              "remove it; the device publishes only face boxes, scores, head pose and track numbers")


def _topic_prefix(value: str) -> str | None:
    if not value or any(c in value for c in MQTT_WILDCARDS):
        return "is not a topic prefix"
    return None


@dataclass(frozen=True, slots=True)
class DeviceConfig(schema.Section):
    """The `[device]` section: who this device is and where it keeps its state."""

    SECTION: ClassVar[str] = "device"

    id: str = setting(kind=Kind.TEXT, check=device_id_problem,
                      expected=f"{DEVICE_ID_EXPECTED}: the device certificate's common name, "
                               "the MQTT user name and a topic level")
    state_dir: Path = setting(kind=Kind.PATH,
                              expected="a directory for the outbox, audit log and CRL, e.g. /var/lib/edge-camera")


@dataclass(frozen=True, slots=True)
class HealthConfig(schema.Section):
    """The `[health]` section."""

    SECTION: ClassVar[str] = "health"

    interval_s: float = setting(DEFAULT_HEALTH_INTERVAL_S, kind=Kind.NUMBER, check=schema.positive,
                                expected="seconds between health reports, more than 0")


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig(schema.Section):
    """The `[homeassistant]` section: MQTT discovery messages for Home Assistant."""

    SECTION: ClassVar[str] = "homeassistant"

    enabled: bool = setting(False, kind=Kind.SWITCH, expected="true or false")
    prefix: str = setting(DEFAULT_DISCOVERY_PREFIX, kind=Kind.TEXT, check=_topic_prefix,
                          expected=f"a discovery topic prefix without wildcards, e.g. {DEFAULT_DISCOVERY_PREFIX}")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """All sections, each validated by its own declaration (`edge.common.schema`)."""

    device: DeviceConfig
    mqtt: MqttConfig
    outbox: OutboxConfig
    health: HealthConfig
    homeassistant: HomeAssistantConfig
    camera: CameraConfig
    detector: DetectorConfig
    policy: PolicyConfig | None
    # How identification runs while the gate grants it; without [policy] it never does.
    identification: IdentificationConfig = field(default_factory=IdentificationConfig)
    # How often detections go out while the scene does not change (edge/wire/rate.py).
    detections: RateConfig = field(default_factory=RateConfig)
    # When the device asks for a new certificate, and whether it rotates its key (edge/trust/renewal.py).
    renewal: RenewalConfig = field(default_factory=RenewalConfig)


def _section(document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}]", f"{schema.shown(value)} is not a table", f"a [{name}] section")
    return value


def from_document(document: Mapping[str, Any], base: Path | None = None) -> ServiceConfig:
    """Validate a parsed document; relative paths in [mqtt] are relative to the file's folder."""
    refuse_retired_attributes(document)
    for name in document:
        if name not in SERVICE_SECTIONS:
            raise ConfigError(f"[{name}]", "is an unknown section",
                              f"one of {', '.join(f'[{s}]' for s in SERVICE_SECTIONS)}")
    if "device" not in document:
        raise ConfigError("[device]", "is missing", "a [device] section with id and state_dir")
    from edge.delivery.outbox import OutboxConfig
    from edge.delivery.publish import MqttConfig
    from edge.sources.camera import CameraConfig
    from edge.vision.pipeline import DetectorConfig

    mqtt = MqttConfig.from_mapping(_section(document, "mqtt"))
    if base is not None:
        mqtt = replace(mqtt, **{key: base / getattr(mqtt, key) for key in MQTT_FILES
                                if getattr(mqtt, key) is not None and not getattr(mqtt, key).is_absolute()})
    policy = None
    if "policy" in document:
        from edge.policy.config import PolicyConfig

        policy = PolicyConfig.from_mapping(_section(document, "policy"))
    return ServiceConfig(
        device=DeviceConfig.from_mapping(_section(document, "device")),
        mqtt=mqtt,
        outbox=OutboxConfig.from_mapping(_section(document, "outbox")),
        health=HealthConfig.from_mapping(_section(document, "health")),
        homeassistant=HomeAssistantConfig.from_mapping(_section(document, "homeassistant")),
        camera=CameraConfig.from_mapping(_section(document, "camera")),
        detector=DetectorConfig.from_mapping(_section(document, "detector")),
        policy=policy,
        identification=IdentificationConfig.from_mapping(_section(document, "identification")),
        detections=RateConfig.from_mapping(_section(document, "detections")),
        renewal=RenewalConfig.from_mapping(_section(document, "renewal")),
    )


def load(path: Path) -> ServiceConfig:
    """Read and validate the service configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read: {exc.strerror}", "a readable TOML file") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"is not valid TOML: {exc}", "TOML (see systemd/edge-camera.toml)") from None
    return from_document(document, base=Path(path).resolve().parent)


def check_certificate_names(config: ServiceConfig) -> None:
    """At start-up: `[device] id` must be the common name of the device certificate.

    Why: the id names the device's topics, and the broker's ACLs key on the
    certificate's CN; a device configured as another would publish where its
    certificate may not, or pass for another device. Reads the `[mqtt] cert`
    (which TLS needs anyway) and, when it can be read, the `[policy]
    certificate` (when it cannot, the policy gate says why and keeps
    identification off; detection still runs).
    """
    from edge.trust.certificates import CertificateError, common_name, load_certificates

    named = [("[mqtt] cert", config.mqtt.cert, True)]
    if config.policy is not None:
        named.append(("[policy] certificate", config.policy.certificate, False))
    for where, path, required in named:
        if path is None:
            continue
        try:
            leaf = load_certificates(path.read_bytes(), f"{where} {path}")[0]
        except OSError as exc:
            if not required:
                continue
            raise ConfigError(where, f"'{path}' cannot be read: {exc.strerror}",
                              "the device certificate (PEM) issued for this device") from None
        except CertificateError:
            if not required:
                continue
            raise
        name = common_name(leaf.subject)
        if name != config.device.id:
            raise ConfigError("[device] id", f"'{config.device.id}' is not the device certificate's common name "
                                             f"{name!r} ({where} {path})",
                              "the id the certificate was issued for: correct [device] id, "
                              "or install this device's own certificate")
