"""First boot on the device: derive its id from the hardware, then `edge-provision device-key`.

Run once by edge-camera-firstboot.service (its condition: no device key yet).
It leaves in the state directory what the installer needs: the device key
(0600, never leaves the device), `<id>.csr` to take away for signing, and
`device-id`, the id to put in the configuration's `[device] id` (it must equal
the certificate's common name).

Where the id comes from:
- a Raspberry Pi: `pi-` and the SoC serial number from the device tree, as
  printed on the board's label by `cat /proc/device-tree/serial-number`;
- anything else: `edge-` and the machine id hashed for this application, as
  machine-id(5) asks (the raw id is confidential). It is the value of
  `systemd-id128 machine-id --app-specific=` with APP_ID, so it can be
  checked by hand on the device.
Either way the result must pass the grant's device-id rule
(`edge.trust.grant.check_device_id`), the only definition of a valid id.

Exit codes: those of `edge-provision device-key` (docs/provisioning.md), and
78 (EX_CONFIG) when no id can be derived: a permanent fault, so the unit does
not retry it.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.trust.device_key import device_key_path
from edge.trust.grant import GrantError, check_device_id
from provisioning import cli

PROG = "edge-camera-first-boot"
EXIT_CONFIG = 78  # sysexits.h EX_CONFIG: permanent, systemd does not restart (RestartPreventExitStatus=78)
DEFAULT_STATE_DIR = Path("/var/lib/edge-camera")
# /proc/device-tree is a link to the second; either may be absent (not a device-tree machine, or a container).
DEVICE_TREES = (Path("/proc/device-tree"), Path("/sys/firmware/devicetree/base"))
MACHINE_ID = Path("/etc/machine-id")
# This application's key for sd_id128_get_machine_app_specific(3); fixed forever, or every id changes.
APP_ID = "378c59fd74e24e778741e468690313d6"
PI_PREFIX = "pi-"
HOST_PREFIX = "edge-"
PI_MODEL_PREFIX = "Raspberry Pi"
DEVICE_ID_FILE = "device-id"
ID128_HEX = 32
HEX_DIGITS = frozenset("0123456789abcdef")


class NoDeviceId(Exception):
    """Neither a Raspberry Pi serial number nor a usable machine id."""


def _text(raw: bytes | None) -> str:
    """Device-tree strings end in NUL; files end in a newline."""
    return "" if raw is None else raw.decode("ascii", "replace").strip("\0 \t\r\n")


def pi_serial(model: bytes | None, serial: bytes | None) -> str | None:
    """The serial number, lower-case hex, when the device tree says this is a Raspberry Pi and has a real one."""
    if not _text(model).startswith(PI_MODEL_PREFIX):
        return None
    value = _text(serial).lower()
    if not value or not set(value) <= HEX_DIGITS or set(value) == {"0"}:
        return None
    return value


def app_specific_id(machine_id: str, app_id: str = APP_ID) -> str:
    """sd_id128_get_machine_app_specific(3): HMAC-SHA256 keyed by the machine id, cut to 128 bits, marked UUID v4."""
    digest = bytearray(hmac.new(bytes.fromhex(machine_id), bytes.fromhex(app_id), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def device_id_from(model: bytes | None, serial: bytes | None, machine_id: bytes | None) -> str:
    """The device id from what the hardware says; NoDeviceId if it says nothing usable."""
    serial_hex = pi_serial(model, serial)
    if serial_hex is not None:
        candidate = PI_PREFIX + serial_hex
    else:
        mid = _text(machine_id).lower()
        if len(mid) != ID128_HEX or not set(mid) <= HEX_DIGITS or set(mid) == {"0"}:
            raise NoDeviceId("no Raspberry Pi serial number in the device tree and no usable /etc/machine-id "
                             f"(found {mid[:40]!r})")
        candidate = HOST_PREFIX + app_specific_id(mid)
    try:
        return check_device_id(candidate)
    except GrantError as exc:
        raise NoDeviceId(str(exc)) from None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def read_hardware(device_trees: Sequence[Path], machine_id: Path) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(model, serial-number) from the first device tree that has a serial number, and the machine id."""
    for tree in device_trees:
        serial = _read(tree / "serial-number")
        if serial is not None:
            return _read(tree / "model"), serial, _read(machine_id)
    return None, None, _read(machine_id)


def _default_state_dir() -> Path:
    """systemd passes StateDirectory= as $STATE_DIRECTORY (colon-separated if several)."""
    given = os.environ.get("STATE_DIRECTORY", "")
    return Path(given.split(":")[0]) if given else DEFAULT_STATE_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="On first boot: derive the device id, create the device "
                                "key and a certificate request for the installer.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help=f"the camera service's state directory (default $STATE_DIRECTORY or {DEFAULT_STATE_DIR})")
    p.add_argument("--device-tree", type=Path, action="append", default=None,
                   help="where to read model and serial-number (default /proc/device-tree, then "
                        "/sys/firmware/devicetree/base)")
    p.add_argument("--machine-id", type=Path, default=MACHINE_ID, help=f"the machine id file (default {MACHINE_ID})")
    p.add_argument("--print-id", action="store_true", help="only print the device id, create nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    model, serial, machine_id = read_hardware(args.device_tree or DEVICE_TREES, args.machine_id)
    try:
        device_id = device_id_from(model, serial, machine_id)
    except NoDeviceId as exc:
        print(f"{PROG}: cannot name this device: {exc}. Set a machine id (systemd-machine-id-setup) "
              "or create the key by hand with 'edge-provision device-key'.", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_id:
        print(device_id)
        return 0
    state_dir = args.state_dir or _default_state_dir()
    csr = state_dir / f"{device_id}.csr"
    if not device_key_path(state_dir).exists() and csr.exists():
        csr.unlink()  # a request for a key that no longer exists (a factory reset) would only mislead
    code = cli.main(["device-key", "--state-dir", str(state_dir), "--device-id", device_id, "--out", str(csr)])
    if code != 0:
        return code
    tmp = state_dir / f".{DEVICE_ID_FILE}.tmp"
    tmp.write_text(device_id + "\n")
    os.replace(tmp, state_dir / DEVICE_ID_FILE)
    print(f"device id {device_id!r} written to {state_dir / DEVICE_ID_FILE}: use it as [device] id.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
