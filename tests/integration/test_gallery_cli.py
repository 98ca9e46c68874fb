"""`edge-camera gallery ...` and `edge-camera identify` through the real command line: real certificates
(valid now, since the commands read the real clock), a real gate, signed bundles, real photographs.

The machine's clock may not be NTP-synchronised, so the gate's clock-synchronisation source is replaced
by a synchronised one (as a fake camera replaces a camera); one test keeps the refusal it then gives.
The model: the tiny TFLite model of tests/support/tiny_tflite.py where only the plumbing matters,
MobileFaceNet float32 from ../shared where recognition does.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edge.app import gallery_commands
from edge.app.cli import main
from edge.identify.bundle import BUNDLE_DIR
from edge.identify.gallery import GALLERY_FILE, ConsentRecord, Enrollment, Gallery, GalleryFile
from edge.policy.clock import ClockState
from edge.trust.model_bundle import ARCFACE_TEMPLATE_112, DESCRIPTOR_FILE, MODEL_FILE, Descriptor, SignedBundle, model_sha256
from support.data import SHARED_IMAGES
from support.pki import Device, Pki, grant
from support.tiny_tflite import tiny_embedding_model

DAY = dt.timedelta(days=1)
IDENTIFIED = re.compile(r"face \d+: box \[[^]]*\] ([0-9a-f]{32}) score (\d\.\d\d)")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create(now())


@pytest.fixture(autouse=True)
def synchronised_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gallery_commands, "clock_sync_source",
                        lambda: lambda: ClockState(True, "synchronised (test)"))


def deploy(tmp_path: Path, pki: Pki, model: bytes | None = None, signer: Pki | None = None,
           **grant_kwargs: object) -> tuple[Device, Path]:
    """A provisioned device (certificate valid now, fresh CRL), its configuration and a signed bundle."""
    from edge.trust.device_key import build_csr, load_or_create_device_key

    state = tmp_path / "state"
    key = load_or_create_device_key(state)
    cert = pki.issue(build_csr(key, "cam-1"), grant(**grant_kwargs), now=now())  # type: ignore[arg-type]
    device = Device(state, pki, cert)
    device.install()
    (state / "installed-crl.pem").write_bytes(pki.crl(now()).public_bytes(serialization.Encoding.PEM))
    config = tmp_path / "edge-camera.toml"
    config.write_text(f'[policy]\nstate_dir = "{state}"\ntrust_anchor = "trust-anchor.pem"\n'
                      f'certificate = "device.pem"\ncrl = "installed-crl.pem"\n')
    model = model or tiny_embedding_model()
    descriptor = Descriptor("test", model_sha256(model), 112, 1 / 128, -127.5 / 128, ARCFACE_TEMPLATE_112, 128,
                            "cosine", 0.42)
    by = signer or pki
    SignedBundle.build(model, descriptor, by.ca, by.ca_key).write(state / BUNDLE_DIR)
    return device, config


def consent_flags(expires: dt.timedelta = 365 * DAY) -> list[str]:
    return ["--consent-ref", "form-42", "--consented-at", (now() - DAY).date().isoformat(),
            "--collected-by", "installer", "--purpose", "tell who is at the door",
            "--expires", (now() + expires).date().isoformat()]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """In this process: for commands refused before any model runs, and for the gallery's erasure."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# Commands that run the models configure the process (native stderr on a pipe, thread counts), as an
# entry point does: they run in a process of their own, with the synchronised clock source.
SYNCHRONISED_CLI = (
    "import sys\n"
    "from edge.app import gallery_commands\n"
    "from edge.app.cli import main\n"
    "from edge.policy.clock import ClockState\n"
    "gallery_commands.clock_sync_source = lambda: lambda: ClockState(True, 'synchronised (test)')\n"
    "sys.exit(main(sys.argv[1:]))\n")


def run_models(*argv: str) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-c", SYNCHRONISED_CLI, *argv], capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout, result.stderr


def enrol(capsys: pytest.CaptureFixture[str] | None, config: Path, person: str, *photos: str,
          extra: tuple[str, ...] = (), consent: list[str] | None = None) -> tuple[int, str, str]:
    """Enrol in this process when `capsys` is given (a refusal before any model runs), else in its own."""
    photo_flags = [item for photo in photos for item in ("--photo", str(SHARED_IMAGES / photo))]
    argv = ("gallery", "enrol", "--config", str(config), "--person", person, *photo_flags,
            *(consent_flags() if consent is None else consent), *extra)
    return run(capsys, *argv) if capsys is not None else run_models(*argv)


