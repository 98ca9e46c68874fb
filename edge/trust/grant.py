"""The EdgeGrant certificate extension: what a provisioning certificate allows.

Why a private extension: the grant must travel inside the device's one
certificate (also its MQTT client certificate), signed by the provisioning CA,
so that nothing on the device can widen it. It is non-critical because TLS
stacks (Mosquitto's OpenSSL) reject unknown critical extensions; the device's
own gate requires it instead.

ASN.1 (value of the extension, DER):

    EdgeGrant ::= SEQUENCE {
        version        INTEGER (1),
        deviceId       UTF8String,
        capabilities   SEQUENCE OF UTF8String,
        deploymentTags SEQUENCE OF UTF8String,
        site           UTF8String,
        policyVersion  INTEGER }

Decoding is strict: pyasn1's DER decoder against this schema, no trailing
bytes, and the input must be byte-for-byte the DER re-encoding of what was
decoded (so BER-only forms such as long-form lengths or indefinite lengths are
refused).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, constraint, namedtype, univ

from edge.common.errors import EdgeError
from edge.common.topics import FLEET_LEVEL

# Generated once from UUID 61a6719d-7d5a-42de-8a65-722a26f1f630 under the 2.25
# arc (ITU-T X.667: an OID made from a UUID needs no registration). Never change it:
# every certificate in the field carries it.
GRANT_OID_DOTTED = "2.25.129799341259555093769035261915314648624"
GRANT_VERSION = 1

CAPABILITY_DETECTION = "detection"
CAPABILITY_IDENTIFICATION = "identification"
KNOWN_CAPABILITIES = frozenset({CAPABILITY_DETECTION, CAPABILITY_IDENTIFICATION})

# The device id is the MQTT user name (CN), part of topic names and of a URI,
# so it is kept to characters that are safe in all three.
DEVICE_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# `fleet` names the fleet-wide topics (the CRL) under the topic root, so no device may take it.
RESERVED_DEVICE_IDS = frozenset({FLEET_LEVEL})
DEVICE_ID_EXPECTED = (f"1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit, "
                      f"other than {', '.join(sorted(RESERVED_DEVICE_IDS))}")
DEVICE_URI_PREFIX = "urn:edge-camera:device:"

# Limits keep a hostile extension from costing memory or time on the device.
MAX_GRANT_BYTES = 4096
MAX_LIST_ITEMS = 32
MAX_TEXT_CHARS = 200
MAX_POLICY_VERSION = 2**31 - 1
MAX_ERROR_CHARS = 160


class GrantError(EdgeError):
    """The grant extension is malformed or says something the firmware refuses."""

    exit_code = 6


class _TextList(univ.SequenceOf):
    componentType = char.UTF8String()


class _EdgeGrantAsn1(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("version", univ.Integer()),
        namedtype.NamedType("deviceId", char.UTF8String()),
        namedtype.NamedType("capabilities", _TextList()),
        namedtype.NamedType("deploymentTags", _TextList()),
        namedtype.NamedType("site", char.UTF8String()),
        namedtype.NamedType("policyVersion", univ.Integer().subtype(
            subtypeSpec=constraint.ValueRangeConstraint(0, MAX_POLICY_VERSION))),
    )


@dataclass(frozen=True, slots=True)
class EdgeGrant:
    """A decoded, syntactically valid grant. Tags are kept as written; `edge.trust.tags` judges them."""

    device_id: str
    capabilities: tuple[str, ...]
    deployment_tags: tuple[str, ...]
    site: str
    policy_version: int
    version: int = GRANT_VERSION

    def __post_init__(self) -> None:
        validate_grant(self)

    @property
    def grants_identification(self) -> bool:
        return CAPABILITY_IDENTIFICATION in self.capabilities


def device_uri(device_id: str) -> str:
    """The SAN URI that names a device (the client verifier requires a SAN)."""
    return DEVICE_URI_PREFIX + device_id


def device_id_problem(device_id: object) -> str | None:
    """The one device-id rule (certificates, grants, the tool and the configuration): what is wrong, or None."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.fullmatch(device_id):
        return "is not valid"
    if device_id in RESERVED_DEVICE_IDS:
        return "is reserved for fleet-wide topics"
    return None


