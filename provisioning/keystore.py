"""Passphrases and encrypted CA keys.

Why never on the command line: arguments are visible to every user through
`ps` and end up in shell history. A passphrase comes from a file, from an
environment variable whose *name* is given, or from a prompt on the terminal.
"""
from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.common.files import create_new
from provisioning.errors import InputFileError, OutputExistsError, PassphraseError

MIN_PASSPHRASE_CHARS = 12
MAX_PASSPHRASE_BYTES = 1024
PRIVATE_FILE_MODE = 0o600
MAX_KEY_FILE_BYTES = 8192


@dataclass(frozen=True, slots=True)
class PassphraseSource:
    """Where one passphrase comes from; `label` names it in prompts and errors."""

    label: str
    file: Path | None = None
    env: str | None = None
    # The command-line options that set this passphrase, named in the error when no terminal can ask.
    flags: tuple[str, str] = ("--passphrase-file", "--passphrase-env")

    def read(self, *, new: bool = False) -> bytes:
        if self.file is not None and self.env is not None:
            raise PassphraseError(f"{self.label}: give either a passphrase file or an environment variable, not both")
        if self.file is not None:
            try:
                raw = self.file.read_bytes()[: MAX_PASSPHRASE_BYTES + 1]
            except OSError as exc:
                raise PassphraseError(f"{self.label} file {self.file} cannot be read: {exc.strerror}") from None
            value = raw.rstrip(b"\r\n")
        elif self.env is not None:
            if self.env not in os.environ:
                raise PassphraseError(f"{self.label}: environment variable {self.env} is not set",
                                      "export it first, or use a passphrase file or the prompt")
            value = os.environ[self.env].encode("utf-8")
        else:
            value = self._prompt(new)
        if not value:
            raise PassphraseError(f"{self.label} is empty")
        if len(value) > MAX_PASSPHRASE_BYTES:
            raise PassphraseError(f"{self.label} is longer than {MAX_PASSPHRASE_BYTES} bytes")
        if new and len(value.decode("utf-8", "replace")) < MIN_PASSPHRASE_CHARS:
            raise PassphraseError(f"{self.label} is shorter than {MIN_PASSPHRASE_CHARS} characters",
                                  "a CA key passphrase must be long; a few random words work well")
        return value

    def _prompt(self, new: bool) -> bytes:
        if not sys.stdin.isatty():
            raise PassphraseError(f"{self.label} is needed and there is no terminal to ask on",
                                  f"give {self.flags[0]} PATH or {self.flags[1]} NAME (the variable's name)")
        first = getpass.getpass(f"{self.label}: ")
        if new and getpass.getpass(f"{self.label} (again): ") != first:
            raise PassphraseError(f"the two {self.label} entries differ")
        return first.encode("utf-8")


def write_private_file(path: Path, data: bytes) -> None:
    """Create-only, mode 0600 from the first byte, synced to disk."""
    try:
        create_new(path, data, PRIVATE_FILE_MODE)
    except FileExistsError:
        raise OutputExistsError(f"{path} already exists", "choose another directory; keys are never overwritten") from None


def save_encrypted_key(path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(passphrase))
    write_private_file(path, pem)


def load_encrypted_key(path: Path, source: PassphraseSource) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()[: MAX_KEY_FILE_BYTES + 1]
    except OSError as exc:
        raise InputFileError(f"CA key {path} cannot be read: {exc.strerror}",
                             "give the directory that init-root / init-ca created") from None
    if b"ENCRYPTED" not in data:
        raise InputFileError(f"CA key {path} is not an encrypted private key")
    passphrase = source.read()
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        raise PassphraseError(f"the {source.label} does not open {path} (wrong passphrase or damaged key)") from None
    except TypeError as exc:
        raise InputFileError(f"CA key {path} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InputFileError(f"CA key {path} is not a P-256 key")
    return key
