"""First boot: the device id from the Pi's serial number or the machine id, then the real key and CSR."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edge.trust.certificates import common_name, load_csr
from edge.trust.device_key import DEVICE_KEY_FILE
from provisioning.first_boot import (
    APP_ID,
    DEVICE_ID_FILE,
    EXIT_CONFIG,
    NoDeviceId,
    app_specific_id,
    device_id_from,
    main,
)

PI_MODEL = b"Raspberry Pi 4 Model B Rev 1.4\0"
PI_SERIAL = b"10000000ABCDEF12\0"
MACHINE_ID = b"3d1219c7c4c5404aaa1f6d2a48adfda4\n"


def device_tree(directory: Path, model: bytes, serial: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "model").write_bytes(model)
    (directory / "serial-number").write_bytes(serial)
    return directory


def test_a_pi_is_named_by_its_serial_number() -> None:
    assert device_id_from(PI_MODEL, PI_SERIAL, MACHINE_ID) == "pi-10000000abcdef12"


def test_elsewhere_the_app_specific_machine_id_names_it() -> None:
    expected = "edge-" + app_specific_id(MACHINE_ID.decode().strip())
    assert device_id_from(None, None, MACHINE_ID) == expected
    # A device tree that is not a Pi's, or a Pi without a real serial number, falls back too.
    assert device_id_from(b"Some other board\0", PI_SERIAL, MACHINE_ID) == expected
    assert device_id_from(PI_MODEL, b"0000000000000000\0", MACHINE_ID) == expected
    assert device_id_from(PI_MODEL, b"not hex\0", MACHINE_ID) == expected
    # Never the raw machine id (machine-id(5): it is confidential).
    assert MACHINE_ID.decode().strip() not in expected


def test_app_specific_id_is_systemds() -> None:
    """The same value `systemd-id128 machine-id --app-specific=` prints, so an installer can check it on the device."""
    tool = shutil.which("systemd-id128")
    machine_id = Path("/etc/machine-id")
    if tool is None or not machine_id.is_file() or len(machine_id.read_text().strip()) != 32:
        pytest.skip("needs systemd-id128 and an initialised /etc/machine-id to compare with")
    printed = subprocess.run([tool, "machine-id", f"--app-specific={APP_ID}"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
    assert app_specific_id(machine_id.read_text().strip()) == printed.replace("-", "")


@pytest.mark.parametrize("machine_id", [None, b"", b"uninitialized\n", b"0" * 32 + b"\n", b"abc\n"])
def test_nothing_usable_is_a_clear_refusal(machine_id: bytes | None) -> None:
    with pytest.raises(NoDeviceId, match="no Raspberry Pi serial number"):
        device_id_from(None, None, machine_id)


def test_first_boot_leaves_key_request_and_id_for_the_installer(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tree = device_tree(tmp_path / "dt", PI_MODEL, PI_SERIAL)
    state = tmp_path / "state"
    assert main(["--state-dir", str(state), "--device-tree", str(tmp_path / "absent"), "--device-tree", str(tree),
                 "--machine-id", str(tmp_path / "no-machine-id")]) == 0
    device_id = (state / DEVICE_ID_FILE).read_text().strip()
    assert device_id == "pi-10000000abcdef12"
    assert (state / DEVICE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    csr = load_csr((state / f"{device_id}.csr").read_bytes())
    assert csr.is_signature_valid and common_name(csr.subject) == device_id
    assert "use it as [device] id" in capsys.readouterr().out


def test_after_a_factory_reset_the_stale_request_is_replaced(tmp_path: Path) -> None:
    tree = device_tree(tmp_path / "dt", PI_MODEL, PI_SERIAL)
    state = tmp_path / "state"
    args = ["--state-dir", str(state), "--device-tree", str(tree)]
    assert main(args) == 0
    old_request = (state / "pi-10000000abcdef12.csr").read_bytes()
    (state / DEVICE_KEY_FILE).unlink()  # what factory-reset does to the key
    assert main(args) == 0
    assert (state / "pi-10000000abcdef12.csr").read_bytes() != old_request


def test_no_id_exits_78_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    bad = tmp_path / "machine-id"
    bad.write_text("uninitialized\n")
    assert main(["--state-dir", str(state), "--device-tree", str(tmp_path / "absent"),
                 "--machine-id", str(bad)]) == EXIT_CONFIG
    assert not state.exists()
    err = capsys.readouterr().err
    assert "cannot name this device" in err and "Traceback" not in err


def test_print_id_only_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_bytes(MACHINE_ID)
    assert main(["--device-tree", str(tmp_path / "absent"), "--machine-id", str(machine_id), "--print-id",
                 "--state-dir", str(tmp_path / "state")]) == 0
    assert capsys.readouterr().out.strip() == device_id_from(None, None, MACHINE_ID)
    assert not (tmp_path / "state").exists()
