"""The service's TOML configuration: one file, one section per owner.

Why composed: each module validates its own section (`from_mapping`), so an
error names the section and key that is wrong. Before any section is read,
the whole file is searched for requests to infer attributes the
responsible-use rules retire (emotion, gender, age, smile, facial hair, hair,
makeup): such a configuration stops the service at start-up with an error
naming the rule, whatever section or spelling it hides in.
"""
from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edge.common.errors import ConfigError
from edge.delivery.outbox import OutboxConfig
from edge.delivery.publish import MqttConfig

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# `fleet` names the shared topics (the CRL) under the topic root; no device may take it.
RESERVED_DEVICE_IDS = frozenset({"fleet"})
RETIRED_RULE = ("responsible-use rule: inference of emotion, gender, age, smile, facial hair, hair and makeup "
                "is retired for everyone and never offered by this device")
RETIRED_TERMS = frozenset({
    "emotion", "emotions", "emotionrecognition", "expression", "expressions", "facialexpression", "affect", "mood",
    "gender", "genders", "sex", "age", "ages", "ageestimation", "agerange", "smile", "smiles", "smiling",
    "facialhair", "beard", "moustache", "mustache", "hair", "haircolor", "haircolour", "hairstyle", "bald",
    "makeup", "cosmetics", "lipstick", "eyemakeup", "attribute", "attributes", "faceattributes",
})
DEFAULT_HEALTH_INTERVAL_S = 30.0
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
# Where the systemd unit, the tools and the docs expect the service's configuration.
DEFAULT_CONFIG = Path("/etc/edge-camera/edge-camera.toml")
SERVICE_SECTIONS = ("device", "camera", "detector", "policy", "mqtt", "outbox", "health", "homeassistant")


def _fold(text: str) -> str:
    """Case, separators and compatibility look-alikes do not change what a word asks for."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"[\s_\-.:/]+", "", folded)


def _walk(node: object, where: str) -> Iterator[tuple[str, str]]:
    """Every key and every string value in the document, with where it is."""
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


def refuse_retired_attributes(document: Mapping[str, Any]) -> None:
    """Stop start-up if any key or value asks for a retired attribute."""
    for where, word in _walk(document, ""):
        if _fold(word) in RETIRED_TERMS:
            raise ConfigError(where, f"asks for '{word}': refused by the {RETIRED_RULE}",
                              "remove it; the device publishes only face boxes, scores, head pose and track numbers")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    state_dir: Path

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "DeviceConfig":
        _only(data, "[device]", ("id", "state_dir"))
        device_id = data.get("id")
        if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.match(device_id):
            raise ConfigError("[device] id", f"{device_id!r} is not a device id",
                              "1-64 letters, digits, '-' or '_' (it becomes an MQTT topic level and the certificate CN)")
        if device_id.casefold() in RESERVED_DEVICE_IDS:
            raise ConfigError("[device] id", f"'{device_id}' is reserved for fleet-wide topics", "another name")
        state_dir = data.get("state_dir")
        if not isinstance(state_dir, str) or not state_dir:
            raise ConfigError("[device] state_dir", f"{state_dir!r} is not a path",
                              "a directory for the outbox, audit log and CRL, e.g. /var/lib/edge-camera")
        return cls(device_id, Path(state_dir))


@dataclass(frozen=True, slots=True)
class HealthConfig:
    interval_s: float = DEFAULT_HEALTH_INTERVAL_S

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "HealthConfig":
        _only(data, "[health]", tuple(f.name for f in fields(cls)))
        interval = data.get("interval_s", DEFAULT_HEALTH_INTERVAL_S)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ConfigError("[health] interval_s", f"{interval!r} is not a positive number", "seconds > 0")
        return cls(float(interval))


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    enabled: bool = False
    prefix: str = DEFAULT_DISCOVERY_PREFIX

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "HomeAssistantConfig":
        _only(data, "[homeassistant]", ("enabled", "prefix"))
        enabled = data.get("enabled", False)
        prefix = data.get("prefix", DEFAULT_DISCOVERY_PREFIX)
        if not isinstance(enabled, bool):
            raise ConfigError("[homeassistant] enabled", f"{enabled!r}", "true or false")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "+#"):
            raise ConfigError("[homeassistant] prefix", f"{prefix!r}", "a discovery topic prefix without wildcards")
        return cls(enabled, prefix)


def _only(data: object, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(where, "is not a table", f"a {where} section")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(where, f"unknown key(s) {unknown}", f"only {', '.join(allowed)}")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """All sections; `camera`, `detector` and `policy` are built by their owners' `from_mapping`."""

    device: DeviceConfig
    mqtt: MqttConfig
    outbox: OutboxConfig
    health: HealthConfig
    homeassistant: HomeAssistantConfig
    camera: Any
    detector: Any
    policy: Any | None


def _section(document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}]", "is not a table", f"a [{name}] section")
    return value


def from_document(document: Mapping[str, Any], base: Path | None = None) -> ServiceConfig:
    """Validate a parsed document; relative paths in [mqtt] are relative to the file's folder."""
    refuse_retired_attributes(document)
    unknown = sorted(set(document) - set(SERVICE_SECTIONS))
    if unknown:
        raise ConfigError(f"[{unknown[0]}]", "unknown section", f"only {', '.join(SERVICE_SECTIONS)}")
    if "device" not in document:
        raise ConfigError("[device]", "is missing", "a [device] section with id and state_dir")
    from edge.sources.camera import CameraConfig
    from edge.vision.pipeline import DetectorConfig

    mqtt_data = dict(_section(document, "mqtt"))
    if base is not None:
        for key in ("ca", "cert", "key"):
            if isinstance(mqtt_data.get(key), str) and not Path(mqtt_data[key]).is_absolute():
                mqtt_data[key] = str(base / mqtt_data[key])
    policy = None
    if "policy" in document:
        from edge.policy.config import PolicyConfig

        policy = PolicyConfig.from_mapping(_section(document, "policy"))
    return ServiceConfig(
        device=DeviceConfig.from_mapping(_section(document, "device")),
        mqtt=MqttConfig.from_mapping(mqtt_data),
        outbox=OutboxConfig.from_mapping(dict(_section(document, "outbox"))),
        health=HealthConfig.from_mapping(_section(document, "health")),
        homeassistant=HomeAssistantConfig.from_mapping(_section(document, "homeassistant")),
        camera=CameraConfig.from_mapping(_section(document, "camera")),
        detector=DetectorConfig.from_mapping(_section(document, "detector")),
        policy=policy,
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