def check_device_id(device_id: str) -> str:
    problem = device_id_problem(device_id)
    if problem is not None:
        raise GrantError(f"device id {device_id!r} {problem}", f"use {DEVICE_ID_EXPECTED}")
    return device_id


def _check_text(what: str, value: str) -> None:
    if not value or len(value) > MAX_TEXT_CHARS:
        raise GrantError(f"grant {what} {value!r} is empty or longer than {MAX_TEXT_CHARS} characters")
    if any(not ch.isprintable() for ch in value):
        raise GrantError(f"grant {what} {value!r} contains control or invisible characters")


def validate_grant(grant: EdgeGrant) -> None:
    """Why here: both the issuing tool and the device must agree on what is well formed."""
    if grant.version != GRANT_VERSION:
        raise GrantError(f"grant version {grant.version} is not supported",
                         f"this firmware understands version {GRANT_VERSION} only")
    check_device_id(grant.device_id)
    if not grant.capabilities:
        raise GrantError("grant lists no capabilities", "expected at least 'detection'")
    for what, items in (("capability", grant.capabilities), ("deployment tag", grant.deployment_tags)):
        if len(items) > MAX_LIST_ITEMS:
            raise GrantError(f"grant lists more than {MAX_LIST_ITEMS} {what} entries")
        if len(set(items)) != len(items):
            raise GrantError(f"grant repeats a {what}: {list(items)}")
        for item in items:
            _check_text(what, item)
    unknown = [c for c in grant.capabilities if c not in KNOWN_CAPABILITIES]
    if unknown:
        raise GrantError(f"grant asks for unknown capabilities {unknown}",
                         f"expected only {sorted(KNOWN_CAPABILITIES)} (attribute inference is never offered)")
    _check_text("site", grant.site)
    if not 0 <= grant.policy_version <= MAX_POLICY_VERSION:
        raise GrantError(f"grant policy version {grant.policy_version} is out of range")


def encode_grant(grant: EdgeGrant) -> bytes:
    value = _EdgeGrantAsn1()
    value["version"] = grant.version
    value["deviceId"] = grant.device_id
    caps = _TextList()
    caps.extend(grant.capabilities)
    value["capabilities"] = caps
    tags = _TextList()
    tags.extend(grant.deployment_tags)
    value["deploymentTags"] = tags
    value["site"] = grant.site
    value["policyVersion"] = grant.policy_version
    return bytes(der_encoder.encode(value))


def decode_grant(data: bytes) -> EdgeGrant:
    """Strict DER decode; every refusal is a GrantError naming the problem."""
    if not isinstance(data, (bytes, bytearray)):
        raise GrantError(f"grant value must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_GRANT_BYTES:
        raise GrantError(f"grant extension is {len(data)} bytes, over the {MAX_GRANT_BYTES}-byte limit")
    try:
        decoded, rest = der_decoder.decode(data, asn1Spec=_EdgeGrantAsn1())
    except (PyAsn1Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise GrantError(f"grant extension is not a DER EdgeGrant: {_short(exc)}") from None
    if rest:
        raise GrantError(f"grant extension has {len(rest)} trailing bytes after the EdgeGrant")
    try:
        canonical = bytes(der_encoder.encode(decoded))
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise GrantError(f"grant extension is not a DER EdgeGrant: {_short(exc)}") from None
    if canonical != data:
        raise GrantError("grant extension is BER but not DER (non-canonical encoding)",
                         "re-issue the certificate with edge-provision")
    try:
        version = int(decoded["version"])
        if version != GRANT_VERSION:
            raise GrantError(f"grant version {version} is not supported",
                             f"this firmware understands version {GRANT_VERSION} only")
        return EdgeGrant(
            device_id=str(decoded["deviceId"]),
            capabilities=tuple(str(c) for c in decoded["capabilities"]),
            deployment_tags=tuple(str(t) for t in decoded["deploymentTags"]),
            site=str(decoded["site"]),
            policy_version=int(decoded["policyVersion"]),
            version=version,
        )
    except (PyAsn1Error, UnicodeDecodeError) as exc:
        raise GrantError(f"grant extension is not a DER EdgeGrant: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    """pyasn1 messages can embed whole substrates; keep the first line, bounded."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:MAX_ERROR_CHARS]
