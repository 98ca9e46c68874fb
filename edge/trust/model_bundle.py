"""The identification bundle: an embedding model and its descriptor, signed by the provisioning CA.

Why signed: the embedding model decides who is recognised. A deployment
supplies its own (the firmware ships none), and the device must know that the
installer who provisioned it chose this model and these settings, and that
nobody changed either since. The provisioning CA's key signs the descriptor
(`edge-provision model-bundle`); the descriptor carries the model's SHA-256.
The device checks the signature against the CA that issued its own
certificate (the chain the policy gate verified to the pinned anchor), then
the model's hash, and only then loads anything (`edge.identify.bundle`).

Why here and not in `edge.identify`: the installer's tool signs with the very
code the device verifies with, and the tool's distribution holds
`edge.common`, `edge.trust` and `edge.policy` only (no numpy, no TFLite).
Pure Python and `cryptography`.

A bundle is a directory of four files: `model.tflite`, `descriptor.json`,
`descriptor.sig` (ECDSA P-256 / SHA-256, DER, over a fixed context string and
the descriptor's bytes) and `signer.pem` (the signing CA's certificate, used
only to name the signer in a refusal; trust comes from the device's chain).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.common.errors import EdgeError
from edge.common.files import FileTooLarge, read_bounded

BUNDLE_FORMAT = 1
MODEL_FILE = "model.tflite"
DESCRIPTOR_FILE = "descriptor.json"
SIGNATURE_FILE = "descriptor.sig"
SIGNER_FILE = "signer.pem"
# Prepended to the descriptor before signing: the CA key also signs certificates and CRLs (DER), and a
# signature over this context can never be mistaken for one of those, nor theirs for this.
SIGNING_CONTEXT = b"edge-camera identification bundle v1\x00"
METRICS = ("cosine",)
# ArcFace's five points (eye centres, nose tip, mouth corners) for a 112x112 crop; MobileFaceNet's template.
ARCFACE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
                        (41.5493, 92.3655), (70.7299, 92.2041))
TEMPLATE_POINTS = 5
MAX_DESCRIPTOR_BYTES = 16 * 1024
MAX_SIGNATURE_BYTES = 256
MAX_MODEL_BYTES = 64 * 1024 * 1024
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 512
MIN_EMBEDDING, MAX_EMBEDDING = 16, 4096
# The descriptor's match threshold unless the deployment signs another (cosine similarity): above the
# held-out set's false accepts at 0.42, below every same-person pair of the shared photographs (0.587 with
# mesh alignment); the trade-off table is in docs/benchmarks-identification.md.
DEFAULT_MATCH_THRESHOLD = 0.50
SHA256_HEX = 64
MAX_NAME = 100


class BundleError(EdgeError):
    """An identification bundle is missing, malformed, tampered with or signed by a CA this device does not trust."""

    exit_code = 3


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What the device needs to run the model the way it was trained, and to decide a match.

    `input_gain` and `input_offset` map a pixel p in [0, 255] to the model's real input p * gain + offset
    (MobileFaceNet float32: (p - 127.5) / 128). `alignment_template` holds the five points, in input
    pixels, where the eye centres, nose tip and mouth corners go. `match_threshold` is the lowest
    similarity under `metric` that counts as the same person.
    """

    name: str
    model_sha256: str
    input_size: int
    input_gain: float
    input_offset: float
    alignment_template: tuple[tuple[float, float], ...]
    embedding_size: int
    metric: str
    match_threshold: float
    format: int = BUNDLE_FORMAT

    def __post_init__(self) -> None:
        check_descriptor(self)

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): what the signature covers."""
        data = asdict(self)
        data["alignment_template"] = [list(p) for p in self.alignment_template]
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "Descriptor":
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BundleError("the bundle's descriptor is not valid JSON") from None
        if not isinstance(raw, Mapping):
            raise BundleError("the bundle's descriptor is not a JSON object")
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "Descriptor":
        expected = {"name", "model_sha256", "input_size", "input_gain", "input_offset", "alignment_template",
                    "embedding_size", "metric", "match_threshold", "format"}
        if set(raw) != expected:
            missing, extra = sorted(expected - set(raw)), sorted(set(raw) - expected)
            raise BundleError(f"the bundle's descriptor has the wrong fields (missing {missing}, unknown {extra})")
        if raw["format"] != BUNDLE_FORMAT:
            raise BundleError(f"bundle format {raw['format']!r} is not supported", f"this firmware reads format {BUNDLE_FORMAT}")
        template = raw["alignment_template"]
        if not isinstance(template, list) or not all(isinstance(p, list) and len(p) == 2 for p in template):
            raise BundleError("the descriptor's alignment_template is not a list of [x, y] points")
        return cls(name=raw["name"], model_sha256=raw["model_sha256"], input_size=raw["input_size"],
                   input_gain=raw["input_gain"], input_offset=raw["input_offset"],
                   alignment_template=tuple((p[0], p[1]) for p in template), embedding_size=raw["embedding_size"],
                   metric=raw["metric"], match_threshold=raw["match_threshold"], format=raw["format"])


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_descriptor(d: Descriptor) -> None:
    """Every field within what the device can run; the reason otherwise (the tool refuses before signing)."""
    problems = []
    if not isinstance(d.name, str) or not d.name or len(d.name) > MAX_NAME or not d.name.isprintable():
        problems.append(f"name must be 1-{MAX_NAME} printable characters")
    if not isinstance(d.model_sha256, str) or len(d.model_sha256) != SHA256_HEX or \
            any(c not in "0123456789abcdef" for c in d.model_sha256):
        problems.append("model_sha256 must be 64 lower-case hex digits")
    if not _whole(d.input_size, MIN_INPUT_SIZE, MAX_INPUT_SIZE):
        problems.append(f"input_size must be a whole number of pixels from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}")
    if not _number(d.input_gain) or d.input_gain == 0 or not _number(d.input_offset):
        problems.append("input_gain (not 0) and input_offset must be finite numbers")
    points = d.alignment_template
    if len(points) != TEMPLATE_POINTS or not all(_number(c) for p in points for c in p):
        problems.append(f"alignment_template must hold {TEMPLATE_POINTS} points (eye centres, nose tip, mouth corners)")
    elif _whole(d.input_size, MIN_INPUT_SIZE, MAX_INPUT_SIZE) and \
            not all(0 <= c <= d.input_size for p in points for c in p):
        problems.append("alignment_template points must lie inside the model's input")
    if not _whole(d.embedding_size, MIN_EMBEDDING, MAX_EMBEDDING):
        problems.append(f"embedding_size must be a whole number from {MIN_EMBEDDING} to {MAX_EMBEDDING}")
    if d.metric not in METRICS:
        problems.append(f"metric must be one of {', '.join(METRICS)}")
    if not _number(d.match_threshold) or not 0.0 < d.match_threshold < 1.0:
        problems.append("match_threshold must be a number between 0 and 1 (cosine similarity)")
    if problems:
        raise BundleError("the identification descriptor is not valid: " + "; ".join(problems))


def model_sha256(model: bytes) -> str:
    return hashlib.sha256(model).hexdigest()


def sign_descriptor(descriptor: Descriptor, key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.sign(SIGNING_CONTEXT + descriptor.to_bytes(), ec.ECDSA(hashes.SHA256()))


@dataclass(frozen=True, slots=True)
class SignedBundle:
    """The four files' contents; `write` puts them in a directory, `verify` judges them."""

    model: bytes
    descriptor: bytes
    signature: bytes
    signer: bytes

    @classmethod
    def build(cls, model: bytes, descriptor: Descriptor, ca_cert: x509.Certificate,
              ca_key: ec.EllipticCurvePrivateKey) -> "SignedBundle":
        if descriptor.model_sha256 != model_sha256(model):
            raise BundleError("the descriptor's model_sha256 is not the model's hash")
        return cls(model, descriptor.to_bytes(), sign_descriptor(descriptor, ca_key),
                   ca_cert.public_bytes(serialization.Encoding.PEM))

    def write(self, directory: Path) -> None:
        """Create `directory` and the four files in it; FileExistsError if any is there already."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in ((MODEL_FILE, self.model), (DESCRIPTOR_FILE, self.descriptor),
                           (SIGNATURE_FILE, self.signature), (SIGNER_FILE, self.signer)):
            with open(directory / name, "xb") as handle:
                handle.write(data)

    @classmethod
    def read(cls, directory: Path) -> "SignedBundle":
        parts = []
        for name, limit in ((MODEL_FILE, MAX_MODEL_BYTES), (DESCRIPTOR_FILE, MAX_DESCRIPTOR_BYTES),
                            (SIGNATURE_FILE, MAX_SIGNATURE_BYTES), (SIGNER_FILE, MAX_DESCRIPTOR_BYTES)):
            path = Path(directory) / name
            try:
                parts.append(read_bounded(path, limit))
            except FileNotFoundError:
                raise BundleError(f"identification bundle {directory} has no {name}",
                                  "install the directory 'edge-provision model-bundle' wrote") from None
            except FileTooLarge as exc:
                raise BundleError(str(exc)) from None
            except OSError as exc:
                raise BundleError(f"{path} cannot be read: {exc.strerror}") from None
        return cls(*parts)

    def verify(self, issuers: Sequence[x509.Certificate]) -> Descriptor:
        """The descriptor, once its signature verifies with one of `issuers` and the model has its hash.

        `issuers` are the CAs of this device's own chain (the certificate file after the leaf).
        Order matters: nothing in the descriptor is believed before the signature verifies.
        """
        if not issuers:
            raise BundleError("no CA certificate is installed to check the bundle's signature against",
                              "install the device bundle from 'edge-provision bundle' first")
        signed = SIGNING_CONTEXT + self.descriptor
        if not any(_verifies(issuer, self.signature, signed) for issuer in issuers):
            raise BundleError(f"the bundle's signature does not verify: {self._signer_story(issuers)}",
                              "sign the bundle with this device's provisioning CA: edge-provision model-bundle")
        descriptor = Descriptor.from_bytes(self.descriptor)
        actual = model_sha256(self.model)
        if actual != descriptor.model_sha256:
            raise BundleError(f"the bundle's model was altered: its SHA-256 is {actual[:16]}..., the signed "
                              f"descriptor says {descriptor.model_sha256[:16]}...",
                              "reinstall the bundle as 'edge-provision model-bundle' wrote it")
        return descriptor

    def _signer_story(self, issuers: Sequence[x509.Certificate]) -> str:
        """Why it failed, in words: another CA signed it, or the descriptor or signature was altered."""
        ours = ", ".join(repr(i.subject.rfc4514_string()) for i in issuers)
        try:
            signer = x509.load_pem_x509_certificate(self.signer)
        except ValueError:
            return f"the descriptor or its signature was altered (or it was not signed by {ours})"
        if any(_same_key(signer, i) for i in issuers):
            return "the descriptor or its signature was altered after signing"
        return (f"it was signed by another CA ({signer.subject.rfc4514_string()!r}), "
                f"not by this device's CA ({ours})")


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    def spki(cert: x509.Certificate) -> bytes:
        return cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return spki(a) == spki(b)


def _verifies(issuer: x509.Certificate, signature: bytes, data: bytes) -> bool:
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True
