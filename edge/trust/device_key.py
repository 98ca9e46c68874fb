"""The device's own key: made on the camera by `edge-provision device-key`, kept in the state directory, never exported.

Why on the device: a key that never leaves the camera cannot be copied to
another one, so a certificate bound to it (see `edge.policy.decision`) cannot be moved
either. Only the public key leaves, inside a certificate request. The service
only reads the key (`load_device_key`); it never makes one.
"""
from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.common.files import create_new
from edge.trust.certificates import KEY_EXPECTED, CertificateError, check_public_key
from edge.common.errors import EdgeError
from edge.trust.grant import check_device_id, device_uri

DEVICE_KEY_FILE = "device-key.pem"
KEY_FILE_MODE = 0o600
STATE_DIR_MODE = 0o700
# Group or other permission bits on the key file mean someone else may have read it.
FOREIGN_ACCESS_BITS = stat.S_IRWXG | stat.S_IRWXO
MAX_KEY_BYTES = 4096


class IdentityError(EdgeError):
    """The device key is missing, unreadable, exposed or of the wrong kind."""

    exit_code = 6


def device_key_path(state_dir: Path) -> Path:
    return Path(state_dir) / DEVICE_KEY_FILE


def load_or_create_device_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The first call creates the key (create-once, mode 0600, synced to disk); later calls load it
    (`edge-provision device-key`)."""
    path = device_key_path(state_dir)
    if path.exists():
        return load_device_key(path)
    Path(state_dir).mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        create_new(path, pem, KEY_FILE_MODE)
    except FileExistsError:
        return load_device_key(path)  # another process created it first
    return key


def load_device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except FileNotFoundError:
        raise IdentityError(f"device key {path} does not exist",
                            "run 'edge-provision device-key' on the device first") from None
    except PermissionError:
        raise IdentityError(f"device key {path} cannot be read by this user",
                            "run as the camera service's user") from None
    except OSError as exc:
        raise IdentityError(f"device key {path} cannot be read: {exc.strerror}") from None
    if mode & FOREIGN_ACCESS_BITS:
        raise IdentityError(f"device key {path} is accessible to other users (mode {stat.S_IMODE(mode):o})",
                            f"chmod {KEY_FILE_MODE:o} {path}; if it may have been copied, create a new key "
                            "and have the certificate re-issued")
    if len(data) > MAX_KEY_BYTES:
        raise IdentityError(f"device key {path} is too large to be a P-256 key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"device key {path} cannot be read ({str(exc).splitlines()[0]})",
                            f"expected an unencrypted PEM private key, {KEY_EXPECTED}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"device key {path} is not an elliptic-curve key", f"expected {KEY_EXPECTED}")
    try:
        check_public_key(key.public_key(), f"device key {path}")
    except CertificateError as exc:
        raise IdentityError(exc.message, exc.hint) from None
    return key


def build_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """CN and SAN URI carry the device id, as the provisioning CA will copy them."""
    check_device_id(device_id)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_uri(device_id))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
