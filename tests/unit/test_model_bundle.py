"""The signed identification bundle: signed with a real provisioning CA, checked against the device's own chain.

Runs on the tiny TFLite model built in tests/support/tiny_tflite.py (no ../shared needed), and on
MobileFaceNet float32 from ../shared when it is there.
"""
from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edge.common.errors import ModelError
from edge.identify import IdentificationSession
from edge.identify.bundle import EVENT_BUNDLE_REFUSED, VerifiedBundle, verify_bundle
from edge.identify.embedding import FaceEmbedder
from edge.policy import Mode, PolicyGate
from edge.trust.audit import AuditLog, verify_log
from edge.trust.model_bundle import (
    ARCFACE_TEMPLATE_112,
    DESCRIPTOR_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    BundleError,
    Descriptor,
    SignedBundle,
    model_sha256,
)
from provisioning.cli import main as provision_main
from support.pki import NOW, Device, Pki, provision
from support.tiny_tflite import tiny_embedding_model


def descriptor_for(model: bytes, **changes: object) -> Descriptor:
    fields: dict[str, object] = dict(name="tiny", model_sha256=model_sha256(model), input_size=112,
                                     input_gain=1 / 128, input_offset=-127.5 / 128,
                                     alignment_template=ARCFACE_TEMPLATE_112, embedding_size=128, metric="cosine",
                                     match_threshold=0.42)
    fields.update(changes)
    return Descriptor(**fields)  # type: ignore[arg-type]


@pytest.fixture()
def device(tmp_path: Path) -> Device:
    pki = Pki.create()
    device = provision(tmp_path, pki)
    (device.state_dir / "installed-crl.pem").write_bytes(pki.crl().public_bytes(serialization.Encoding.PEM))
    return device


def signed(device: Device, directory: Path, model: bytes | None = None, pki: Pki | None = None) -> Path:
    model = model or tiny_embedding_model()
    signer = pki or device.pki
    SignedBundle.build(model, descriptor_for(model), signer.ca, signer.ca_key).write(directory)
    return directory


def refused(device: Device, directory: Path, words: str) -> None:
    audit = AuditLog(device.state_dir / "audit.log")
    with pytest.raises(BundleError, match=words):
        verify_bundle(directory, device.config, audit)
    last = json.loads((device.state_dir / "audit.log").read_text().splitlines()[-1])
    assert last["event"] == EVENT_BUNDLE_REFUSED, last
    assert words in last["data"]["reason"]
    assert verify_log(device.state_dir / "audit.log").ok


def session_for(device: Device) -> IdentificationSession:
    decision = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW).decide()
    assert decision.mode is Mode.IDENTIFICATION
    return IdentificationSession(decision.identification)  # type: ignore[arg-type]


