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


@pytest.mark.parametrize("synchronised", [True, False])
def test_policy_says_when_an_unsynchronised_clock_holds_identification_back(
        tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        synchronised: bool) -> None:
    """The one check the preview leaves out of its mode: said on a line of its own, or `gallery enrol`
    would refuse with a reason `policy` never showed."""
    from edge.app import policy_commands
    from edge.policy.clock import ClockState

    monkeypatch.setattr(policy_commands, "clock_sync_now", lambda: ClockState(synchronised, "kernel NTP status (test)"))
    device = issue_now(tmp_path, pki)
    install_crl(pki, device.state_dir)
    assert run(["policy", "--config", str(config_for(tmp_path, device.state_dir))]) == 0
    out = capsys.readouterr().out
    assert "mode        identification" in out
    said = "but not yet: the clock is not synchronised (kernel NTP status (test))"
    assert (said in out) is not synchronised


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


# --- read-only commands change nothing ---------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under `root` with its mode and, for files, its bytes: the tree as a command left it."""
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_policy_leaves_the_state_directory_byte_for_byte_unchanged(tmp_path: Path, pki: Pki,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A local CRL newer than the held one: the service would store and audit it; `policy` only shows it."""
    device = issue_now(tmp_path, pki)
    install_crl(pki, device.state_dir)
    config = config_for(tmp_path, device.state_dir)
    before = snapshot(tmp_path)
    assert run(["policy", "--config", str(config)]) == 0
    assert snapshot(tmp_path) == before
    out = capsys.readouterr().out
    assert "mode        identification" in out and "local CRL   applied" in out and "stores nothing" in out
    assert not (device.state_dir / "audit.log").exists() and not (device.state_dir / "crl.der").exists()


def test_policy_creates_no_state_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unprovisioned camera: nothing exists yet, and asking must not create the state directory."""
    state = tmp_path / "state"
    config = config_for(tmp_path, state)
    before = snapshot(tmp_path)
    assert run(["policy", "--config", str(config)]) == 0
    assert snapshot(tmp_path) == before and not state.exists()
    out = capsys.readouterr().out
    assert "mode        detection" in out and "does not exist" in out and "local CRL   ignored" in out


def test_policy_shows_what_the_service_decides(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    """Same mode, checks and reasons as the gate the service runs, before and after the service stored the CRL."""
    import datetime as dt

    from edge.app.policy_commands import load_policy_config
    from edge.policy import PolicyGate, preview_decision
    from edge.trust.audit import AuditLog

    device = issue_now(tmp_path, pki, tags=("retail", "Dash Mounted"))
    install_crl(pki, device.state_dir)
    policy = load_policy_config(config_for(tmp_path, device.state_dir))
    now = dt.datetime.now(dt.timezone.utc)
    preview = preview_decision(policy, now)
    decision = PolicyGate(policy, audit=AuditLog(policy.audit_log), clock=lambda: now).decide()
    assert (preview.decision.mode, preview.decision.checks) == (decision.mode, decision.checks)
    assert preview.decision.reasons == decision.reasons and "law-enforcement deployment" in " ".join(decision.reasons)
    after_start = preview_decision(policy, now)  # the service stored the CRL; the file is now the held one
    assert after_start.decision.checks == decision.checks
    assert after_start.local_crl.reason == "CRL is the one already held"


def test_audit_verify_of_a_missing_log_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "audit.log"
    assert run(["audit", "verify", "--log", str(missing)]) == AuditError.exit_code == 7
    out = capsys.readouterr().out
    assert f"audit log {missing} does not exist" in out and "intact" not in out
    assert run(["audit", "verify", "--config", str(config_for(tmp_path, tmp_path / "state"))]) == 7
    assert "does not exist" in capsys.readouterr().out
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "state").exists()


# The vision stack: what `edge-camera policy` and `audit verify` must never wait for, nor depend on.
VISION_STACK = ("numpy", "cv2", "tflite_runtime", "ai_edge_litert", "edge.vision", "edge.pose", "edge.sources")


def test_policy_and_trust_do_not_load_the_vision_stack() -> None:
    """A fresh interpreter imports every module of edge.policy and edge.trust: none of the vision stack loads."""
    import json
    import pkgutil
    import subprocess
    import sys

    import edge.policy
    import edge.trust

    modules = sorted(m.name for package in (edge.policy, edge.trust)
                     for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."))
    assert "edge.policy.decision" in modules and "edge.trust.audit" in modules
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {VISION_STACK!r} "
        f"or m.startswith({VISION_STACK!r}))))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_policy_commands_import_nothing_of_the_vision_stack_themselves() -> None:
    """Module level of edge/app/policy_commands.py: the standard library, policy, trust, errors, and the
    configuration's default path; the gallery (edge.identify, numpy) only inside its own handlers."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[2] / "edge" / "app" / "policy_commands.py").read_text())
    imported = {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    edge_modules = {m for m in imported if m.startswith("edge.")}
    assert edge_modules <= {"edge.policy", "edge.trust.audit", "edge.common.errors", "edge.app.config"}, edge_modules
    assert not {m for m in imported if m.startswith(VISION_STACK)}
