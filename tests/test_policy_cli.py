"""`edge-camera policy` and `edge-camera audit verify`, through the subcommands `add_parsers` adds."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edge.trust.audit import AuditError
from edge.common.errors import ConfigError, EdgeError
from edge.app.policy_commands import add_parsers
from support.pki import Pki, grant


def run(argv: list[str]) -> int:
    """What edge/app/cli.py's main does with these subcommands."""
    parser = argparse.ArgumentParser(prog="edge-camera")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except EdgeError as exc:
        print(f"edge-camera: error: {exc}")
        return exc.exit_code


def decide_as_the_service(config: Path) -> None:
    """What `edge-camera run` does with the [policy] section at start: the gate decides and audits."""
    from edge.app.policy_commands import load_policy_config
    from edge.policy import PolicyGate
    from edge.trust.audit import AuditLog

    policy = load_policy_config(config)
    PolicyGate(policy, audit=AuditLog(policy.audit_log)).decide()


@pytest.fixture(scope="module")
def pki() -> Pki:
    # Real time: the CLI reads the real clock, so the PKI must be valid now.
    import datetime as dt

    return Pki.create(dt.datetime.now(dt.timezone.utc))


def config_for(tmp_path: Path, state: Path, extra: str = "") -> Path:
    path = tmp_path / "edge-camera.toml"
    path.write_text(f'[policy]\nstate_dir = "{state}"\ntrust_anchor = "trust-anchor.pem"\n'
                    f'certificate = "device.pem"\ncrl = "installed-crl.pem"\n{extra}')
    return path


def install_crl(pki: Pki, state: Path) -> None:
    import datetime as dt

    crl = pki.crl(dt.datetime.now(dt.timezone.utc))
    (state / "installed-crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def issue_now(tmp_path: Path, pki: Pki, **kwargs: object):  # type: ignore[no-untyped-def]
    import datetime as dt

    from edge.trust.device_key import build_csr, load_or_create_device_key
    from support.pki import Device

    state = tmp_path / "state"
    key = load_or_create_device_key(state)
    cert = pki.issue(build_csr(key, "cam-1"), grant(**kwargs), now=dt.datetime.now(dt.timezone.utc))  # type: ignore[arg-type]
    device = Device(state, pki, cert)
    device.install()
    return device


def test_policy_prints_identification_and_every_check(tmp_path: Path, pki: Pki,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    device = issue_now(tmp_path, pki)
    install_crl(pki, device.state_dir)
    assert run(["policy", "--config", str(config_for(tmp_path, device.state_dir))]) == 0
    out = capsys.readouterr().out
    assert "mode        identification" in out and "local CRL   applied" in out
    assert out.count("[ ok ]") >= 9 and "FAIL" not in out


def test_policy_prints_why_identification_is_off(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    device = issue_now(tmp_path, pki, tags=("retail", "Dash Mounted"))
    assert run(["policy", "--config", str(config_for(tmp_path, device.state_dir))]) == 0
    out = capsys.readouterr().out
    assert "mode        detection" in out
    assert "law-enforcement deployment" in out and "no revocation list" in out
    assert "detection keeps running" in out


def test_audit_verify_intact_then_tampered(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    device = issue_now(tmp_path, pki)
    install_crl(pki, device.state_dir)
    config = config_for(tmp_path, device.state_dir)
    decide_as_the_service(config)  # `edge-camera policy` records nothing: the service writes the log
    assert run(["audit", "verify", "--config", str(config)]) == 0
    assert "intact" in capsys.readouterr().out
    log = device.state_dir / "audit.log"
    log.write_text(log.read_text().replace('"identification"', '"detection"'))
    assert run(["audit", "verify", "--log", str(log)]) == AuditError.exit_code
    out = capsys.readouterr().out
    assert "was altered" in out and "keep the file as evidence" in out


@pytest.mark.parametrize("content, words", [
    ("[policy]\nstate_dir = 3\n", "is not a path"),
    ("[mqtt]\nhost = 'x'\n", "has no [policy] section"),
    ("[policy\n", "is not valid TOML"),
])
def test_config_problems_are_config_errors(tmp_path: Path, content: str, words: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    assert run(["policy", "--config", str(path)]) == ConfigError.exit_code
    assert words in capsys.readouterr().out


def test_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policy", "--config", str(tmp_path / "none.toml")]) == ConfigError.exit_code
    assert "does not exist" in capsys.readouterr().out


def test_gallery_erase_works_without_identification(tmp_path: Path, pki: Pki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A detection-only device (law-enforcement tag) can still erase what an earlier grant enrolled."""
    import datetime as dt

    import numpy as np

    from edge.identify.gallery import ConsentRecord, Enrollment, Gallery, GalleryFile

    device = issue_now(tmp_path, pki, tags=("police",))
    config = config_for(tmp_path, device.state_dir)
    now = dt.datetime.now(dt.timezone.utc)
    vector = np.eye(128, dtype=np.float32)[3]
    consent = ConsentRecord("form-7", now - dt.timedelta(days=1), "manager")
    GalleryFile(device.state_dir / "gallery.json").save(Gallery((
        Enrollment("p-1", vector, consent, now, now + dt.timedelta(days=30), "office"),
        Enrollment("p-2", vector, consent, now - dt.timedelta(days=40), now - dt.timedelta(days=1), "office"))))
    assert run(["gallery", "list", "--config", str(config)]) == 0
    assert "2 person(s)" in capsys.readouterr().out
    assert run(["gallery", "purge", "--config", str(config)]) == 0
    assert "p-2" in capsys.readouterr().out
    assert run(["gallery", "erase", "--config", str(config), "--person", "p-1"]) == 0
    assert "erased 1 enrolment(s) of 'p-1'" in capsys.readouterr().out
    assert GalleryFile(device.state_dir / "gallery.json").load().people() == ()
    assert run(["audit", "verify", "--config", str(config)]) == 0
    log = (device.state_dir / "audit.log").read_text()
    assert "gallery-erase" in log and "gallery-retention-purge" in log
