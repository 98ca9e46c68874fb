"""An identification session from a real grant: a throwaway PKI, a provisioned device, the gate's decision.

Why one helper: the library (`edge.identify`) can only be built from a grant
the policy gate issues, so every test of the gallery or the embeddings needs
one, made the same way.
"""
from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge.identify import IdentificationSession
from edge.policy import Mode, PolicyGate
from edge.trust.audit import AuditLog
from support.pki import NOW, Pki, provision


def granted_session(directory: Path) -> IdentificationSession:
    """A device provisioned in `directory` with a CRL installed, granted identification at NOW."""
    pki = Pki.create()
    device = provision(directory, pki)
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    decision = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW).decide()
    assert decision.mode is Mode.IDENTIFICATION, decision.reasons
    assert decision.identification is not None
    return IdentificationSession(decision.identification)