def audit_events(device: Device) -> list[str]:
    return [json.loads(line)["event"] for line in (device.state_dir / "audit.log").read_text().splitlines()]


def gallery_people(device: Device) -> tuple[str, ...]:
    return GalleryFile(device.state_dir / GALLERY_FILE).load().people()


# --- the gate decides: refusals ---------------------------------------------------------------------------

@pytest.mark.parametrize("grant_kwargs, words", [
    ({"capabilities": ("detection",)}, "not granted by the certificate (detection only)"),
    ({"tags": ("police",)}, "law-enforcement"),
    ({"tags": ("Public Space",)}, "public space"),
])
def test_no_grant_no_enrolment_and_no_identify(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                                               shared_images: Path, grant_kwargs: dict[str, object],
                                               words: str) -> None:
    device, config = deploy(tmp_path, pki, **grant_kwargs)
    code, _, err = enrol(capsys, config, "p-ann", "fr_obama.jpg")
    assert code == 8 and "the policy gate does not grant identification" in err and words in err, err
    code, out, err = run(capsys, "identify", "--config", str(config), str(shared_images / "fr_obama.jpg"))
    assert code == 8 and words in err and out == ""
    assert not (device.state_dir / GALLERY_FILE).exists()


def test_revoked_or_expired_certificate_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   shared_images: Path) -> None:
    pki = Pki.create(now())
    device, config = deploy(tmp_path / "revoked", pki)
    pki.revoke(device.cert, now())
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl(now()).public_bytes(serialization.Encoding.PEM))
    code, _, err = run(capsys, "identify", "--config", str(config), str(shared_images / "fr_obama.jpg"))
    assert code == 8 and "revoked" in err, err
    expired, config = deploy(tmp_path / "expired", pki)
    expired.install(pki.issue(_csr(expired), grant(), now=now() - 400 * DAY, validity=30 * DAY))
    code, _, err = enrol(capsys, config, "p-ann", "fr_obama.jpg")
    assert code == 8 and "expired" in err, err


def _csr(device: Device) -> bytes:
    from edge.trust.device_key import build_csr, load_device_key

    return build_csr(load_device_key(device.state_dir / "device-key.pem"), "cam-1")


def test_an_unsynchronised_clock_keeps_identification_off(tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gallery_commands, "clock_sync_source",
                        lambda: lambda: ClockState(False, "kernel NTP status: not synchronised"))
    _, config = deploy(tmp_path, pki)
    code, _, err = enrol(capsys, config, "p-ann", "fr_obama.jpg")
    assert code == 8 and "clock is not synchronised" in err


# --- consent, source, bundle and gallery refusals ------------------------------------------------------------

@pytest.mark.parametrize("consent, extra, words", [
    (consent_flags()[:6], (), "no enrolment without consent: --purpose, --expires missing"),
    (consent_flags(expires=3 * 366 * DAY), (), "three years"),
    (consent_flags(), ("--source", "Mugshot_Database"), "law-enforcement"),
    (consent_flags(), ("--source", "pоlice"), "not a gallery source"),  # Cyrillic 'о'
    (consent_flags(), ("--source", "web-scrape"), "not a gallery source"),
    (consent_flags(), ("--person", "Ann Smith"), "not valid"),
    (consent_flags()[:-1] + ["next year"], (), "--expires: 'next year' is not a date"),
])
def test_consent_and_source_refusals(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                                     shared_images: Path, consent: list[str], extra: tuple[str, ...],
                                     words: str) -> None:
    device, config = deploy(tmp_path, pki)
    code, out, err = enrol(capsys, config, "p-ann", "fr_obama.jpg", extra=extra, consent=consent)
    assert code == (2 if "is not a date" in words else 8) and words in err, err
    assert not (device.state_dir / GALLERY_FILE).exists()


