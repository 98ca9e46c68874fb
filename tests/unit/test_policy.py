"""The identification gate against real certificates, each wrong in one way.

Every case must end in a decision, never an exception: detection keeps running
whatever happens to the certificate, only identification is switched off.
"""
from __future__ import annotations

import copy
import json
import datetime as dt
import pickle
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.trust.audit import AuditLog, verify_log
from edge.trust.certificates import GRANT_OID
from edge.common.errors import ConfigError
from edge.trust.grant import encode_grant
from edge.identify import IdentificationRefused, IdentificationSession
from edge.trust.device_key import build_csr
from edge.policy import (
    firmware_build_time,
    IdentificationGrant,
    Mode,
    PolicyConfig,
    PolicyGate,
    is_gate_issued,
)
from support.pki import DAY, NOW, Device, Pki, grant, provision, resign


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture
def device(tmp_path: Path, pki: Pki) -> Device:
    return provision(tmp_path, pki)


def decide(device: Device, now: dt.datetime = NOW, crl: x509.CertificateRevocationList | None = None,
           install_crl: bool = True, audit: AuditLog | None = None):
    if install_crl:
        crl = crl if crl is not None else device.pki.crl(now)
        (device.state_dir / "installed-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    gate = PolicyGate(device.config, audit=audit or AuditLog(device.state_dir / "audit.log"), clock=lambda: now)
    gate.crl_store.reload()
    return gate.decide()


def failed(decision) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.detail for c in decision.checks if not c.ok}


def test_everything_in_order_allows_identification(device: Device) -> None:
    decision = decide(device)
    assert decision.mode is Mode.IDENTIFICATION, decision.reasons
    assert decision.reasons == ()
    assert decision.device_id == "cam-1"
    assert is_gate_issued(decision.identification)
    assert decision.valid_until == min(device.cert.not_valid_after_utc, NOW + 30 * DAY)


def test_detection_only_grant(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki, grant(capabilities=("detection",)))
    decision = decide(dev)
    assert decision.mode is Mode.DETECTION and decision.identification is None
    assert failed(decision) == {"capability": "identification is not granted by the certificate (detection only)"}


@pytest.mark.parametrize("tags, words", [
    (("retail", "Police"), "law-enforcement deployment"),
    (("Body Worn",), "law-enforcement deployment"),
    (("ｍｕｇｓｈｏｔ＿ｄａｔａｂａｓｅ",), "law-enforcement deployment"),
    (("public_space",), "public space"),
    (("stadium",), "not in the deployment-tag vocabulary"),
    (("p\u043elice",), "not in the deployment-tag vocabulary"),
    ((), "no deployment tag"),
])
def test_tags_keep_identification_off_but_certificate_stays_valid(tmp_path: Path, pki: Pki,
                                                                   tags: tuple[str, ...], words: str) -> None:
    # Issued straight from the CA code: the tool would refuse this, a rogue issuer might not.
    dev = provision(tmp_path, pki, grant(tags=tags))
    decision = decide(dev)
    assert decision.mode is Mode.DETECTION
    assert list(failed(decision)) == ["tags"] and words in failed(decision)["tags"]
    assert decision.device_id == "cam-1"  # still the device's identity


def test_expired_certificate(device: Device) -> None:
    later = device.cert.not_valid_after_utc + DAY
    decision = decide(device, now=later)
    assert decision.mode is Mode.DETECTION
    assert "expired on" in failed(decision)["validity"]
    assert "chain" in failed(decision)


def test_not_yet_valid_certificate(device: Device) -> None:
    earlier = device.cert.not_valid_before_utc - DAY
    decision = decide(device, now=earlier, crl=device.pki.crl(earlier))
    assert "not valid yet" in failed(decision)["validity"]


def test_untrusted_clock_never_identifies(device: Device) -> None:
    before_build = firmware_build_time() - DAY
    decision = decide(device, now=before_build, crl=device.pki.crl(before_build))
    assert decision.mode is Mode.DETECTION
    assert "time is untrusted" in failed(decision)["clock"]


def test_revoked_certificate(tmp_path: Path) -> None:
    pki = Pki.create()
    dev = provision(tmp_path, pki)
    pki.revoke(dev.cert)
    decision = decide(dev)
    assert decision.mode is Mode.DETECTION
    assert "was revoked on" in failed(decision)["revocation"]


def test_missing_crl_keeps_identification_off(device: Device) -> None:
    decision = decide(device, install_crl=False)
    assert "no revocation list" in failed(decision)["revocation"]


