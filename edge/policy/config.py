"""The `[policy]` configuration section: where the gate finds its trust anchor, certificate, key and CRL."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from edge.common import schema
from edge.common.schema import Kind, setting
from edge.trust.device_key import DEVICE_KEY_FILE

AUDIT_LOG_FILE = "audit.log"
RELATIVE = "relative paths are relative to state_dir"


@dataclass(frozen=True, slots=True)
class PolicyConfig(schema.Section):
    """The `[policy]` configuration section. Relative paths are relative to `state_dir`."""

    SECTION: ClassVar[str] = "policy"

    state_dir: Path = setting(kind=Kind.PATH, expected="the directory of the device key, audit log and CRL, "
                                                      "e.g. /var/lib/edge-camera")
    trust_anchor: Path = setting(kind=Kind.PATH, expected=f"the path of the fleet's trust anchor (PEM); {RELATIVE}")
    certificate: Path = setting(kind=Kind.PATH, expected=f"the path of the device certificate chain (PEM); {RELATIVE}")
    key: Path = setting(Path(DEVICE_KEY_FILE), kind=Kind.PATH, expected=f"the path of the device key; {RELATIVE}")
    crl: Path | None = setting(None, kind=Kind.PATH, optional=True,
                               expected=f"the path of the installed CRL (PEM); {RELATIVE}")

    @classmethod
    def from_mapping(cls, data: object) -> "PolicyConfig":
        return schema.read_section(cls, data).under_state_dir()  # not super(): slots=True makes a new class

    def under_state_dir(self) -> "PolicyConfig":
        """The same section with every relative path taken from `state_dir` (no file is touched)."""
        def under(path: Path) -> Path:
            return path if path.is_absolute() else self.state_dir / path
        return replace(self, trust_anchor=under(self.trust_anchor), certificate=under(self.certificate),
                       key=under(self.key), crl=None if self.crl is None else under(self.crl))

    @property
    def audit_log(self) -> Path:
        return self.state_dir / AUDIT_LOG_FILE
