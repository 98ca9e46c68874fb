"""Renewal's pure rules (edge.trust.renewal): when to ask, what the operator signs, what the device takes.

Real X.509 throughout: each refused certificate or request is derived from a good one made by the
project's CA code (tests/support/pki.py), with one thing changed.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.common.errors import ConfigError
from edge.trust.device_key import build_csr
from edge.trust.renewal import (
    Acceptance,
    CertificateState,
    RenewalConfig,
    RenewalError,
    certificate_status,
    check_request,
    days_left,
    judge_certificate,
    make_request,
    parse_request,
    renewal_due_at,
)
from edge.trust.renewal_files import RenewalFiles
from edge.trust.device_key import load_device_key
from edge.wire import serialize
from support.pki import DAY, NOW, Pki, grant, pem, resign

SCHEMA = Path(__file__).resolve().parents[2] / "edge" / "wire" / "schemas" / "renewal-request.json"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issued(pki: Pki, key: ec.EllipticCurvePrivateKey, device: str = "cam-1", now=NOW) -> x509.Certificate:
    return pki.issue(build_csr(key, device), grant(device), now=now)


def wire(request) -> bytes:
    return serialize.renewal_request(request.device_id, NOW.timestamp(), request.rotation, request.csr_pem,
                                     request.certificate_pem, request.proof)


# --- when --------------------------------------------------------------------------------------------

def test_due_at_two_thirds_by_default_and_days_left(pki: Pki) -> None:
    cert = issued(pki, new_key())  # valid from NOW - 1 day - 5 min for 365 days
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert renewal_due_at(cert, RenewalConfig().renew_at) == start + (end - start) * 2 / 3
    assert days_left(cert, end - 10 * DAY) == pytest.approx(10.0)
    assert days_left(cert, end + DAY) == pytest.approx(-1.0)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_renew_at_outside_its_range_is_a_clear_error(value: float) -> None:
    with pytest.raises(ConfigError, match="renew_at"):
        RenewalConfig.from_mapping({"renew_at": value})


def test_status_states_in_order_revoked_expired_renewing_valid(pki: Pki) -> None:
    cert = issued(pki, new_key())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    early, late = start + DAY, start + (end - start) * 0.9
    assert certificate_status(cert, early, renew_at=2 / 3, revoked_at=None).state is CertificateState.VALID
    renewing = certificate_status(cert, late, renew_at=2 / 3, revoked_at=None)
    assert renewing.state is CertificateState.RENEWING and "renewal requested" in renewing.detail
    assert certificate_status(cert, late, renew_at=None, revoked_at=None).state is CertificateState.VALID
    expired = certificate_status(cert, end + DAY, renew_at=2 / 3, revoked_at=None)
    assert expired.state is CertificateState.EXPIRED and "outbox" in expired.detail and "refuses" in expired.detail
    revoked = certificate_status(cert, end + DAY, renew_at=2 / 3, revoked_at=early)
    assert revoked.state is CertificateState.REVOKED and f"{cert.serial_number:x}" in revoked.detail
    refused = certificate_status(cert, early, renew_at=2 / 3, revoked_at=None, last_refusal="forged")
    assert refused.detail.endswith("refused: forged")


# --- the request -------------------------------------------------------------------------------------

def test_a_rotation_request_round_trips_and_passes(pki: Pki) -> None:
    old = new_key()
    cert = issued(pki, old)
    request = make_request("cam-1", old, cert, new_key())
    payload = wire(request)
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(json.loads(payload))
    checked = check_request(parse_request(payload), ca_cert=pki.ca, now=NOW, crl=pki.crl(), topic_device="cam-1")
    assert checked.device_id == "cam-1" and checked.current == cert
    assert request.rotation


def test_a_reuse_request_passes(pki: Pki) -> None:
    key = new_key()
    cert = issued(pki, key)
    request = make_request("cam-1", key, cert, None)
    assert not request.rotation
    check_request(parse_request(wire(request)), ca_cert=pki.ca, now=NOW, crl=None)


@settings(max_examples=25, deadline=None)
@given(st.booleans())
def test_the_request_carries_only_public_material(rotation: bool) -> None:
    """Privacy and secrecy on the wire: exactly the schema's fields, no private key in any of them."""
    pki = Pki.create()
    old = new_key()
    cert = issued(pki, old)
    payload = wire(make_request("cam-1", old, cert, new_key() if rotation else None))
    document = json.loads(payload)
    assert set(document) == {"device", "requested", "rotation", "csr", "certificate", "proof"}
    assert b"PRIVATE" not in payload


