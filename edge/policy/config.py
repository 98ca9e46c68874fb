"""The `[policy]` configuration section: where the gate finds its trust anchor, certificate, key and CRL."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.common.errors import ConfigError
from edge.trust.device_key import DEVICE_KEY_FILE

AUDIT_LOG_FILE = "audit.log"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The `[policy]` configuration section. Relative paths are relative to `state_dir`."""

    state_dir: Path
    trust_anchor: Path
    certificate: Path
    key: Path
    crl: Path | None = None

    REQUIRED = ("state_dir", "trust_anchor", "certificate")
    OPTIONAL = ("key", "crl")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "PolicyConfig":
        if not isinstance(data, Mapping):
            raise ConfigError("[policy]", "is not a table", "a [policy] section with paths")
        unknown = sorted(set(data) - set(cls.REQUIRED) - set(cls.OPTIONAL))
        if unknown:
            raise ConfigError("[policy]", f"unknown keys {unknown}",
                              f"only {', '.join(cls.REQUIRED + cls.OPTIONAL)}")
        values: dict[str, str] = {}
        for key in cls.REQUIRED + cls.OPTIONAL:
            if key not in data:
                if key in cls.REQUIRED:
                    raise ConfigError(f"[policy] {key}", "is missing", "a file path")
                continue
            value = data[key]
            if not isinstance(value, str) or not value.strip() or "\x00" in value:
                raise ConfigError(f"[policy] {key}", f"{value!r} is not a path", "a non-empty string")
            values[key] = value
        state_dir = Path(values["state_dir"])
        def under(value: str) -> Path:
            path = Path(value)
            return path if path.is_absolute() else state_dir / path
        return cls(
            state_dir=state_dir,
            trust_anchor=under(values["trust_anchor"]),
            certificate=under(values["certificate"]),
            key=under(values.get("key", DEVICE_KEY_FILE)),
            crl=under(values["crl"]) if "crl" in values else None,
        )

    @property
    def audit_log(self) -> Path:
        return self.state_dir / AUDIT_LOG_FILE
