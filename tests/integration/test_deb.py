"""The device package: built for this machine's architecture, checked by lintian, listed, and installed
into a temporary root where its maintainer scripts really run.

What is exercised, honestly:
- `bash .ci/deb/build` builds the .deb with dpkg-deb, downloading the wheelhouse from PyPI for this
  machine's architecture (x86_64 tags on amd64, aarch64 on arm64);
- `lintian` on it: no error, and no warning that the package's overrides file does not justify;
- `dpkg --root=<tmp> --force-script-chrootless` installs it into an empty dpkg database, so dpkg
  runs postinst, prerm and postrm itself, with DPKG_ROOT pointing at the temporary root. The scripts
  run on this machine's tools: systemd-sysusers and systemd-tmpfiles with --root, deb-systemd-helper
  (which honours DPKG_ROOT), and /usr/bin/python3 with the system's numpy for the virtual
  environment. The wheelhouse folder that matches this machine's Python (cp311 on Bookworm) is
  installed with --no-index and checked by `python -m edge.vision.compat`, which imports the runtime;
- what DPKG_ROOT deliberately leaves out: systemctl and udevadm (the running system's), so starting
  the service is for the on-device tests (hw-tests/). This machine has no python3-opencv, so the
  detector itself is not run from the package's environment (.ci/packaging runs the wheels).
Dependencies are forced (--force-depends): the temporary root has no python3 package of its own.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".ci" / "deb" / "build"
OVERRIDES = REPO / ".ci" / "deb" / "lintian-overrides"
SYSTEMD = REPO / "systemd"
PACKAGE = "edge-camera"
LIB = Path("usr/lib/edge-camera")
CONFIG = Path("etc/edge-camera/edge-camera.toml")
STATE = Path("var/lib/edge-camera")
SYSTEM_PYTHON = Path("/usr/bin/python3")
PROGRAMS = ("edge-camera", "edge-provision", "edge-camera-first-boot")
# Files the package installs from systemd/ (repository name -> path in the package).
FROM_SYSTEMD = {
    "edge-camera.service": "usr/lib/systemd/system/edge-camera.service",
    "edge-camera-firstboot.service": "usr/lib/systemd/system/edge-camera-firstboot.service",
    "60-edge-camera-coral.rules": "usr/lib/udev/rules.d/60-edge-camera-coral.rules",
    "edge-camera.sysusers": "usr/lib/sysusers.d/edge-camera.conf",
    "edge-camera.tmpfiles": "usr/lib/tmpfiles.d/edge-camera.conf",
    "edge-camera.toml": "usr/share/edge-camera/edge-camera.toml",
}
# Per target Python: the runtime its wheelhouse folder must carry (docs/package.md, the runtime matrix).
RUNTIME_WHEEL = {"cp311": "tflite_runtime-2.14.0-", "cp313": "ai_edge_litert-"}
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
BUILD_TIMEOUT_S = 600
TOOL_TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def run(command: list[str], timeout: float = TOOL_TIMEOUT_S, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def required_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `bash .ci/bootstrap test` installs it (apt-get install {name})")
    return path


@pytest.fixture(scope="module")
def arch() -> str:
    return run([required_tool("dpkg"), "--print-architecture"]).stdout.strip()


@pytest.fixture(scope="module")
def version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory, arch: str, version: str) -> Path:
    """The package for this machine, built once for the module (needs PyPI for the wheelhouse)."""
    required_tool("dpkg-deb")
    outdir = tmp_path_factory.mktemp("deb")
    env = {**os.environ, "EDGE_DEB_OUTDIR": str(outdir)}
    result = run(["bash", str(BUILD), sys.executable], timeout=BUILD_TIMEOUT_S, env=env)
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == outdir / f"{PACKAGE}_{version}_{arch}.deb", result.stderr
    return path


def contents(deb: Path) -> dict[str, str]:
    """Path (without the leading ./) -> the mode string dpkg-deb -c shows."""
    listing = run(["dpkg-deb", "-c", str(deb)]).stdout
    found = {}
    for line in listing.splitlines():
        fields = line.split()
        path = fields[5].removeprefix("./")
        found[path.rstrip("/")] = fields[0]
    return found


def control(deb: Path) -> dict[str, str]:
    text = run(["dpkg-deb", "-f", str(deb)]).stdout
    return {k: v.strip() for k, v in re.findall(r"^(\S+):(.*(?:\n .*)*)", text, flags=re.MULTILINE)}


def test_control_fields(deb: Path, arch: str, version: str) -> None:
    fields = control(deb)
    assert (fields["Package"], fields["Version"], fields["Architecture"]) == (PACKAGE, version, arch)
    depends = [d.strip() for d in fields["Depends"].split(",")]
    for needed in ("python3-numpy", "python3-opencv", "python3-venv", "systemd"):
        assert any(d.split()[0] == needed for d in depends), f"Depends lacks {needed}: {depends}"
    assert ("python3-picamera2" in depends) == (arch == "arm64"), depends
    # The example configuration is not a dpkg conffile: postinst copies it, so no upgrade ever prompts.
    members = set(re.findall(r"^ +\d+ bytes, +\d+ lines +\*? *(\S+)", run(["dpkg-deb", "--info", str(deb)]).stdout,
                             flags=re.MULTILINE))
    assert members == {"control", "md5sums", "postinst", "prerm", "postrm"}, members


def test_contents(deb: Path, arch: str) -> None:
    paths = contents(deb)
    for program in PROGRAMS:
        assert paths[f"usr/bin/{program}"].startswith("-rwxr-xr-x"), program
    for installed in FROM_SYSTEMD.values():
        assert paths[installed].startswith("-rw-r--r--"), installed
    for doc in ("copyright", "changelog.gz", "README.md", "provisioning.md", "package.md"):
        assert f"usr/share/doc/{PACKAGE}/{doc}" in paths
    assert f"usr/share/lintian/overrides/{PACKAGE}" in paths
    assert not any(p.startswith("etc/") for p in paths), "nothing under /etc: postinst copies the example"

    wheelhouse = f"{LIB}/wheelhouse"
    firmware = sorted(p.rsplit("/", 1)[1] for p in paths if p.startswith(f"{wheelhouse}/firmware/") and p.endswith(".whl"))
    assert [w.split("-")[0] for w in firmware] == ["edge_camera", "edge_provision"], firmware
    for tag, runtime in RUNTIME_WHEEL.items():
        wheels = [p.rsplit("/", 1)[1] for p in paths if p.startswith(f"{wheelhouse}/{tag}/") and p.endswith(".whl")]
        assert f"{wheelhouse}/{tag}/requirements" in paths
        names = {w.split("-")[0].lower() for w in wheels}
        assert {"cryptography", "paho_mqtt", "pyasn1"} <= names, (tag, names)
        assert any(w.startswith(runtime) for w in wheels), (tag, wheels)
        # numpy and OpenCV come from the OS: no wheel may shadow them.
        assert not any(n == "numpy" or n.startswith("opencv") for n in names), (tag, names)
        # Binary wheels are for the package's architecture and the folder's Python.
        for wheel in wheels:
            python_tag, abi, platform = wheel.removesuffix(".whl").split("-")[-3:]
            if platform != "any":
                assert platform.endswith(MACHINE[arch]), wheel
                assert python_tag in (tag, "cp37", "cp38", "cp39", "cp310", "cp311") and abi in (tag, "abi3"), wheel


def test_installed_files_are_the_repositorys(deb: Path, tmp_path: Path) -> None:
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    for name, installed in FROM_SYSTEMD.items():
        assert (tmp_path / installed).read_bytes() == (SYSTEMD / name).read_bytes(), installed
    wrapper = (tmp_path / "usr/bin/edge-camera").read_text()
    assert 'exec "$program" "$@"' in wrapper and "/usr/lib/edge-camera/venv/bin/edge-camera" in wrapper


def test_lintian(deb: Path) -> None:
    lintian = required_tool("lintian")
    result = run([lintian, "--pedantic", "--info", str(deb)], check=False)
    findings = [line for line in result.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert not findings, "lintian:\n" + result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_override_is_justified() -> None:
    """Each override line follows a comment that says why (a blank line ends a justification)."""
    justified = False
    for line in OVERRIDES.read_text().splitlines():
        if not line.strip():
            justified = False
        elif line.startswith("#"):
            justified = True
        else:
            assert justified, f"lintian-overrides: '{line}' has no comment above it saying why"


def dpkg_root(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """dpkg on the temporary root, running the maintainer scripts outside a chroot with DPKG_ROOT set."""
    command = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
               f"--log={root / 'dpkg.log'}", *args]
    if os.geteuid() != 0:
        command = [required_tool("fakeroot"), *command, "--force-not-root"]
    return run(command, check=check)


def empty_root(root: Path) -> Path:
    admin = root / "var/lib/dpkg"
    for folder in ("info", "updates", "triggers"):
        (admin / folder).mkdir(parents=True)
    (admin / "status").touch()
    (admin / "available").touch()
    (root / "etc").mkdir()
    return root


def venvs(root: Path) -> list[Path]:
    return sorted(p for p in (root / LIB).glob("venv-*") if p.is_dir())


def python_tag() -> str:
    version = run([str(SYSTEM_PYTHON), "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"]).stdout.strip()
    if version not in RUNTIME_WHEEL:
        pytest.fail(f"{SYSTEM_PYTHON} is {version}; the package carries wheels for {sorted(RUNTIME_WHEEL)}")
    return version


def test_maintainer_scripts_in_a_temporary_root(deb: Path, tmp_path: Path, version: str) -> None:
    required_tool("systemd-sysusers")
    required_tool("deb-systemd-helper")
    root = empty_root(tmp_path / "root")
    tag = python_tag()

    # --- install: user, directories, example configuration, environment, units ---------------
    installed = dpkg_root(root, "-i", str(deb))
    assert "installed the example configuration" in installed.stdout
    passwd = (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    assert re.search(r"^edge-camera:x:\d+:\d+:.*:/var/lib/edge-camera:/usr/sbin/nologin$", passwd, re.MULTILINE)
    assert re.search(r"^video:x:\d+:(.*,)?edge-camera(,.*)?$", group, re.MULTILINE), group
    gid = next(int(line.split(":")[2]) for line in group.splitlines() if line.startswith("edge-camera:"))
    assert oct((root / STATE).stat().st_mode & 0o777) == "0o700"
    assert oct((root / "etc/edge-camera").stat().st_mode & 0o777) == "0o750"
    config = root / CONFIG
    assert config.read_bytes() == (SYSTEMD / "edge-camera.toml").read_bytes()
    assert (oct(config.stat().st_mode & 0o777), config.stat().st_uid, config.stat().st_gid) == ("0o640", 0, gid)
    for unit in ("edge-camera.service", "edge-camera-firstboot.service"):
        assert (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink(), unit

    link = root / LIB / "venv"
    first = venvs(root)
    assert len(first) == 1 and link.is_symlink() and os.readlink(link) == first[0].name
    assert first[0].name.startswith(f"venv-{version}.")
    python = link / "bin/python"
    report = run([str(python), "-m", "edge.vision.compat"]).stdout
    runtime = "tflite-runtime 2.14.0" if tag == "cp311" else "ai-edge-litert"
    assert report.startswith(f"edge-camera runtime: {runtime}"), report
    # numpy is the system's; cryptography (and the rest) the wheelhouse's, in the environment.
    where = run([str(python), "-c", "import numpy, cryptography; print(numpy.__file__); print(cryptography.__file__)"])
    numpy_file, cryptography_file = where.stdout.split()
    assert numpy_file.startswith("/usr/lib/python3/dist-packages/"), numpy_file
    assert cryptography_file.startswith(f"{link}/lib/"), cryptography_file
    for program in PROGRAMS:
        assert "usage:" in run([str(link / "bin" / program), "--help"]).stdout, program

    # --- upgrade (the same version again): a local configuration survives, a new environment
    # replaces the old one, which goes only after the switch -----------------------------------
    config.write_text(config.read_text().replace('id = "cam-lobby-1"', 'id = "cam-local-edit"'))
    dpkg_root(root, "-i", str(deb))
    assert 'id = "cam-local-edit"' in config.read_text()
    second = venvs(root)
    assert len(second) == 1 and second != first and os.readlink(link) == second[0].name

    # --- a failed build keeps the previous environment: the runtime's wheel is gone -------------
    runtime_wheel = next((root / LIB / "wheelhouse" / tag).glob(f"{RUNTIME_WHEEL[tag]}*.whl"))
    saved = runtime_wheel.read_bytes()
    runtime_wheel.unlink()
    postinst = root / "var/lib/dpkg/info/edge-camera.postinst"
    failed = run(["sh", str(postinst), "configure", version], env={**os.environ, "DPKG_ROOT": str(root)}, check=False)
    assert failed.returncode != 0
    assert "stays in use" in failed.stdout + failed.stderr
    assert venvs(root) == second and os.readlink(link) == second[0].name
    assert run([str(python), "-m", "edge.vision.compat"]).returncode == 0
    runtime_wheel.write_bytes(saved)

    # --- remove: the environments go; the configuration and the device's state stay -------------
    (root / STATE / "device-key.pem").write_text("stand-in for the device key\n")
    dpkg_root(root, "-r", PACKAGE)
    assert not (root / LIB).exists()
    assert not (root / "usr/bin/edge-camera").exists()
    assert config.exists() and (root / STATE / "device-key.pem").exists()
    assert "edge-camera:" in (root / "etc/passwd").read_text()

    # --- purge: the configuration and the state directory go (the only step that deletes them) --
    dpkg_root(root, "-P", PACKAGE)
    assert not (root / "etc/edge-camera").exists()
    assert not (root / STATE).exists()
    assert "edge-camera:" in (root / "etc/passwd").read_text(), "system users stay after a purge"