def test_stale_crl_keeps_identification_off(device: Device) -> None:
    old = device.pki.crl(NOW - 60 * DAY, validity=30 * DAY)
    decision = decide(device, crl=old)
    assert decision.mode is Mode.DETECTION
    assert "revocation list is stale" in failed(decision)["crl-freshness"]


def test_crl_signed_by_another_key_is_not_used(device: Device) -> None:
    forged = device.pki.crl(key=ec.generate_private_key(ec.SECP256R1()))
    decision = decide(device, crl=forged)
    assert "no revocation list" in failed(decision)["revocation"]  # the store ignored it
    log = (device.state_dir / "audit.log").read_text()
    assert "crl-ignored" in log and "signature does not verify" in log


def test_self_signed_forgery(device: Device) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    forged = resign(device.cert, key, public_key=device.cert.public_key())
    device.install(forged, chain=())
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "does not verify" in failed(decision)["chain"]


def test_forged_ca_with_the_same_name(device: Device) -> None:
    fake_key = ec.generate_private_key(ec.SECP256R1())
    fake_ca = resign(device.pki.ca, fake_key, public_key=fake_key.public_key(),
                     extensions=[e for e in device.pki.ca.extensions
                                 if not isinstance(e.value, (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier))]
                     + [x509.Extension(x509.SubjectKeyIdentifier.oid, False,
                                       x509.SubjectKeyIdentifier.from_public_key(fake_key.public_key()))])
    forged = resign(device.cert, fake_key,
                    extensions=[e for e in device.cert.extensions if not isinstance(e.value, x509.AuthorityKeyIdentifier)])
    device.install(forged, chain=(fake_ca,))
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "does not verify" in failed(decision)["chain"]


def test_another_devices_certificate(tmp_path: Path, pki: Pki) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    dev = provision(tmp_path, pki)
    other = pki.issue(build_csr(other_key, "cam-1"))
    dev.install(other)
    decision = decide(dev)
    assert decision.mode is Mode.DETECTION
    assert "issued for another key" in failed(decision)["key"]


def test_tampered_extension_breaks_the_signature(device: Device) -> None:
    der = device.cert.public_bytes(serialization.Encoding.DER)
    assert der.count(b"retail") == 1
    tampered = x509.load_der_x509_certificate(der.replace(b"retail", b"office"))
    device.install(tampered)
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "signature" in failed(decision)["chain"]


def _with_grant_extension(device: Device, extensions: list[x509.Extension]) -> x509.Certificate:
    others = [e for e in device.cert.extensions if e.oid != GRANT_OID]
    return resign(device.cert, device.pki.ca_key, extensions=others + extensions)


def test_critical_grant_extension(device: Device) -> None:
    value = x509.UnrecognizedExtension(GRANT_OID, encode_grant(grant()))
    device.install(_with_grant_extension(device, [x509.Extension(GRANT_OID, True, value)]))
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "marked critical" in failed(decision)["certificate"]


def test_duplicated_grant_extension(device: Device) -> None:
    from edge.trust.certificates import read_grant_extension
    from edge.trust.grant import GrantError

    dup = _with_duplicate_grant(device)
    with pytest.raises(GrantError, match="repeats extension"):
        read_grant_extension(dup)
    device.install(dup)
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "repeats extension" in failed(decision)["certificate"]


