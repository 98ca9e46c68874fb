"""The device key: made once with mode 0600, refused when others could read it, CSR names the device."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.trust.grant import GrantError
from edge.trust.device_key import IdentityError, build_csr, load_device_key, load_or_create_device_key


def test_key_created_once_with_private_mode(tmp_path: Path) -> None:
    key = load_or_create_device_key(tmp_path / "state")
    path = tmp_path / "state" / "device-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    again = load_or_create_device_key(tmp_path / "state")
    assert again.private_numbers() == key.private_numbers()
    assert isinstance(key.curve, ec.SECP256R1)


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_device_key(tmp_path)
    path = tmp_path / "device-key.pem"
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="accessible to other users"):
        load_device_key(path)


@pytest.mark.parametrize("content, words", [
    (b"not a key", "cannot be read"),
    (rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
     "not an elliptic-curve key"),
    (ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
     "curve secp384r1"),
])
def test_wrong_keys_are_refused(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "device-key.pem"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match=words):
        load_device_key(path)


def test_missing_key(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="does not exist"):
        load_device_key(tmp_path / "device-key.pem")


def test_csr_names_the_device_in_cn_and_san(tmp_path: Path) -> None:
    csr = x509.load_pem_x509_csr(build_csr(load_or_create_device_key(tmp_path), "cam-9"))
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "cam-9"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:edge-camera:device:cam-9"]


def test_csr_refuses_bad_device_id(tmp_path: Path) -> None:
    with pytest.raises(GrantError, match="device id"):
        build_csr(load_or_create_device_key(tmp_path), "cam/9")


def test_key_path_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "device-key.pem").mkdir()
    with pytest.raises(IdentityError, match="cannot be read"):
        load_device_key(tmp_path / "device-key.pem")