def test_a_bundle_signed_by_the_devices_ca_verifies_and_runs(device: Device, tmp_path: Path) -> None:
    bundle = verify_bundle(signed(device, tmp_path / "b"), device.config, AuditLog(device.state_dir / "audit.log"))
    assert bundle.descriptor.name == "tiny" and bundle.model == tiny_embedding_model()
    embedder = FaceEmbedder(session_for(device), bundle)
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[:56] = 200
    vector = embedder.embed_aligned(crop)
    assert vector.shape == (128,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert vector[0] > 0 > vector[-1]  # the top rows are bright, the bottom dark: the model really ran
    assert "identification-bundle-accepted" in (device.state_dir / "audit.log").read_text()


def test_tampered_model_is_refused_and_audited(device: Device, tmp_path: Path) -> None:
    directory = signed(device, tmp_path / "b")
    model = bytearray((directory / MODEL_FILE).read_bytes())
    model[-1] ^= 1
    (directory / MODEL_FILE).write_bytes(bytes(model))
    refused(device, directory, "model was altered")


def test_tampered_descriptor_is_refused_and_audited(device: Device, tmp_path: Path) -> None:
    directory = signed(device, tmp_path / "b")
    text = json.loads((directory / DESCRIPTOR_FILE).read_text())
    text["match_threshold"] = 0.1  # a lower threshold: more people "recognised"
    (directory / DESCRIPTOR_FILE).write_text(json.dumps(text, sort_keys=True, separators=(",", ":")))
    refused(device, directory, "altered after signing")


def test_tampered_signature_is_refused(device: Device, tmp_path: Path) -> None:
    directory = signed(device, tmp_path / "b")
    (directory / SIGNATURE_FILE).write_bytes(b"\x30\x06\x02\x01\x01\x02\x01\x01")
    refused(device, directory, "signature does not verify")


def test_bundle_signed_by_another_ca_is_refused(device: Device, tmp_path: Path) -> None:
    other = Pki.create()
    refused(device, signed(device, tmp_path / "b", pki=other), "signed by another CA")


def test_model_and_descriptor_of_two_bundles_do_not_mix(device: Device, tmp_path: Path) -> None:
    """A validly signed descriptor with another (also valid) model: the hash gives it away."""
    first = signed(device, tmp_path / "a")
    second = signed(device, tmp_path / "b", model=tiny_embedding_model(112, 64))
    (first / MODEL_FILE).write_bytes((second / MODEL_FILE).read_bytes())
    refused(device, first, "model was altered")


def test_missing_file_and_no_installed_ca(device: Device, tmp_path: Path) -> None:
    directory = signed(device, tmp_path / "b")
    (directory / SIGNATURE_FILE).unlink()
    refused(device, directory, "has no descriptor.sig")
    directory = signed(device, tmp_path / "c")
    (device.state_dir / "device.pem").write_bytes(device.cert.public_bytes(serialization.Encoding.PEM))  # no CA
    refused(device, directory, "no CA certificate is installed")


@pytest.mark.parametrize("changes, words", [
    ({"input_size": 8}, "input_size"),
    ({"metric": "euclidean"}, "metric"),
    ({"match_threshold": 1.5}, "match_threshold"),
    ({"alignment_template": ARCFACE_TEMPLATE_112[:4]}, "five points|5 points"),
    ({"alignment_template": ((500.0, 1.0),) + ARCFACE_TEMPLATE_112[1:]}, "inside the model's input"),
    ({"model_sha256": "XYZ"}, "model_sha256"),
])
def test_descriptor_rules(changes: dict[str, object], words: str) -> None:
    with pytest.raises(BundleError, match=words):
        descriptor_for(tiny_embedding_model(), **changes)


def test_a_model_that_is_not_the_descriptors_shape_is_a_model_error(device: Device, tmp_path: Path) -> None:
    model = tiny_embedding_model(96, 128)
    directory = tmp_path / "b"
    SignedBundle.build(model, descriptor_for(model), device.pki.ca, device.pki.ca_key).write(directory)
    bundle = verify_bundle(directory, device.config)
    with pytest.raises(ModelError, match="not a face embedding model"):
        FaceEmbedder(session_for(device), bundle)


def test_mobilefacenet_from_a_signed_bundle_matches_its_file(shared_models: Path, device: Device,
                                                            tmp_path: Path) -> None:
    model = (shared_models / "mobilefacenet_float32.tflite").read_bytes()
    bundle: VerifiedBundle = verify_bundle(signed(device, tmp_path / "b", model=model), device.config)
    session = session_for(device)
    crop = np.random.default_rng(7).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    from_bundle = FaceEmbedder(session, bundle).embed_aligned(crop)
    from_file = FaceEmbedder(session, shared_models / "mobilefacenet_float32.tflite").embed_aligned(crop)
    assert np.allclose(from_bundle, from_file, atol=1e-5)


PASS = "a long enough test passphrase"


def test_edge_provision_model_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The installer's command signs with the CA's key; its output verifies against that CA only."""
    monkeypatch.setenv("EDGE_TEST_PASS", PASS)
    secret = ("--passphrase-env", "EDGE_TEST_PASS")
    assert provision_main(["init-root", "--dir", str(tmp_path / "root"), "--org", "Acme", *secret]) == 0
    assert provision_main(["init-ca", "--root-dir", str(tmp_path / "root"), "--dir", str(tmp_path / "ca"), "--org",
                           "Acme", "--root-passphrase-env", "EDGE_TEST_PASS", *secret]) == 0
    (tmp_path / "tiny.tflite").write_bytes(tiny_embedding_model())
    args = ["model-bundle", "--ca-dir", str(tmp_path / "ca"), "--model", str(tmp_path / "tiny.tflite"), *secret]
    capsys.readouterr()
    assert provision_main([*args, "--out", str(tmp_path / "bundle"), "--threshold", "0.5"]) == 0
    assert "identification bundle 'mobilefacenet' written" in capsys.readouterr().out
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "provisioning-ca.pem").read_bytes())
    descriptor = SignedBundle.read(tmp_path / "bundle").verify([ca])
    assert descriptor.match_threshold == 0.5 and descriptor.model_sha256 == model_sha256(tiny_embedding_model())
    with pytest.raises(BundleError, match="signed by another CA"):
        SignedBundle.read(tmp_path / "bundle").verify([Pki.create().ca])
    # Refusals: nothing signed, a plain sentence and the documented exit code.
    assert provision_main([*args, "--out", str(tmp_path / "bundle")]) == 7  # never overwritten
    assert provision_main([*args, "--out", str(tmp_path / "b2"), "--threshold", "2"]) == 5
    assert "match_threshold must be a number between 0 and 1" in capsys.readouterr().err
    assert provision_main([*args, "--out", str(tmp_path / "b3"), "--template", "1,2 3"]) == 5
    (tmp_path / "not.tflite").write_bytes(b"\x00" * 64)
    assert provision_main([*args[:4], str(tmp_path / "not.tflite"), *secret, "--out", str(tmp_path / "b4")]) == 3
    assert "is not a TFLite model" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("b2", "b3", "b4"))