def _tlv(data: bytes, offset: int = 0) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at `offset`."""
    tag, length = data[offset], data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start:start + count], "big")
        start += count
    return tag, start, start + length


def _encode_tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _with_duplicate_grant(device: Device) -> x509.Certificate:
    """The certificate's TBS with the grant extension twice, re-signed by the real CA key.

    cryptography's builder refuses duplicates, so the DER is spliced by hand.
    """
    from cryptography.hazmat.primitives import hashes

    der = device.cert.public_bytes(serialization.Encoding.DER)
    _, cert_start, _ = _tlv(der)
    _, tbs_start, tbs_end = _tlv(der, cert_start)
    tbs = der[tbs_start:tbs_end]
    offset, children = 0, []
    while offset < len(tbs):
        tag, start, end = _tlv(tbs, offset)
        children.append((tag, tbs[offset:end], tbs[start:end]))
        offset = end
    tag, _, explicit = children[-1]
    assert tag == 0xA3  # [3] EXPLICIT Extensions
    _, seq_start, seq_end = _tlv(explicit)
    exts = explicit[seq_start:seq_end]
    offset, grant_ext = 0, b""
    while offset < len(exts):
        _, _, end = _tlv(exts, offset)
        if encode_grant(grant()) in exts[offset:end]:
            grant_ext = exts[offset:end]
        offset = end
    assert grant_ext
    new_exts = _encode_tlv(0xA3, _encode_tlv(0x30, exts + grant_ext))
    new_tbs = _encode_tlv(0x30, b"".join(c[1] for c in children[:-1]) + new_exts)
    signature = device.pki.ca_key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = der[tbs_end:_tlv(der, tbs_end)[2]]
    cert = _encode_tlv(0x30, new_tbs + algorithm + _encode_tlv(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(cert)


def test_unknown_grant_version(device: Device) -> None:
    der = bytearray(encode_grant(grant()))
    der[4] = 2  # version INTEGER 1 -> 2
    value = x509.UnrecognizedExtension(GRANT_OID, bytes(der))
    device.install(_with_grant_extension(device, [x509.Extension(GRANT_OID, False, value)]))
    decision = decide(device)
    assert "version 2 is not supported" in failed(decision)["certificate"]


def test_missing_grant_extension(device: Device) -> None:
    device.install(_with_grant_extension(device, []))
    assert "no EdgeGrant extension" in failed(decide(device))["certificate"]


@pytest.mark.parametrize("cn, san, grant_id", [
    ("cam-2", "cam-1", "cam-1"), ("cam-1", "cam-2", "cam-1"), ("cam-1", "cam-1", "cam-2")])
def test_cn_san_and_grant_must_agree(device: Device, cn: str, san: str, grant_id: str) -> None:
    others = [e for e in device.cert.extensions
              if e.oid not in (GRANT_OID, x509.SubjectAlternativeName.oid)]
    exts = others + [
        x509.Extension(x509.SubjectAlternativeName.oid, False,
                       x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"urn:edge-camera:device:{san}")])),
        x509.Extension(GRANT_OID, False, x509.UnrecognizedExtension(GRANT_OID, encode_grant(grant(grant_id)))),
    ]
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    device.install(resign(device.cert, device.pki.ca_key, extensions=exts, subject=subject))
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "names different devices" in failed(decision)["certificate"]


def test_newer_policy_version_keeps_identification_off(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki, grant(policy_version=2))
    assert "newer than this firmware" in failed(decide(dev))["policy-version"]


@pytest.mark.parametrize("content, words", [
    (b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", "not a readable"),
    (b"\x30\x82\x01\x00garbage", "not a readable"),
    (b"", "is empty"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a readable|not certificates"),
])
def test_malformed_certificate_file(device: Device, content: bytes, words: str) -> None:
    (device.state_dir / "device.pem").write_bytes(content)
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    import re

    assert re.search(words, failed(decision)["certificate"])


def test_certificate_with_a_serial_number_that_is_not_positive(device: Device) -> None:
    """RFC 5280 wants a positive serial; cryptography only warns today and will refuse later."""
    der = bytearray(device.cert.public_bytes(serialization.Encoding.DER))
    serial = device.cert.serial_number.to_bytes((device.cert.serial_number.bit_length() + 8) // 8, "big")
    start = bytes(der).index(bytes([0x02, len(serial)]) + serial) + 2
    der[start] |= 0x80  # the same length, now negative
    (device.state_dir / "device.pem").write_bytes(bytes(der))
    decision = decide(device)
    assert decision.mode is Mode.DETECTION
    assert "not a readable X.509 certificate" in failed(decision)["certificate"]
    assert "serial" in failed(decision)["certificate"].lower()


def test_certificate_over_16_kib(device: Device) -> None:
    big = x509.Extension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), False,
                         x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x04" * 17000))
    device.install(resign(device.cert, device.pki.ca_key, extensions=list(device.cert.extensions) + [big]))
    decision = decide(device)
    assert "holds a certificate of" in failed(decision)["certificate"]
    assert "expected at most 16 KiB per certificate" in failed(decision)["certificate"]


def test_certificate_file_far_too_large(device: Device) -> None:
    (device.state_dir / "device.pem").write_bytes(b"A" * (1024 * 1024))
    assert "larger than" in failed(decide(device))["certificate"]


def test_wrong_curve(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki)
    p384 = ec.generate_private_key(ec.SECP384R1())
    dev.install(resign(dev.cert, pki.ca_key, public_key=p384.public_key()))
    decision = decide(dev)
    assert decision.mode is Mode.DETECTION
    assert "curve secp384r1" in failed(decision)["certificate"]


def test_wrong_key_type(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dev.install(resign(dev.cert, pki.ca_key, public_key=rsa_key.public_key()))
    decision = decide(dev)
    assert "RSAPublicKey key" in failed(decision)["certificate"]


def test_unprovisioned_device_still_decides(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = PolicyConfig.from_mapping({"state_dir": str(state), "trust_anchor": "trust-anchor.pem",
                                        "certificate": "device.pem"})
    decision = PolicyGate(config, audit=AuditLog(state / "audit.log"), clock=lambda: NOW).decide()
    assert decision.mode is Mode.DETECTION
    assert {"trust-anchor", "certificate", "key"} <= set(failed(decision))


def test_wrong_trust_anchor(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki)
    dev.install(anchor=Pki.create().root)
    assert "does not verify" in failed(decide(dev))["chain"]


def test_decisions_are_audited_once_per_change(device: Device) -> None:
    log = AuditLog(device.state_dir / "audit.log")
    gate = PolicyGate(device.config, audit=log, clock=lambda: NOW)
    (device.state_dir / "installed-crl.pem").write_bytes(device.pki.crl().public_bytes(serialization.Encoding.PEM))
    gate.crl_store.reload()
    gate.decide()
    gate.decide()
    lines = (device.state_dir / "audit.log").read_text().splitlines()
    events = [line for line in lines if "policy-decision" in line]
    assert len(events) == 1 and '"identification"' in events[0]
    assert verify_log(device.state_dir / "audit.log").ok


def test_identification_needs_a_working_audit_log(device: Device, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's directory should be")
    decision = decide(device, audit=AuditLog(blocked / "audit.log"))
    assert decision.mode is Mode.DETECTION and decision.identification is None
    assert "identification needs a working audit log" in failed(decision)["audit"]


# --- the identification grant can only come from the gate ---------------------------------------

def test_grant_cannot_be_constructed_directly(device: Device) -> None:
    decision = decide(device)
    with pytest.raises(TypeError, match="issued by the policy gate only"):
        IdentificationGrant(object(), decision)


def test_forged_grant_object_is_refused(device: Device) -> None:
    forged = object.__new__(IdentificationGrant)
    for name, value in (("device_id", "cam-1"), ("site", "x"), ("deployment_tags", ("retail",)),
                        ("serial", 1), ("valid_until", NOW + DAY)):
        object.__setattr__(forged, name, value)
    assert not is_gate_issued(forged)
    with pytest.raises(IdentificationRefused):
        IdentificationSession(forged)
    with pytest.raises(IdentificationRefused):
        IdentificationSession("identification")  # type: ignore[arg-type]


def test_grant_cannot_be_copied_or_changed(device: Device) -> None:
    token = decide(device).identification
    assert token is not None
    for attempt in (lambda: copy.copy(token), lambda: copy.deepcopy(token), lambda: pickle.dumps(token)):
        with pytest.raises(TypeError):
            attempt()
    with pytest.raises(AttributeError):
        token.valid_until = NOW + 1000 * DAY  # type: ignore[misc]


def test_session_from_gate_grant_and_its_end(device: Device) -> None:
    decision = decide(device)
    session = IdentificationSession(decision.identification)  # type: ignore[arg-type]
    assert session.device_id == "cam-1" and session.site == "Shop 1"
    session.require_live(NOW)
    with pytest.raises(IdentificationRefused, match="grant ended"):
        session.require_live(decision.valid_until)  # type: ignore[arg-type]


def test_detection_decision_carries_no_grant(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki, grant(tags=("police",)))
    assert decide(dev).identification is None


# --- configuration ----------------------------------------------------------------------------------

def test_config_resolves_relative_paths_against_state_dir(tmp_path: Path) -> None:
    config = PolicyConfig.from_mapping({"state_dir": str(tmp_path), "trust_anchor": "a.pem",
                                        "certificate": "/etc/x/device.pem", "crl": "crl.pem"})
    assert config.trust_anchor == tmp_path / "a.pem"
    assert config.certificate == Path("/etc/x/device.pem")
    assert config.key == tmp_path / "device-key.pem"
    assert config.audit_log == tmp_path / "audit.log"


@pytest.mark.parametrize("data, words", [
    ({"trust_anchor": "a", "certificate": "c"}, "state_dir"),
    ({"state_dir": "/s", "trust_anchor": "a", "certificate": 3}, "is not a path"),
    ({"state_dir": "/s", "trust_anchor": "a", "certificate": "c", "trust_ancor": "x"}, "unknown key"),
    ({"state_dir": "/s", "trust_anchor": "", "certificate": "c"}, "is not a path"),
    ([], "is not a table"),
])
def test_config_errors(data: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        PolicyConfig.from_mapping(data)  # type: ignore[arg-type]


def test_installed_crl_counts_from_start_without_sighup(device: Device) -> None:
    (device.state_dir / "installed-crl.pem").write_bytes(device.pki.crl().public_bytes(serialization.Encoding.PEM))
    gate = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW)
    assert gate.startup_crl.applied
    assert gate.decide().mode is Mode.IDENTIFICATION


def test_crl_applied_later_over_mqtt_revokes(tmp_path: Path) -> None:
    pki = Pki.create()
    dev = provision(tmp_path, pki)
    gate = PolicyGate(dev.config, audit=AuditLog(dev.state_dir / "audit.log"), clock=lambda: NOW)
    gate.crl_store.handle(pki.crl().public_bytes(serialization.Encoding.DER))
    assert gate.decide().mode is Mode.IDENTIFICATION
    pki.revoke(dev.cert)
    assert gate.crl_store.handle(pki.crl().public_bytes(serialization.Encoding.DER)).applied
    decision = gate.decide()
    assert decision.mode is Mode.DETECTION and "was revoked" in failed(decision)["revocation"]


@pytest.fixture(scope="module")
def fuzz_device(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Device:
    dev = provision(tmp_path_factory.mktemp("fuzz"), pki)
    (dev.state_dir / "installed-crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    return dev


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_corrupted_certificate_never_crashes_and_never_identifies(fuzz_device: Device, data: st.DataObject) -> None:
    original = fuzz_device.cert.public_bytes(serialization.Encoding.DER)
    der = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(der) - 1))
        der[index] = data.draw(st.integers(0, 255).filter(lambda b, i=index: b != der[i]))
    chain = fuzz_device.pki.ca.public_bytes(serialization.Encoding.PEM)
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
        content = cert.public_bytes(serialization.Encoding.PEM) + chain
    except (ValueError, x509.InvalidVersion):
        content = bytes(der)  # unparseable: the gate must say so
    (fuzz_device.state_dir / "device.pem").write_bytes(content)
    gate = PolicyGate(fuzz_device.config, audit=None, clock=lambda: NOW)
    decision = gate.decide()
    assert decision.mode is Mode.DETECTION
    assert decision.reasons


def test_revocation_withdraws_a_grant_already_in_use(tmp_path: Path) -> None:
    pki = Pki.create()
    dev = provision(tmp_path, pki)
    gate = PolicyGate(dev.config, audit=AuditLog(dev.state_dir / "audit.log"), clock=lambda: NOW)
    gate.crl_store.handle(pki.crl().public_bytes(serialization.Encoding.DER))
    first = gate.decide()
    session = IdentificationSession(first.identification)  # type: ignore[arg-type]
    session.require_live(NOW)
    pki.revoke(dev.cert)
    gate.crl_store.handle(pki.crl().public_bytes(serialization.Encoding.DER))
    assert gate.decide().mode is Mode.DETECTION
    assert not is_gate_issued(first.identification)
    with pytest.raises(IdentificationRefused):
        session.require_live(NOW)


def test_each_decision_replaces_the_previous_grant(device: Device) -> None:
    (device.state_dir / "installed-crl.pem").write_bytes(device.pki.crl().public_bytes(serialization.Encoding.PEM))
    gate = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW)
    first, second = gate.decide(), gate.decide()
    assert not is_gate_issued(first.identification) and is_gate_issued(second.identification)


# --- the audit log records changes of decision, not restarts ----------------------------------------

def audit_records(device: Device) -> list[dict[str, object]]:
    return [json.loads(line) for line in (device.state_dir / "audit.log").read_text().splitlines()]


def start_service(device: Device, now: dt.datetime):  # type: ignore[no-untyped-def]
    """What each start of the service does (edge.app.service.attach_policy): a new gate over the same
    state directory, which re-reads the installed CRL, then its first decision."""
    return PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: now).decide()


def install_crl_file(device: Device, crl: x509.CertificateRevocationList) -> None:
    (device.state_dir / "installed-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_a_service_restarting_every_five_seconds_adds_no_record(device: Device) -> None:
    install_crl_file(device, device.pki.crl())
    first = start_service(device, NOW)
    assert first.mode is Mode.IDENTIFICATION
    after_first_start = audit_records(device)
    assert [r["event"] for r in after_first_start] == ["crl-applied", "policy-decision"]
    for restart in range(1, 8):
        assert start_service(device, NOW + restart * dt.timedelta(seconds=5)).mode is Mode.IDENTIFICATION
    assert audit_records(device) == after_first_start
    assert verify_log(device.state_dir / "audit.log").ok


def test_restarts_with_an_untrusted_clock_add_no_record(device: Device) -> None:
    """The clock's reason must not carry the reading, or each new minute would look like a new decision."""
    install_crl_file(device, device.pki.crl())
    before_build = firmware_build_time() - DAY
    for restart in range(4):
        decision = start_service(device, before_build + restart * dt.timedelta(seconds=61))
        assert decision.mode is Mode.DETECTION and "time is untrusted" in failed(decision)["clock"]
    assert [r["event"] for r in audit_records(device)].count("policy-decision") == 1


