"""The CRL store: only CRLs signed by the device's CA, never rolled back, every refusal audited."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.trust.audit import AuditLog, verify_log
from edge.trust.revocation import CrlOutcome, CrlStore, HELD_CRL_FILE
from support.pki import DAY, NOW, Pki, resign


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def store(tmp_path: Path, pki: Pki, **kwargs: object) -> CrlStore:
    return CrlStore(tmp_path / "state", [pki.ca], audit=AuditLog(tmp_path / "state" / "audit.log"), **kwargs)  # type: ignore[arg-type]


def audit_events(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "state" / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_applies_pem_and_der_and_persists(tmp_path: Path, pki: Pki) -> None:
    s = store(tmp_path, pki)
    assert s.handle(pem(pki.crl(number=5))).outcome is CrlOutcome.APPLIED
    assert s.handle(der(pki.crl(number=6))).outcome is CrlOutcome.APPLIED
    reopened = store(tmp_path, pki)
    current = reopened.current()
    assert current is not None and current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 6
    assert [e["event"] for e in audit_events(tmp_path)] == ["crl-applied", "crl-applied"]


def test_retained_redelivery_is_silent(tmp_path: Path, pki: Pki) -> None:
    s = store(tmp_path, pki)
    crl = pki.crl(number=3)
    s.handle(der(crl))
    assert s.handle(der(crl)).outcome is CrlOutcome.UNCHANGED
    assert s.handle(pem(crl)).outcome is CrlOutcome.UNCHANGED
    assert len(audit_events(tmp_path)) == 1


def test_rollback_is_refused_and_audited(tmp_path: Path, pki: Pki) -> None:
    s = store(tmp_path, pki)
    s.handle(der(pki.crl(number=10)))
    result = s.handle(der(pki.crl(number=9)))
    assert result.outcome is CrlOutcome.IGNORED and "rollback refused" in result.reason
    assert s.current().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 10  # type: ignore[union-attr]
    assert audit_events(tmp_path)[-1]["event"] == "crl-ignored"


def test_same_number_only_if_newer(tmp_path: Path, pki: Pki) -> None:
    s = store(tmp_path, pki)
    s.handle(der(pki.crl(NOW, number=20)))
    assert s.handle(der(pki.crl(NOW - DAY, number=20))).outcome is CrlOutcome.IGNORED
    assert s.handle(der(pki.crl(NOW + DAY, number=20))).outcome is CrlOutcome.APPLIED


def test_wrongly_signed_crl_is_refused(tmp_path: Path, pki: Pki) -> None:
    s = store(tmp_path, pki)
    result = s.handle(der(pki.crl(key=ec.generate_private_key(ec.SECP256R1()))))
    assert result.outcome is CrlOutcome.IGNORED and "signature does not verify" in result.reason
    assert s.current() is None


def test_crl_from_a_ca_with_the_same_name_but_another_key(tmp_path: Path, pki: Pki) -> None:
    fake_key = ec.generate_private_key(ec.SECP256R1())
    fake_ca = resign(pki.ca, fake_key, public_key=fake_key.public_key())
    s = CrlStore(tmp_path / "state", [pki.ca])
    forged = Pki(pki.root_key, pki.root, fake_key, fake_ca).crl(number=99)
    assert s.handle(der(forged)).outcome is CrlOutcome.IGNORED


def test_crl_from_another_issuer_is_refused(tmp_path: Path, pki: Pki) -> None:
    other = Pki.create()
    s = store(tmp_path, pki)
    # Same organisation name, but another CA entirely: the names match, the key does not.
    assert s.handle(der(other.crl())).outcome is CrlOutcome.IGNORED


@pytest.mark.parametrize("payload, words", [
    (b"", "is empty"),
    (b"hello", "not a readable X.509 CRL"),
    (b"-----BEGIN X509 CRL-----\n!!!\n-----END X509 CRL-----\n", "not a readable X.509 CRL"),
    (b"\x30" * 2_000_000, "over the 1024 KiB limit"),
])
def test_malformed_or_oversized_payloads(tmp_path: Path, pki: Pki, payload: bytes, words: str) -> None:
    s = store(tmp_path, pki)
    result = s.handle(payload)
    assert result.outcome is CrlOutcome.IGNORED and words in result.reason
    assert words in str(audit_events(tmp_path)[-1]["data"])


def test_non_bytes_payload_is_refused(tmp_path: Path, pki: Pki) -> None:
    assert store(tmp_path, pki).handle("crl").outcome is CrlOutcome.IGNORED  # type: ignore[arg-type]


def test_reload_reads_the_local_file(tmp_path: Path, pki: Pki) -> None:
    local = tmp_path / "installed.pem"
    changes: list[x509.CertificateRevocationList] = []
    s = store(tmp_path, pki, local_path=local, on_change=changes.append)
    assert "cannot be read" in s.reload().reason
    local.write_bytes(pem(pki.crl(number=40)))
    assert s.reload().outcome is CrlOutcome.APPLIED and len(changes) == 1
    assert s.reload().outcome is CrlOutcome.UNCHANGED and len(changes) == 1


def test_reload_without_local_file_configured(tmp_path: Path, pki: Pki) -> None:
    assert store(tmp_path, pki).reload().outcome is CrlOutcome.UNCHANGED


def test_tampered_held_crl_is_discarded_on_start(tmp_path: Path, pki: Pki) -> None:
    s = store(tmp_path, pki)
    s.handle(der(pki.crl(number=50)))
    held = tmp_path / "state" / HELD_CRL_FILE
    data = bytearray(held.read_bytes())
    data[-5] ^= 0xFF
    held.write_bytes(bytes(data))
    assert store(tmp_path, pki).current() is None
    assert audit_events(tmp_path)[-1]["event"] == "crl-discarded"
    assert verify_log(tmp_path / "state" / "audit.log").ok


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_payloads_never_raise(tmp_path_factory: pytest.TempPathFactory, payload: bytes) -> None:
    state = tmp_path_factory.mktemp("crl")
    result = CrlStore(state, []).handle(payload)
    assert result.outcome is CrlOutcome.IGNORED
