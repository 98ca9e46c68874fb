"""The deployment's embedding model, accepted only as a bundle signed by this device's provisioning CA.

Why: the firmware ships no embedding model. The deployment supplies one with
`edge-provision model-bundle`, which signs a descriptor (the model's SHA-256,
input size and normalisation, alignment template, embedding size, metric,
match threshold) with the provisioning CA's key. Here the device checks that
signature against the CA certificates of its own installed chain, which the
policy gate verified to the pinned trust anchor, then the model's hash, and
only then hands the verified bytes to the interpreter: the file is never read
a second time, so it cannot be swapped between check and load. A refusal says
why, is audited, and identification stays off.

The format and the signature are `edge.trust.model_bundle` (shared with the
installer's tool); this module adds the device's side: which CAs count, the
audit record, and turning the descriptor into what `embedding` needs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.common.errors import EdgeError
from edge.policy.config import PolicyConfig
from edge.policy.material import load_crl_issuers
from edge.trust.audit import AuditLog
from edge.trust.model_bundle import BundleError, Descriptor, SignedBundle

# Where the bundle is installed by default: a directory in the state directory.
BUNDLE_DIR = "identification-bundle"
EVENT_BUNDLE_REFUSED = "identification-bundle-refused"
EVENT_BUNDLE_ACCEPTED = "identification-bundle-accepted"


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature and model hash verified; `model` is the very bytes that were hashed."""

    directory: Path
    descriptor: Descriptor
    model: bytes

    @property
    def template(self) -> np.ndarray:
        """The five alignment points (eye centres, nose tip, mouth corners) in input pixels, (5, 2)."""
        return np.array(self.descriptor.alignment_template, np.float64)


def default_bundle_dir(config: PolicyConfig) -> Path:
    return config.state_dir / BUNDLE_DIR


def verify_bundle(directory: Path, config: PolicyConfig, audit: AuditLog | None = None) -> VerifiedBundle:
    """Read and verify the bundle against the CAs of the installed device chain; audit the outcome.

    A refusal is recorded once per distinct reason (`append_if_changed`), so a
    service re-checking a tampered bundle does not fill the log; so is the
    acceptance of each distinct model.
    """
    try:
        signed = SignedBundle.read(Path(directory))
        descriptor = signed.verify(load_crl_issuers(config))
    except BundleError as exc:
        _record(audit, EVENT_BUNDLE_REFUSED, {"bundle": str(directory), "reason": exc.message})
        raise
    _record(audit, EVENT_BUNDLE_ACCEPTED, {"bundle": str(directory), "name": descriptor.name,
                                           "model_sha256": descriptor.model_sha256})
    return VerifiedBundle(Path(directory), descriptor, signed.model)


def _record(audit: AuditLog | None, event: str, data: dict[str, str]) -> None:
    if audit is not None:
        with contextlib.suppress(EdgeError):  # the refusal itself must reach the user even if the log cannot
            audit.append_if_changed(event, data)
