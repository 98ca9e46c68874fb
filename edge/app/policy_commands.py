"""`edge-camera policy` and `audit verify`: the gate's decision and the audit log (the gallery: gallery_commands).

Why separate from edge/app/cli.py: the lead's CLI stays about detection; this
module only adds subcommands (`add_parsers`) and reads the `[policy]` section
of the configuration file itself. It imports nothing of the vision stack
(numpy, OpenCV, the detector), so the read-only commands start quickly and
work on a camera whose detector is broken; `edge.app.config`, for the default
path, has to stay as light.

`policy` and `audit verify` only read: `policy` previews the gate's decision
(no directory made, no CRL stored, no audit record, no grant), and exits 0 in
either mode, since detection is not an error. `audit verify` exits 0 when the
chain is intact and 7 (`AuditError`) when the log was altered, cannot be read
or does not exist. A configuration problem exits 2 (`ConfigError`).
"""
from __future__ import annotations

import argparse
import datetime as dt
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.trust.audit import AuditError, verify_log
from edge.app.config import DEFAULT_CONFIG
from edge.common.errors import ConfigError
from edge.policy import Mode, PolicyConfig, preview_decision

if TYPE_CHECKING:  # never executed: the clock's sources are read only when `policy` runs
    from edge.policy.clock import ClockState

EXIT_OK = 0
POLICY_SECTION = "policy"


def read_config_document(path: Path) -> dict[str, Any]:
    """The configuration file as TOML; a ConfigError naming the file when it is missing or not TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(str(path), "does not exist", "the camera's TOML configuration file") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"is not valid TOML ({exc})") from None


def load_policy_config(path: Path) -> PolicyConfig:
    data = read_config_document(path)
    if POLICY_SECTION not in data:
        raise ConfigError(str(path), f"has no [{POLICY_SECTION}] section",
                          "state_dir, trust_anchor, certificate (and optionally key, crl)")
    return PolicyConfig.from_mapping(data[POLICY_SECTION])


def cmd_policy(args: argparse.Namespace) -> int:
    """Print what the gate would decide now; read-only (no directory, no stored CRL, no audit record)."""
    config = load_policy_config(Path(args.config))
    preview = preview_decision(config, dt.datetime.now(dt.timezone.utc))
    decision = preview.decision
    print(f"device      {decision.device_id or '(no usable certificate)'}")
    print(f"clock       {decision.evaluated_at:%Y-%m-%d %H:%M} UTC")
    print(f"mode        {decision.mode.value}")
    if config.crl is not None:
        print(f"local CRL   {preview.local_crl.outcome.value}: {preview.local_crl.reason}")
    for check in decision.checks:
        print(f"  [{' ok ' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    if decision.mode is Mode.IDENTIFICATION:
        print(f"identification allowed until {decision.valid_until:%Y-%m-%d %H:%M} UTC at the latest")
        # The one check of the service's gate this preview leaves out: say it, or `gallery enrol` refuses
        # with a reason this output never showed.
        sync = clock_sync_now()
        if not sync.synchronised:
            print(f"but not yet: the clock is not synchronised ({sync.detail}); the service, 'gallery enrol' "
                  f"and 'identify' decide detection until it is (enable NTP, e.g. 'timedatectl set-ntp true')")
    else:
        print("identification is off for the reasons marked FAIL; detection keeps running")
    return EXIT_OK


def clock_sync_now() -> ClockState:
    """The system's clock synchronisation, read-only, as the service's gate asks it."""
    from edge.policy.clock import SystemClockSync

    return SystemClockSync()()


def cmd_audit_verify(args: argparse.Namespace) -> int:
    path = Path(args.log) if args.log else load_policy_config(Path(args.config)).audit_log
    result = verify_log(path, missing_ok=False)
    print(f"audit log   {path}")
    print(f"records     {result.records}")
    print(f"head        {result.head}")
    if result.ok:
        print("intact: every record follows the one before (compare the head with the last one the broker saw)")
        return EXIT_OK
    for problem in result.problems:
        print(f"  {problem}")
    raise AuditError(f"audit log {path} was altered or damaged ({len(result.problems)} problem(s) above)",
                     "keep the file as evidence and compare with the records published on the audit topic")


def add_parsers(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `policy` and `audit verify` to the edge-camera command line (handlers set as `func`)."""
    policy = subparsers.add_parser("policy", help="print the effective mode (detection or identification) "
                                                  "and every reason")
    policy.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help=f"the camera's TOML configuration, its [policy] section (default {DEFAULT_CONFIG})")
    policy.set_defaults(func=cmd_policy)

    audit = subparsers.add_parser("audit", help="work with the tamper-evident audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check that no record was edited, inserted or deleted")
    source = verify.add_mutually_exclusive_group()
    source.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help=f"the camera's TOML configuration, audit.log in its state_dir (default {DEFAULT_CONFIG})")
    source.add_argument("--log", help="an audit log file")
    verify.set_defaults(func=cmd_audit_verify)
