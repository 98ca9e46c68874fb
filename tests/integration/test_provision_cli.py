"""`edge-provision` driven the way an installer drives it: exit codes and plain messages."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioning.cli import main

PASS = "a long enough test passphrase"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TEST_PASS", PASS)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def ca(tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, "init-root", "--dir", str(tmp_path / "root"), "--org", "Acme",
               "--passphrase-env", "EDGE_TEST_PASS")[0] == 0
    assert run(capsys, "init-ca", "--root-dir", str(tmp_path / "root"), "--dir", str(tmp_path / "ca"),
               "--org", "Acme", "--root-passphrase-env", "EDGE_TEST_PASS",
               "--passphrase-env", "EDGE_TEST_PASS")[0] == 0
    return tmp_path / "ca"


@pytest.fixture
def csr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "cam-1.csr"
    code, text, _ = run(capsys, "device-key", "--state-dir", str(tmp_path / "device"), "--device-id", "cam-1",
                        "--out", str(out))
    assert code == 0 and "never leaves this device" in text
    return out


def issue(capsys: pytest.CaptureFixture[str], ca: Path, csr: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "issue", "--ca-dir", str(ca), "--csr", str(csr), "--site", "Shop 1", "--out", str(out),
               "--passphrase-env", "EDGE_TEST_PASS", *extra)


def test_ca_keys_are_encrypted_and_private(ca: Path, tmp_path: Path) -> None:
    for key in (tmp_path / "root" / "root-ca.key", ca / "provisioning-ca.key"):
        data = key.read_bytes()
        assert b"BEGIN ENCRYPTED PRIVATE KEY" in data
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, password=None)
        assert isinstance(serialization.load_pem_private_key(data, password=PASS.encode()), ec.EllipticCurvePrivateKey)


def test_device_key_is_private_and_stable(tmp_path: Path, csr: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "device" / "device-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    assert run(capsys, "device-key", "--state-dir", str(tmp_path / "device"), "--device-id", "cam-1",
               "--out", str(tmp_path / "again.csr"))[0] == 0
    assert key.read_bytes() == before  # generated once, never replaced
    a, b = (x509.load_pem_x509_csr(p.read_bytes()) for p in (csr, tmp_path / "again.csr"))
    assert a.public_key() == b.public_key()


def test_full_installer_walkthrough(ca: Path, csr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "cam-1.pem"
    code, out, _ = issue(capsys, ca, csr, cert, "--tag", "Retail", "--grant-identification")
    assert code == 0 and "grants: detection, identification" in out
    code, out, _ = run(capsys, "inspect", str(cert), "--chain", str(ca / "provisioning-ca.pem"),
                       "--trust-anchor", str(ca / "root-ca.pem"), "--crl", str(ca / "crl.pem"))
    assert code == 0 and "identification would be ALLOWED" in out and "'Retail': allowed" in out
    bundle = tmp_path / "bundle"
    assert run(capsys, "bundle", "--ca-dir", str(ca), "--cert", str(cert), "--out", str(bundle))[0] == 0
    code, out, _ = run(capsys, "verify", "--bundle", str(bundle), "--trust-anchor", str(ca / "root-ca.pem"),
                       "--key", str(tmp_path / "device" / "device-key.pem"))
    assert code == 0 and "bundle verifies" in out and "identification allowed" in out
    # Revoke it: a fresh CRL makes the same bundle fail verification.
    code, out, _ = run(capsys, "revoke", "--ca-dir", str(ca), "--cert", str(cert),
                       "--passphrase-env", "EDGE_TEST_PASS", "--out", str(bundle / "crl.pem"))
    assert code == 0 and "CRL number 2 with 1 revoked" in out
    code, _, err = run(capsys, "verify", "--bundle", str(bundle), "--trust-anchor", str(ca / "root-ca.pem"))
    assert code == 6 and "was revoked" in err


@pytest.mark.parametrize("tag", ["police", "Law Enforcement", "BODY_WORN", "ｐｏｌｉｃｅ", "public space", "stadium",
                                 "p\u043elice"])
def test_identification_with_forbidden_tag_is_refused_before_signing(
        ca: Path, csr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    monkeypatch.delenv("EDGE_TEST_PASS")  # refused before the CA key is even opened
    cert = tmp_path / "x.pem"
    code, _, err = issue(capsys, ca, csr, cert, "--tag", "retail", "--tag", tag, "--grant-identification")
    assert code == 5 and "identification cannot be granted" in err and "what to do" in err
    assert not cert.exists() and list((ca / "issued").iterdir()) == []


def test_detection_only_for_law_enforcement_is_issued(ca: Path, csr: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "x.pem"
    code, out, _ = issue(capsys, ca, csr, cert, "--tag", "police")
    assert code == 0 and "grants: detection;" in out
    code, out, _ = run(capsys, "inspect", str(cert), "--chain", str(ca / "provisioning-ca.pem"),
                       "--trust-anchor", str(ca / "root-ca.pem"), "--crl", str(ca / "crl.pem"))
    assert "identification would be OFF" in out and "law-enforcement deployment" in out


def test_unknown_tag_warns_for_detection_only(ca: Path, csr: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = issue(capsys, ca, csr, tmp_path / "x.pem", "--tag", "stadium")
    assert code == 0 and "warning" in err and "not in the deployment-tag vocabulary" in err


def test_wrong_passphrase(ca: Path, csr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TEST_PASS", "not the passphrase at all")
    code, _, err = issue(capsys, ca, csr, tmp_path / "x.pem")
    assert code == 4 and "does not open" in err


def test_passphrase_from_file(ca: Path, csr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text(PASS + "\n")
    code, _, _ = run(capsys, "issue", "--ca-dir", str(ca), "--csr", str(csr), "--site", "s", "--out",
                     str(tmp_path / "x.pem"), "--passphrase-file", str(secret))
    assert code == 0


def test_no_passphrase_and_no_terminal(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "provisioning.cli", "init-root", "--dir", str(tmp_path / "r"),
                             "--org", "Acme"], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=REPO,
                            timeout=60)
    assert result.returncode == 4
    assert "no terminal to ask on" in result.stderr and "Traceback" not in result.stderr
    assert "--passphrase-env NAME" in result.stderr


def test_no_terminal_names_the_options_for_that_passphrase(ca: Path, tmp_path: Path) -> None:
    """init-ca needs two passphrases: the error names the root's own options, not a pattern."""
    result = subprocess.run([sys.executable, "-m", "provisioning.cli", "init-ca", "--root-dir", str(ca.parent / "root"),
                             "--dir", str(tmp_path / "ca2"), "--org", "Acme"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, cwd=REPO, timeout=60)
    assert result.returncode == 4
    assert "root CA key passphrase" in result.stderr
    assert "--root-passphrase-file PATH or --root-passphrase-env NAME" in result.stderr


def test_passphrase_is_not_accepted_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "init-root", "--dir", str(tmp_path / "r"), "--org", "A", "--passphrase", PASS)
    assert code == 2 and "unrecognized arguments" in err