def test_a_real_change_is_recorded_even_across_restarts(tmp_path: Path) -> None:
    """A replaced certificate and a revocation each add exactly one decision; restarts in between add none."""
    from edge.trust.device_key import load_or_create_device_key

    pki = Pki.create()
    dev = provision(tmp_path, pki)
    install_crl_file(dev, pki.crl())

    def decisions() -> list[dict[str, object]]:
        return [r["data"] for r in audit_records(dev) if r["event"] == "policy-decision"]  # type: ignore[misc]

    start_service(dev, NOW)
    start_service(dev, NOW + dt.timedelta(seconds=5))
    assert [d["mode"] for d in decisions()] == ["identification"]  # type: ignore[index]

    key = load_or_create_device_key(dev.state_dir)
    dev.install(pki.issue(build_csr(key, "cam-1"), grant(capabilities=("detection",))))
    for restart in range(3):
        start_service(dev, NOW + dt.timedelta(seconds=10 + 5 * restart))
    assert [d["mode"] for d in decisions()] == ["identification", "detection"]  # type: ignore[index]
    assert decisions()[1]["serial"] == f"{dev.cert.serial_number:x}" != decisions()[0]["serial"]  # type: ignore[index]

    dev.install(pki.issue(build_csr(key, "cam-1")))
    start_service(dev, NOW + dt.timedelta(seconds=30))
    pki.revoke(dev.cert)
    install_crl_file(dev, pki.crl())
    for restart in range(3):
        decision = start_service(dev, NOW + dt.timedelta(seconds=35 + 5 * restart))
        assert decision.mode is Mode.DETECTION and "was revoked" in failed(decision)["revocation"]
    assert [d["mode"] for d in decisions()] == ["identification", "detection", "identification", "detection"]  # type: ignore[index]
    assert "was revoked" in str(decisions()[-1]["reasons"])  # type: ignore[index]
    assert verify_log(dev.state_dir / "audit.log").ok