@pytest.mark.parametrize("tamper, words", [
    ("model", "model was altered"),
    ("descriptor", "altered after signing"),
    ("other-ca", "signed by another CA"),
])
def test_tampered_or_foreign_bundle_is_refused(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                                               shared_images: Path, tamper: str, words: str) -> None:
    device, config = deploy(tmp_path, pki, signer=Pki.create(now()) if tamper == "other-ca" else None)
    bundle = device.state_dir / BUNDLE_DIR
    if tamper == "model":
        (bundle / MODEL_FILE).write_bytes((bundle / MODEL_FILE).read_bytes() + b"\0")
    elif tamper == "descriptor":
        text = (bundle / DESCRIPTOR_FILE).read_text()
        (bundle / DESCRIPTOR_FILE).write_text(text.replace('"match_threshold":0.42', '"match_threshold":0.2'))
    code, _, err = enrol(capsys, config, "p-ann", "fr_obama.jpg")
    assert code == 3 and words in err, err
    code, _, err = run(capsys, "identify", "--config", str(config), str(shared_images / "fr_obama.jpg"))
    assert code == 3 and words in err
    assert "identification-bundle-refused" in audit_events(device)
    assert not (device.state_dir / GALLERY_FILE).exists()


def test_tampered_gallery_is_refused_and_audited_then_erased(tmp_path: Path, pki: Pki,
                                                             capsys: pytest.CaptureFixture[str],
                                                             shared_images: Path) -> None:
    device, config = deploy(tmp_path, pki)
    assert enrol(None, config, "p-ann", "fr_obama.jpg")[0] == 0
    path = device.state_dir / GALLERY_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    code, out, err = run_models("identify", "--config", str(config), str(shared_images / "fr_obama1.jpg"))
    assert code == 8 and "fails to decrypt" in err, (out, err)
    code, _, err = run(capsys, "gallery", "list", "--config", str(config))
    assert code == 8 and "fails to decrypt" in err
    assert "gallery-refused" in audit_events(device)
    code, out, _ = run(capsys, "gallery", "erase", "--all", "--config", str(config))
    assert code == 0 and "could not be read to count" in out
    assert not path.exists() and "gallery-erase-all" in audit_events(device)


# --- photographs ----------------------------------------------------------------------------------------------

def test_photographs_that_are_refused(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                                      shared_images: Path) -> None:
    device, config = deploy(tmp_path, pki)
    blurred = tmp_path / "blurred.png"
    image = cv2.imread(str(shared_images / "fr_obama.jpg"))
    cv2.imwrite(str(blurred), cv2.GaussianBlur(image, (0, 0), max(image.shape[:2]) / 150))
    headpose = shared_images.parent / "headpose"
    labels = json.loads((headpose / "labels.json").read_text())
    turned = max(labels, key=lambda name: abs(labels[name]["yaw"]))
    cases = [(str(shared_images / "mtcnn_no_faces.jpg"), "no face was found"),
             (str(shared_images / "fr_two_people.jpg"), "2 faces were found"),
             (str(shared_images / "mtcnn_ivan.jpg"), "too small"),
             (str(blurred), "blurred"),
             (str(headpose / turned), "turned")]
    for photo, words in cases:
        code, _, err = enrol(None, config, "p-ann", "fr_obama.jpg", photo)
        assert code == 8 and f"photograph {photo} refused: " in err and words in err, (photo, err)
    assert not (device.state_dir / GALLERY_FILE).exists()  # one bad photograph: nothing enrolled


# --- the whole path with MobileFaceNet ----------------------------------------------------------------------

def test_enrol_identify_list_withdraw_erase(tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str],
                                            shared_images: Path, shared_models: Path) -> None:
    device, config = deploy(tmp_path, pki, model=(shared_models / "mobilefacenet_float32.tflite").read_bytes())
    code, out, _ = enrol(None, config, "p-obama", "fr_obama.jpg", "fr_obama2.jpg")
    assert code == 0 and "from 2 photograph(s)" in out
    obama = re.search(r"label ([0-9a-f]{32})", out).group(1)  # type: ignore[union-attr]
    code, out, _ = enrol(None, config, "p-biden", "fr_biden.jpg")
    biden = re.search(r"label ([0-9a-f]{32})", out).group(1)  # type: ignore[union-attr]
    assert obama != biden and "p-obama" not in obama

    code, out, _ = run_models("identify", "--config", str(config), *(str(shared_images / name) for name in
                       ("fr_obama1.jpg", "fr_biden2.jpg", "mtcnn_ivan.jpg", "fr_obama_and_biden.jpg")))
    assert code == 0, out
    blocks = out.split(str(shared_images))[1:]
    assert [m.group(1) for m in IDENTIFIED.finditer(blocks[0])] == [obama]
    assert [m.group(1) for m in IDENTIFIED.finditer(blocks[1])] == [biden]
    # The running worker's gates ([identification] min_face_px 80): Ivan's 64-pixel face is not scored, and why.
    assert "not scored: the face is too small" in blocks[2] and not IDENTIFIED.search(blocks[2])
    assert sorted(m.group(1) for m in IDENTIFIED.finditer(blocks[3])) == sorted([obama, biden])
    assert "p-obama" not in out and "p-biden" not in out  # labels only

    code, out, _ = run(capsys, "gallery", "list", "--config", str(config))
    assert code == 0 and f"p-obama  label {obama}  purpose 'tell who is at the door'  expires" in out
    assert "2 person(s), 3 enrolment(s)" in out
    assert run(capsys, "gallery", "withdraw", "--config", str(config), "--person", "p-biden")[0] == 0
    code, out, _ = run_models("identify", "--config", str(config), str(shared_images / "fr_biden2.jpg"))
    assert "unknown" in out and biden not in out
    assert run(capsys, "gallery", "erase", "--all", "--config", str(config))[0] == 0
    assert gallery_people(device) == ()
    events = audit_events(device)
    assert {"gallery-enroll", "gallery-withdraw", "gallery-erase-all"} <= set(events)
    log = (device.state_dir / "audit.log").read_text()
    assert "door" not in log and "fr_obama" not in log  # records name pseudonyms, not purposes or photographs
    assert run(capsys, "audit", "verify", "--config", str(config))[0] == 0