def test_short_new_passphrase_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORT", "abc")
    code, _, err = run(capsys, "init-root", "--dir", str(tmp_path / "r"), "--org", "A", "--passphrase-env", "SHORT")
    assert code == 4 and "shorter than 12" in err
    assert not (tmp_path / "r" / "root-ca.key").exists()


def test_existing_outputs_are_never_overwritten(ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "init-root", "--dir", str(tmp_path / "root"), "--org", "Acme",
                       "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 7 and "already exists" in err


@pytest.mark.parametrize("content, words", [
    (b"", "not a readable certificate request"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n-----END CERTIFICATE REQUEST-----\n", "not a readable"),
    (b"\x00" * 20000, "over the 16 KiB limit"),
])
def test_malformed_csr(ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes,
                       words: str) -> None:
    bad = tmp_path / "bad.csr"
    bad.write_bytes(content)
    code, _, err = issue(capsys, ca, bad, tmp_path / "x.pem")
    assert code == 3 and words in err


def test_csr_with_wrong_curve(ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.trust.device_key import build_csr

    bad = tmp_path / "p384.csr"
    bad.write_bytes(build_csr(ec.generate_private_key(ec.SECP384R1()), "cam-1"))  # type: ignore[arg-type]
    code, _, err = issue(capsys, ca, bad, tmp_path / "x.pem")
    assert code == 3 and "curve secp384r1" in err


def test_invalid_device_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "device-key", "--state-dir", str(tmp_path), "--device-id", "Cam One")
    assert code == 3 and "device id 'Cam One' is not valid" in err


def test_inspect_malformed_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert run(capsys, "inspect", str(bad))[0] == 3
    code, _, err = run(capsys, "inspect", str(tmp_path / "none.pem"))
    assert code == 3 and "does not exist" in err


def test_verify_against_the_wrong_trust_anchor(ca: Path, csr: Path, tmp_path: Path, env: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "c.pem"
    issue(capsys, ca, csr, cert, "--tag", "office")
    run(capsys, "bundle", "--ca-dir", str(ca), "--cert", str(cert), "--out", str(tmp_path / "b"))
    run(capsys, "init-root", "--dir", str(tmp_path / "other"), "--org", "Acme", "--passphrase-env", "EDGE_TEST_PASS")
    code, _, err = run(capsys, "verify", "--bundle", str(tmp_path / "b"),
                       "--trust-anchor", str(tmp_path / "other" / "root-ca.pem"))
    assert code == 6 and "does not verify to the pinned trust anchor" in err


def test_verify_another_devices_key(ca: Path, csr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "c.pem"
    issue(capsys, ca, csr, cert)
    run(capsys, "bundle", "--ca-dir", str(ca), "--cert", str(cert), "--out", str(tmp_path / "b"))
    run(capsys, "device-key", "--state-dir", str(tmp_path / "other"), "--device-id", "cam-2",
        "--out", str(tmp_path / "o.csr"))
    code, _, err = run(capsys, "verify", "--bundle", str(tmp_path / "b"), "--trust-anchor", str(ca / "root-ca.pem"),
                       "--key", str(tmp_path / "other" / "device-key.pem"))
    assert code == 6 and "issued for another key" in err


def test_crl_refresh_increments_number(ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "crl", "--ca-dir", str(ca), "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 0 and "CRL number 2 with 0 revoked" in out


def test_revoke_unknown_serial(ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "revoke", "--ca-dir", str(ca), "--serial", "abc", "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 3 and "no certificate with serial abc" in err


def test_nonpositive_days(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "init-root", "--dir", str(tmp_path), "--org", "A", "--days", "0")
    assert code == 2 and "positive" in err


def test_console_entry_point_runs(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "provisioning.cli", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=60, env={**os.environ})
    assert result.returncode == 0 and "Exit codes" in result.stdout


def _run_on_terminal(argv: list[str], answers: list[str], tmp_path: Path) -> tuple[int, str]:
    """Run the tool with a pseudo-terminal as its controlling terminal, answering each prompt."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # child: the tool, with the pty as /dev/tty
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "provisioning.cli", *argv])
    output = b""
    pending = list(answers)
    deadline = 30.0
    settle = 0.1  # the pty applies the child's termios change asynchronously; answer after it
    while True:
        ready, _, _ = select.select([fd], [], [], deadline)
        if not ready:
            os.kill(pid, 9)
            break
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if pending and output.rstrip().endswith(b":"):
            time.sleep(settle)
            os.write(fd, pending.pop(0).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_passphrase_prompt_on_a_terminal(tmp_path: Path) -> None:
    code, out = _run_on_terminal(["init-root", "--dir", str(tmp_path / "r"), "--org", "Acme"], [PASS, PASS], tmp_path)
    assert code == 0, out
    assert "new root CA key passphrase:" in out and "(again)" in out and PASS not in out  # not echoed
    assert serialization.load_pem_private_key((tmp_path / "r" / "root-ca.key").read_bytes(), password=PASS.encode())


def test_mistyped_confirmation_is_refused(tmp_path: Path) -> None:
    code, out = _run_on_terminal(["init-root", "--dir", str(tmp_path / "r"), "--org", "Acme"],
                                 [PASS, PASS + "x"], tmp_path)
    assert code == 4 and "differ" in out
    assert not (tmp_path / "r" / "root-ca.key").exists()


def test_identification_without_any_tag_is_refused(ca: Path, csr: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = issue(capsys, ca, csr, tmp_path / "x.pem", "--grant-identification")
    assert code == 5 and "no deployment tag" in err


def test_inspect_reads_der(ca: Path, csr: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = tmp_path / "c.pem"
    issue(capsys, ca, csr, cert, "--tag", "home")
    der = tmp_path / "c.der"
    der.write_bytes(x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER))
    code, out, _ = run(capsys, "inspect", str(der))
    assert code == 0 and "device id   cam-1" in out and "'home': allowed" in out
    assert "not evaluated: give --trust-anchor" in out


def _ext(cert: x509.Certificate, kind: type) -> object:
    return cert.extensions.get_extension_for_class(kind).value


def test_broker_cert_names_every_host_and_address_and_serves_only(ca: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import ipaddress

    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = tmp_path / "broker"
    code, text, _ = run(capsys, "broker-cert", "--ca-dir", str(ca), "--dns", "mqtt.acme.example", "--dns", "localhost",
                        "--ip", "192.0.2.10", "--ip", "2001:db8::1", "--out", str(out),
                        "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 0 and "crlfile" in text
    chain = x509.load_pem_x509_certificates((out / "broker.pem").read_bytes())
    leaf, provisioning_ca = chain
    assert provisioning_ca == x509.load_pem_x509_certificate((ca / "provisioning-ca.pem").read_bytes())
    san = _ext(leaf, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.acme.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.10"),
                                                        ipaddress.ip_address("2001:db8::1")]
    assert list(_ext(leaf, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.SERVER_AUTH]  # type: ignore[call-overload]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "mqtt.acme.example"
    assert stat.S_IMODE(os.stat(out / "broker-key.pem").st_mode) == 0o600
    key = serialization.load_pem_private_key((out / "broker-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == leaf.public_key()
    assert len(x509.load_pem_x509_certificates((out / "client-ca.pem").read_bytes())) == 2
    assert (ca / "issued" / f"{leaf.serial_number:x}.pem").exists()  # so `revoke --serial` finds it

    # Run again into the same directory: nothing is overwritten (the broker's live key stays).
    before = (out / "broker-key.pem").read_bytes()
    code, _, err = run(capsys, "broker-cert", "--ca-dir", str(ca), "--dns", "x", "--out", str(out),
                       "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 7 and "already exists" in err and (out / "broker-key.pem").read_bytes() == before


@pytest.mark.parametrize("argv, expected", [
    ((), "at least one --dns or --ip"),
    (("--ip", "300.1.2.3"), "IPv4 or IPv6 address"),
])
def test_broker_cert_without_a_usable_name_is_a_usage_error(ca: Path, tmp_path: Path, argv: tuple[str, ...],
                                                             expected: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "broker-cert", "--ca-dir", str(ca), "--out", str(tmp_path / "b"), *argv,
                       "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 2 and expected in err
    assert not (tmp_path / "b" / "broker-key.pem").exists()


def test_client_cert_carries_its_role_as_the_mqtt_username(ca: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from edge.trust.certificates import CertificateError, read_device_identity
    from edge.trust.grant import GrantError

    out = tmp_path / "ha"
    code, text, _ = run(capsys, "client-cert", "--ca-dir", str(ca), "--name", "home-assistant", "--role", "reader",
                        "--out", str(out), "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 0 and "'role:reader'" in text
    leaf = x509.load_pem_x509_certificates((out / "home-assistant.pem").read_bytes())[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "role:reader"
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "home-assistant"
    assert list(_ext(leaf, x509.ExtendedKeyUsage)) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # type: ignore[call-overload]
    assert (ca / "issued" / f"{leaf.serial_number:x}.pem").exists()  # so `revoke --serial` finds it
    with pytest.raises((CertificateError, GrantError)):
        read_device_identity(leaf)  # never usable as a device identity
    acl = (REPO / "systemd" / "mosquitto-fleet.acl").read_text()
    for role in ("reader", "identities", "auditor", "operator"):
        assert f"\nuser role:{role}\n" in acl  # every role the tool offers, the shipped ACL knows

    code, _, err = run(capsys, "client-cert", "--ca-dir", str(ca), "--name", "ha", "--role", "admin",
                       "--out", str(out), "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "client-cert", "--ca-dir", str(ca), "--name", "Dash/1", "--role", "reader",
                       "--out", str(out), "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 2 and "'Dash/1' is not a plain name" in err


def test_bundle_carries_the_ca_the_device_pins_for_the_broker(ca: Path, csr: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    issue(capsys, ca, csr, tmp_path / "cam-1.pem")
    code, out, _ = run(capsys, "bundle", "--ca-dir", str(ca), "--cert", str(tmp_path / "cam-1.pem"),
                       "--out", str(tmp_path / "bundle"))
    assert code == 0 and "broker-ca.pem" in out
    assert (tmp_path / "bundle" / "broker-ca.pem").read_bytes() == (ca / "root-ca.pem").read_bytes()


def test_a_subscriber_certificate_is_revoked_like_a_device(ca: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "client-cert", "--ca-dir", str(ca), "--name", "dashboard-1", "--role", "reader",
        "--out", str(tmp_path / "d"), "--passphrase-env", "EDGE_TEST_PASS")
    leaf = x509.load_pem_x509_certificates((tmp_path / "d" / "dashboard-1.pem").read_bytes())[0]
    code, out, _ = run(capsys, "revoke", "--ca-dir", str(ca), "--serial", f"{leaf.serial_number:x}",
                       "--out", str(tmp_path / "crl.pem"), "--passphrase-env", "EDGE_TEST_PASS")
    assert code == 0 and "1 revoked certificate" in out
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
