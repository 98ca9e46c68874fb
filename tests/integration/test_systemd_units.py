"""systemd/: the units verify cleanly, the service's exposure stays at or below 2.0, and sysusers, tmpfiles and udev agree.

Real tools on real files: `systemd-analyze verify` against a temporary root
holding the distribution's own units, ours where the package installs them and
an executable stub at every Exec path (verify fails when a binary is missing);
`systemd-analyze security --offline=true`; `systemd-sysusers` and
`systemd-tmpfiles` with `--root=`. The bare `systemd-analyze verify` exits 0
on unknown keys, so what is asserted is that it prints nothing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from edge.trust.device_key import DEVICE_KEY_FILE
from provisioning.first_boot import PROG as FIRST_BOOT_PROG

REPO = Path(__file__).resolve().parents[2]
UNITS_DIR = REPO / "systemd"
SERVICE = "edge-camera.service"
FIRST_BOOT = "edge-camera-firstboot.service"
UNITS = (SERVICE, FIRST_BOOT)
SYSUSERS = UNITS_DIR / "edge-camera.sysusers"
TMPFILES = UNITS_DIR / "edge-camera.tmpfiles"
UDEV_RULES = UNITS_DIR / "60-edge-camera-coral.rules"
DISTRO_UNITS = Path("/usr/lib/systemd/system")
PACKAGE_UNITS = Path("usr/lib/systemd/system")  # where the package installs ours, relative to a root
MAX_EXPOSURE = 2.0
EX_CONFIG = "78"
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}
DEBIAN_VIDEO_GID = 44
TOOL_TIMEOUT_S = 60

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")


def directives(unit: str) -> dict[str, list[str]]:
    """Key -> values in file order; a unit file may repeat a key (DeviceAllow=, SystemCallFilter=)."""
    found: dict[str, list[str]] = {}
    for line in (UNITS_DIR / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(unit: str, key: str) -> str:
    values = directives(unit).get(key, [])
    assert len(values) == 1, f"{unit}: expected exactly one {key}=, found {values}"
    return values[0]


def exec_binaries(unit: str) -> set[str]:
    """The programs every Exec*= line runs (after systemd's prefixes such as '-' or '+')."""
    found = set()
    for key, values in directives(unit).items():
        if key.startswith("Exec"):
            for value in values:
                found.add(value.lstrip("-@:+!").split()[0])
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root for `--root=`: the distribution's units (targets, slices), ours, and stubs for our binaries."""
    if not DISTRO_UNITS.is_dir():
        pytest.skip(f"{DISTRO_UNITS} is missing: verify needs the distribution's targets (sysinit.target, ...)")
    root = tmp_path / "root"
    shutil.copytree(DISTRO_UNITS, root / PACKAGE_UNITS, symlinks=True)
    for unit in UNITS:
        shutil.copy(UNITS_DIR / unit, root / PACKAGE_UNITS / unit)
        for binary in exec_binaries(unit):
            stub = root / binary.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    return root


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_verify_prints_nothing(root: Path, unit: str) -> None:
    result = analyze("verify", f"--root={root}", "--man=false", unit)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_verify_would_catch_a_mistake(root: Path) -> None:
    """The check above can fail: an unknown key is printed (exit 0), a missing binary is an error."""
    unit = root / PACKAGE_UNITS / SERVICE
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nWatchdogSecs=30\n"))
    result = analyze("verify", f"--root={root}", "--man=false", SERVICE)
    assert result.returncode == 0 and "Unknown key 'WatchdogSecs'" in result.stdout + result.stderr
    (root / "usr/bin/edge-camera").unlink()
    result = analyze("verify", f"--root={root}", "--man=false", SERVICE)
    assert result.returncode != 0 and "/usr/bin/edge-camera" in result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_at_most_two(unit: str) -> None:
    result = analyze("security", "--offline=true", str(UNITS_DIR / unit))
    text = result.stdout + result.stderr
    if "--offline" in text and ("unrecognized" in text or "Unknown option" in text):
        pytest.skip(f"this systemd-analyze cannot analyse offline (systemd 250 or newer needed): {text.strip()}")
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", text)
    assert match, text
    assert float(match.group(1)) <= MAX_EXPOSURE, text


def test_the_service_is_supervised_and_sandboxed_as_the_issue_asks() -> None:
    d = directives(SERVICE)
    for key, value in {"Type": "notify", "WatchdogSec": "30", "Restart": "on-failure",
                       "RestartPreventExitStatus": EX_CONFIG, "MemoryMax": "300M", "DevicePolicy": "closed",
                       "UMask": "0077", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
                       "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
                       "LockPersonality": "yes", "CapabilityBoundingSet": "", "StateDirectory": "edge-camera",
                       "ConfigurationDirectory": "edge-camera", "SupplementaryGroups": "video"}.items():
        assert d.get(key) == [value], f"{key}={d.get(key)}"
    assert "@system-service" in d["SystemCallFilter"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert d.get("PrivateDevices", ["no"]) == ["no"]  # it would hide the camera
    allowed = {value.split()[0] for value in d["DeviceAllow"]}
    assert allowed == {"char-video4linux", "char-media", "char-dma_heap", "char-apex", "char-usb_device"}


def test_exit_code_78_is_the_one_convention() -> None:
    """The service does not restart on EX_CONFIG, and first boot uses the same code for the same kind of fault."""
    from provisioning.first_boot import EXIT_CONFIG

    assert str(EXIT_CONFIG) == one(SERVICE, "RestartPreventExitStatus")
    assert "78 is EX_CONFIG" in (UNITS_DIR / SERVICE).read_text()


def test_first_boot_unit_runs_once_as_the_service_user_before_the_service() -> None:
    state = one(SERVICE, "StateDirectory")
    assert one(FIRST_BOOT, "ConditionPathExists") == f"!/var/lib/{state}/{DEVICE_KEY_FILE}"
    assert one(FIRST_BOOT, "StateDirectory") == state
    for key in ("User", "Group", "UMask"):
        assert one(FIRST_BOOT, key) == one(SERVICE, key)
    assert one(FIRST_BOOT, "Type") == "oneshot" and one(FIRST_BOOT, "Before") == SERVICE
    assert FIRST_BOOT in one(SERVICE, "Wants") and FIRST_BOOT in one(SERVICE, "After")
    # Its program is the console script the edge-provision wheel installs.
    scripts = tomllib.loads((REPO / "provisioning" / "pyproject.toml").read_text())["project"]["scripts"]
    assert exec_binaries(FIRST_BOOT) == {f"/usr/bin/{FIRST_BOOT_PROG}"}
    assert scripts[FIRST_BOOT_PROG] == "provisioning.first_boot:main"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_makes_the_service_user_a_member_of_video(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text(f"video:x:{DEBIAN_VIDEO_GID}:\n")  # as Debian's base-passwd ships it
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True,
                   timeout=TOOL_TIMEOUT_S)
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    user = one(SERVICE, "User")
    assert one(SERVICE, "Group") == user
    name, _, uid, gid, _gecos, home, shell = users[user]
    assert int(uid) < 1000 and shell == "/usr/sbin/nologin" and home == f"/var/lib/{one(SERVICE, 'StateDirectory')}"
    assert groups[user][2] == gid
    assert groups["video"][2] == str(DEBIAN_VIDEO_GID) and user in groups["video"][3].split(",")


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers or systemd-tmpfiles is not installed")
def test_tmpfiles_make_the_directories_the_units_expect(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/group").write_text(f"video:x:{DEBIAN_VIDEO_GID}:\n")
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], check=True, capture_output=True,
                   timeout=TOOL_TIMEOUT_S)
    subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)], check=True,
                   capture_output=True, timeout=TOOL_TIMEOUT_S)
    uid = {line.split(":")[0]: int(line.split(":")[2]) for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    gid = {line.split(":")[0]: int(line.split(":")[2]) for line in (tmp_path / "etc/group").read_text().splitlines()}
    state = tmp_path / "var/lib" / one(SERVICE, "StateDirectory")
    config = tmp_path / "etc" / one(SERVICE, "ConfigurationDirectory")
    user = one(SERVICE, "User")
    assert (state.stat().st_mode & 0o7777, state.stat().st_uid, state.stat().st_gid) == \
        (int(one(SERVICE, "StateDirectoryMode"), 8), uid[user], gid[user])
    assert (config.stat().st_mode & 0o7777, config.stat().st_uid, config.stat().st_gid) == \
        (int(one(SERVICE, "ConfigurationDirectoryMode"), 8), 0, gid[user])


UDEV_MATCH_KEYS = {"SUBSYSTEM", "KERNEL", "ENV", "ATTR", "ATTRS", "SUBSYSTEMS", "ACTION", "DRIVER"}
UDEV_ASSIGN_KEYS = {"GROUP", "MODE", "OWNER", "TAG"}
UDEV_TERM = re.compile(r'^(?P<key>[A-Z]+)(\{(?P<attr>[A-Za-z_]+)\})?(?P<op>==|!=|\+=|=)"(?P<value>[^"]*)"$')


def udev_rules() -> list[dict[str, str]]:
    """Each rule as {KEY or KEY{attr}: value}, refusing a match written as an assignment or the other way round."""
    rules = []
    for number, line in enumerate(UDEV_RULES.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        rule = {}
        for term in line.split(", "):
            m = UDEV_TERM.match(term.strip())
            assert m, f"{UDEV_RULES.name}:{number}: cannot read {term!r}"
            key, op = m["key"], m["op"]
            assert (key in UDEV_MATCH_KEYS and op in ("==", "!=")) or (key in UDEV_ASSIGN_KEYS and op in ("=", "+=")), \
                f"{UDEV_RULES.name}:{number}: {term!r} uses {op} with {key}"
            rule[f"{key}{{{m['attr']}}}" if m["attr"] else key] = m["value"]
        rules.append(rule)
    return rules


def test_udev_gives_both_coral_usb_ids_and_apex_to_the_service_group() -> None:
    rules = udev_rules()
    group = one(SERVICE, "Group")
    assert all(rule.get("GROUP") == group and rule.get("MODE") == "0660" for rule in rules)
    usb = {(r["ATTR{idVendor}"], r["ATTR{idProduct}"]) for r in rules if r.get("SUBSYSTEM") == "usb"}
    assert usb == CORAL_USB_IDS
    assert any(r.get("SUBSYSTEM") == "apex" and r.get("KERNEL", "").startswith("apex_") for r in rules)