def test_identify_applies_the_workers_gates_and_says_why_a_face_was_not_scored(tmp_path: Path, pki: Pki,
                                                                               shared_images: Path) -> None:
    """Turned or small faces are not scored, as the running service would not try them; the limits are the
    configuration's own `[identification]` section, so raising min_face_px changes the answer."""
    device, config = deploy(tmp_path, pki)
    headpose = shared_images.parent / "headpose"
    labels = json.loads((headpose / "labels.json").read_text())
    turned = max(labels, key=lambda name: abs(labels[name]["yaw"]))
    code, out, err = run_models("identify", "--config", str(config), str(shared_images / "fr_obama1.jpg"),
                                str(headpose / turned), str(shared_images / "mtcnn_ivan.jpg"))
    assert code == 0, err
    obama, turned_out, ivan = out.split(str(headpose.parent))[1:]
    assert "unknown" in obama and "not scored" not in obama  # nobody enrolled: scored, and matched nobody
    assert "not scored: the face is turned (yaw" in turned_out and "unknown" not in turned_out
    assert "not scored: the face is too small (64 pixels wide, at least 80 needed)" in ivan
    config.write_text(config.read_text() + "\n[identification]\nmin_face_px = 4000\n")
    code, out, _ = run_models("identify", "--config", str(config), str(shared_images / "fr_obama1.jpg"))
    assert code == 0 and "at least 4000 needed" in out and "unknown" not in out
    config.write_text(config.read_text().replace("4000", "0"))
    code, _, err = run_models("identify", "--config", str(config), str(shared_images / "fr_obama1.jpg"))
    assert code == 2 and "min_face_px" in err and "Traceback" not in err


def test_gallery_erase_works_without_identification(tmp_path: Path, pki: Pki,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A detection-only device (law-enforcement tag) can still erase what an earlier grant enrolled."""
    device, config = deploy(tmp_path, pki, tags=("police",))
    stamp = now()
    vector = np.eye(128, dtype=np.float32)[3]
    consent = ConsentRecord("form-7", stamp - dt.timedelta(days=1), "manager", "door")
    GalleryFile(device.state_dir / GALLERY_FILE, device_id="cam-1").save(Gallery((
        Enrollment("p-1", vector, consent, stamp, stamp + dt.timedelta(days=30), "household"),
        Enrollment("p-2", vector, consent, stamp - dt.timedelta(days=40), stamp - dt.timedelta(days=1), "household"))))
    assert run(capsys, "gallery", "list", "--config", str(config))[1].count("person(s)") == 1
    assert "2 person(s)" in run(capsys, "gallery", "list", "--config", str(config))[1]
    code, out, _ = run(capsys, "gallery", "purge", "--config", str(config))
    assert code == 0 and "p-2" in out
    code, out, _ = run(capsys, "gallery", "erase", "--config", str(config), "--person", "p-1")
    assert code == 0 and "erased 1 enrolment(s) of 'p-1'" in out
    assert gallery_people(device) == ()
    assert run(capsys, "audit", "verify", "--config", str(config))[0] == 0
    log = (device.state_dir / "audit.log").read_text()
    assert "gallery-erase" in log and "gallery-retention-purge" in log