def test_serialize_refuses_anything_but_a_csr_and_a_certificate() -> None:
    with pytest.raises(ValueError):
        serialize.renewal_request("cam-1", 0.0, True, b"-----BEGIN PRIVATE KEY-----\n", b"-----BEGIN CERTIFICATE-----", b"")


def refusal(pki: Pki, payload: bytes, topic_device: str | None = "cam-1", now=NOW, crl=None) -> str:
    with pytest.raises(RenewalError) as caught:
        check_request(parse_request(payload), ca_cert=pki.ca, now=now, crl=crl, topic_device=topic_device)
    return caught.value.message


def test_operator_refuses_a_request_for_another_device(pki: Pki) -> None:
    old = new_key()
    cert = issued(pki, old, "cam-1")
    assert "names device" in refusal(pki, wire(make_request("cam-1", old, cert, new_key())), topic_device="cam-2")
    other = new_key()
    other_cert = issued(pki, other, "cam-2")
    # cam-2's certificate and key asking for a cam-1 CSR: the CSR names the requester, the certificate does not
    request = make_request("cam-1", other, other_cert, new_key())
    assert "certificate of 'cam-2'" in refusal(pki, wire(request))


def test_operator_refuses_a_request_not_signed_by_the_current_key(pki: Pki) -> None:
    """Someone who copied the device's certificate off the broker cannot ask in its name."""
    cert = issued(pki, new_key())
    thief = new_key()
    request = make_request("cam-1", thief, cert, new_key())
    assert "not signed by the key of its current certificate" in refusal(pki, wire(request))


def test_operator_refuses_revoked_expired_and_foreign_ca(pki: Pki) -> None:
    old = new_key()
    cert = issued(pki, old)
    payload = wire(make_request("cam-1", old, cert, new_key()))
    assert "expired" in refusal(pki, payload, now=cert.not_valid_after_utc + DAY)
    other = Pki.create()
    assert "this provisioning CA" in refusal(other, payload)  # same name here, so it is the signature that fails
    pki.revoke(cert)
    try:
        assert "is revoked" in refusal(pki, payload, crl=pki.crl())
    finally:
        pki.revoked.clear()


def test_operator_refuses_a_forged_current_certificate(pki: Pki) -> None:
    old = new_key()
    forged = resign(issued(pki, old), new_key())  # the CA's name, someone else's signature
    assert "signature" in refusal(pki, wire(make_request("cam-1", old, forged, new_key())))


@pytest.mark.parametrize("payload, words", [
    (b"not json", "not JSON"), (b"{}", "fields"), (b"[1]", "fields"),
    (json.dumps({"device": "cam-1", "requested": "x", "rotation": "yes", "csr": "", "certificate": "",
                 "proof": ""}).encode(), "wrong type"),
    (b"x" * 70000, "more than a request"),
])
def test_unreadable_requests_are_named(payload: bytes, words: str) -> None:
    with pytest.raises(RenewalError, match=words):
        parse_request(payload)


# --- the answer --------------------------------------------------------------------------------------

@pytest.fixture
def renewal(pki: Pki):
    old = new_key()
    current = issued(pki, old, now=NOW - 10 * DAY)
    pending = new_key()
    return old, current, pending


def judge(pki: Pki, payload: bytes, current: x509.Certificate, held: ec.EllipticCurvePrivateKey,
          device: str = "cam-1"):
    return judge_certificate(payload, device_id=device, current=current, anchors=(pki.root,),
                             held_key=held.public_key(), now=NOW)


