"""The device's revocation list: applied only when signed by its CA and never rolled back.

Why so careful: a device left alone for years learns about revoked
certificates from a retained MQTT topic that anyone able to publish there
could write to. A CRL is data the device verifies, not a command: it is applied
only when the issuing CA's signature verifies and its CRL number is not lower
than the one held (an old, validly signed CRL cannot un-revoke a certificate),
and everything ignored is audited. A CRL installed as a local file and
re-read on SIGHUP (`reload`) goes through exactly the same checks.
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.common.files import write_atomically
from edge.trust.audit import AuditError, AuditLog
from edge.trust.certificates import CertificateError, load_crl
from edge.trust.crl import crl_number, judge_crl

HELD_CRL_FILE = "crl.der"
STATE_FILE_MODE = 0o600

logger = logging.getLogger(__name__)


class CrlOutcome(enum.Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"  # the retained message again: not worth an audit line
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class CrlResult:
    outcome: CrlOutcome
    reason: str
    crl_number: int | None = None

    @property
    def applied(self) -> bool:
        return self.outcome is CrlOutcome.APPLIED


class CrlStore:
    """Holds the newest valid CRL in the state directory.

    `issuers` are the CA certificates that may sign CRLs for this device (its
    provisioning CA, from the installed bundle). `on_change` runs after a CRL is
    applied, so the service can re-run the policy gate.
    """

    def __init__(self, state_dir: Path, issuers: Sequence[x509.Certificate], *,
                 local_path: Path | None = None, audit: AuditLog | None = None,
                 on_change: Callable[[x509.CertificateRevocationList], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.issuers = tuple(issuers)
        self.local_path = local_path
        self.audit = audit
        self.on_change = on_change
        self._held: x509.CertificateRevocationList | None = None
        self._held_der: bytes | None = None
        self._load_held()

    @property
    def path(self) -> Path:
        return self.state_dir / HELD_CRL_FILE

    def current(self) -> x509.CertificateRevocationList | None:
        return self._held

    def _load_held(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._audit("crl-discarded", f"held CRL {self.path} cannot be read: {exc.strerror}", None)
            return
        try:
            crl = load_crl(data, f"held CRL {self.path}")
        except CertificateError as exc:
            self._audit("crl-discarded", str(exc), None)
            return
        problem = judge_crl(crl, self.issuers, None)
        if problem:  # e.g. the bundle now names a different CA
            self._audit("crl-discarded", f"held CRL {self.path}: {problem}", crl_number(crl))
            return
        self._held, self._held_der = crl, crl.public_bytes(serialization.Encoding.DER)

    def handle(self, payload: bytes, source: str = "mqtt") -> CrlResult:
        """Apply a CRL from `source`; never raises for bad input, every refusal is audited."""
        if not isinstance(payload, (bytes, bytearray)):
            return self._ignore(source, f"payload is {type(payload).__name__}, not bytes", None)
        try:
            crl = load_crl(bytes(payload), f"CRL from {source}")
        except CertificateError as exc:
            return self._ignore(source, exc.message, None)
        der = crl.public_bytes(serialization.Encoding.DER)
        number = crl_number(crl)
        if der == self._held_der:
            return CrlResult(CrlOutcome.UNCHANGED, "CRL is the one already held", number)
        problem = judge_crl(crl, self.issuers, self._held)
        if problem:
            return self._ignore(source, problem, number)
        try:
            self._persist(der)
        except OSError as exc:
            return self._ignore(source, f"cannot be stored in {self.state_dir}: {exc.strerror}", number)
        self._held, self._held_der = crl, der
        self._audit("crl-applied", f"CRL {number} from {source} applied", number,
                    revoked=len(crl), next_update=crl.next_update_utc.isoformat() if crl.next_update_utc else None)
        if self.on_change is not None:
            self.on_change(crl)
        return CrlResult(CrlOutcome.APPLIED, f"CRL {number} applied", number)

    def reload(self) -> CrlResult:
        """Re-read the locally installed CRL file (the service calls this on SIGHUP)."""
        if self.local_path is None:
            return CrlResult(CrlOutcome.UNCHANGED, "no local CRL file is configured")
        try:
            data = Path(self.local_path).read_bytes()
        except OSError as exc:
            return self._ignore(f"file {self.local_path}", f"cannot be read: {exc.strerror}", None)
        return self.handle(data, source=f"file {self.local_path}")

    def _persist(self, der: bytes) -> None:
        """Write-then-rename, so a power cut leaves the old CRL or the new one, never half."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, der, STATE_FILE_MODE)

    def _ignore(self, source: str, reason: str, number: int | None) -> CrlResult:
        self._audit("crl-ignored", f"CRL from {source} ignored: {reason}", number)
        return CrlResult(CrlOutcome.IGNORED, reason, number)

    def _audit(self, event: str, message: str, number: int | None, **extra: object) -> None:
        if self.audit is None:
            return
        # The same outcome again (each restart re-reading a local CRL older than the held one) adds nothing.
        try:
            self.audit.append_if_changed(event, {"message": message, "crl_number": number, **extra})
        except AuditError as exc:  # a full disk must not stop revocation from applying
            logger.error("%s (%s: %s)", exc, event, message)
