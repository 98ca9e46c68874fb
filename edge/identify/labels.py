"""Pseudonymous subject labels: a keyed hash of the enrolment id with a per-deployment secret.

Why keyed: the enrolment id is already a pseudonym, but a short one ("p-001")
could be guessed and linked between deployments that happened to pick the
same. The label is HMAC-SHA256(secret, enrolment id), truncated to
`LABEL_BYTES`, with a random secret kept in the state directory (mode 0600):
labels of one deployment do not link to another's, and without the secret
nobody can go from a label back to an id. The deployment keeps the mapping
from label to person (`edge-camera gallery list` prints each enrolment's
label). Devices of one deployment that should give the same person the same
label share the secret file (copy it, mode 0600, before enrolling).

What leaves the device about a match is the label and the score, never the
enrolment id (the wire format is the running service's: see
docs/identification.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from edge.common.errors import EdgeError
from edge.common.files import create_new

LABEL_SECRET_FILE = "label-secret"
SECRET_BYTES = 32
# 128 bits: collisions between the few people of one gallery are out of the question.
LABEL_BYTES = 16
SECRET_MODE = 0o600
PRIVATE_BITS = 0o077


class LabelError(EdgeError):
    """The label secret cannot be read, or is not private."""

    exit_code = 8


@dataclass(frozen=True, slots=True, repr=False)
class LabelKey:
    """The per-deployment secret; `label` turns an enrolment id into its pseudonymous label."""

    secret: bytes

    def label(self, enrolment_id: str) -> str:
        digest = hmac.new(self.secret, enrolment_id.encode("utf-8"), hashlib.sha256).digest()
        return digest[:LABEL_BYTES].hex()

    def __repr__(self) -> str:
        return "LabelKey(<secret>)"


def load_label_key(state_dir: Path, create: bool = False) -> LabelKey:
    """The deployment's label secret from `state_dir`; made (random, 0600) when `create` and absent."""
    path = Path(state_dir) / LABEL_SECRET_FILE
    if create and not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            create_new(path, secrets.token_bytes(SECRET_BYTES), SECRET_MODE)
    try:
        mode = path.stat().st_mode
        secret = path.read_bytes()
    except FileNotFoundError:
        raise LabelError(f"the label secret {path} does not exist",
                         "enrol someone first (it is made then), or copy the deployment's secret there") from None
    except OSError as exc:
        raise LabelError(f"the label secret {path} cannot be read: {exc.strerror}") from None
    if mode & PRIVATE_BITS:
        raise LabelError(f"the label secret {path} is readable by others (mode {mode & 0o777:o})",
                         f"chmod 600 {path}")
    if len(secret) != SECRET_BYTES:
        raise LabelError(f"the label secret {path} is not {SECRET_BYTES} bytes")
    return LabelKey(secret)