def test_restarts_add_no_crl_record_either(tmp_path: Path) -> None:
    """The bundle's CRL file is older than the one that came over MQTT, then it goes missing: each refusal is
    recorded once, however often the service starts and re-reads it."""
    pki = Pki.create()
    dev = provision(tmp_path, pki)
    install_crl_file(dev, pki.crl())  # CRL 1, from the bundle
    start_service(dev, NOW)
    gate = PolicyGate(dev.config, audit=AuditLog(dev.state_dir / "audit.log"), clock=lambda: NOW)
    assert gate.crl_store.handle(pki.crl().public_bytes(serialization.Encoding.DER)).applied  # CRL 2, from MQTT
    for restart in range(4):
        assert start_service(dev, NOW + restart * dt.timedelta(seconds=5)).mode is Mode.IDENTIFICATION
    (dev.state_dir / "installed-crl.pem").unlink()
    for restart in range(4):
        start_service(dev, NOW + dt.timedelta(seconds=20 + 5 * restart))
    events = [r["event"] for r in audit_records(dev)]
    assert events == ["crl-applied", "policy-decision", "crl-applied", "crl-ignored", "crl-ignored"], events
    ignored = [r["data"]["message"] for r in audit_records(dev) if r["event"] == "crl-ignored"]  # type: ignore[index]
    assert "rollback refused" in ignored[0] and "cannot be read" in ignored[1]