def test_device_accepts_a_good_renewal_and_ignores_the_same_one_again(pki: Pki, renewal) -> None:
    old, current, pending = renewal
    fresh = issued(pki, pending)
    verdict = judge(pki, pem(fresh, pki.ca), current, pending)
    assert verdict.outcome is Acceptance.ACCEPTED and verdict.certificate == fresh
    again = judge(pki, pem(fresh, pki.ca), fresh, pending)
    assert again.outcome is Acceptance.UNCHANGED


def test_device_refuses_forged_foreign_older_and_mismatched(pki: Pki, renewal) -> None:
    old, current, pending = renewal
    other = Pki.create()
    forged = other.issue(build_csr(pending, "cam-1"), grant("cam-1"))
    cases = {
        "forged": (pem(forged, other.ca), "does not chain"),
        "foreign": (pem(issued(pki, pending, "cam-2"), pki.ca), "names device 'cam-2'"),
        "older": (pem(issued(pki, pending, now=NOW - 20 * DAY), pki.ca), "not newer"),
        "mismatched": (pem(issued(pki, old), pki.ca), "another key"),
        "garbage": (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a readable"),
    }
    for name, (payload, words) in cases.items():
        verdict = judge(pki, payload, current, pending)
        assert verdict.outcome is Acceptance.REFUSED, name
        assert words in verdict.reason, (name, verdict.reason)


def test_device_refuses_a_renewal_on_its_crl(pki: Pki, renewal) -> None:
    _old, current, pending = renewal
    fresh = issued(pki, pending)
    pki.revoke(fresh)
    try:
        verdict = judge_certificate(pem(fresh, pki.ca), device_id="cam-1", current=current, anchors=(pki.root,),
                                    held_key=pending.public_key(), now=NOW, crl=pki.crl())
    finally:
        pki.revoked.clear()
    assert verdict.outcome is Acceptance.REFUSED and "revocation list" in verdict.reason


# --- the files ---------------------------------------------------------------------------------------

def test_swap_is_journalled_and_a_restart_finishes_it(tmp_path: Path, pki: Pki) -> None:
    files = RenewalFiles(tmp_path / "device.pem", tmp_path / "device-key.pem")
    files.cert.write_bytes(b"old certificate")
    files.key.write_bytes(b"old key")
    pending = files.new_key()
    assert files.new_key().private_numbers() == pending.private_numbers()  # asked once, the same key after
    assert (files.next_key.stat().st_mode & 0o777) == 0o600
    # A power cut after the decision was written: the next start completes the swap.
    files.next_cert.write_bytes(b"new certificate")
    assert files.finish_swap()
    assert files.cert.read_bytes() == b"new certificate"
    assert load_device_key(files.key).private_numbers() == pending.private_numbers()
    assert not files.next_key.exists() and not files.next_cert.exists()
    assert not files.finish_swap()  # nothing left to do


def test_status_and_health_carry_the_certificate_within_their_schemas(pki: Pki) -> None:
    schemas = SCHEMA.parent
    cert = issued(pki, new_key())
    state = certificate_status(cert, cert.not_valid_after_utc + DAY, renew_at=2 / 3, revoked_at=None)
    shown = serialize.CertificateReport(state.state.value, f"{state.serial:x}", state.not_after.timestamp(),
                                        state.days_left, state.detail)
    status = serialize.DeviceStatus("detection", "blazeface-full", "cpu", "0.1.0", certificate=shown)
    document = json.loads(serialize.status_online("cam-1", status, 0.0))
    jsonschema.Draft202012Validator(json.loads((schemas / "status.json").read_text())).validate(document)
    assert document["certificate"]["state"] == "expired" and document["certificate"]["days_left"] == -1.0
    health = serialize.HealthReport(0.0, 1.0, None, None, None, 1, 0, 5, 0, 0, 3.0, False, None, 0, 0, None, "cpu",
                                    None, None, certificate=shown)
    document = json.loads(serialize.health("cam-1", health))
    jsonschema.Draft202012Validator(json.loads((schemas / "health.json").read_text())).validate(document)
    assert "nothing is delivered" in document["certificate"]["detail"]
