"""The renewal's files: the pending key beside the old one, and a swap a power cut cannot leave half done.

Why a journal of two files: the certificate and its key are two files, and no
rename replaces both at once. So an accepted certificate is first written as
`<cert>.next` beside the certificate (atomically); its existence is the
record that the swap was decided. Then the pending key (under rotation)
replaces the key, and `<cert>.next` replaces the certificate. A restart finds
either nothing to do, or `<cert>.next` and finishes the same steps
(`finish_swap`, run before the MQTT client loads its credentials), so the
device never starts with a certificate and a key that do not belong together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.common.files import create_new, fsync_directory, write_atomically
from edge.trust.device_key import KEY_FILE_MODE, load_device_key

NEXT_SUFFIX = ".next"
CERT_FILE_MODE = 0o644


@dataclass(frozen=True, slots=True)
class RenewalFiles:
    """The device certificate and key the service uses ([mqtt] cert/key), and their pending successors."""

    cert: Path
    key: Path

    @property
    def next_cert(self) -> Path:
        return self.cert.with_name(self.cert.name + NEXT_SUFFIX)

    @property
    def next_key(self) -> Path:
        """The new key under rotation: made once, kept until its certificate is accepted (0600)."""
        return self.key.with_name(self.key.name + NEXT_SUFFIX)

    def pending_key(self) -> ec.EllipticCurvePrivateKey | None:
        """The key a request already asked for, or None; raises IdentityError if it is unreadable or exposed."""
        if not self.next_key.exists():
            return None
        return load_device_key(self.next_key)

    def new_key(self) -> ec.EllipticCurvePrivateKey:
        """The pending key, made now if there is none (create-once: a restart asks for the same key again)."""
        held = self.pending_key()
        if held is not None:
            return held
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            create_new(self.next_key, pem, KEY_FILE_MODE)
        except FileExistsError:  # made by another process in between: ask for that one
            return load_device_key(self.next_key)
        return key

    def install(self, chain_pem: bytes) -> None:
        """Make an accepted certificate (and the pending key, if any) the ones in use. Raises OSError."""
        write_atomically(self.next_cert, chain_pem, CERT_FILE_MODE)
        self.finish_swap()

    def finish_swap(self) -> bool:
        """Complete a decided swap (after `install`, or at start after a power cut); True if one was done."""
        if not self.next_cert.exists():
            return False
        if self.next_key.exists():
            os.replace(self.next_key, self.key)
            fsync_directory(self.key.parent)
        os.replace(self.next_cert, self.cert)
        fsync_directory(self.cert.parent)
        return True
