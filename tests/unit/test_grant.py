"""The EdgeGrant extension: round trip, and every malformed encoding refused with a clear error."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import encoder as ber_encoder

from edge.trust.grant import (
    GRANT_OID_DOTTED,
    EdgeGrant,
    GrantError,
    _EdgeGrantAsn1,
    _TextList,
    decode_grant,
    encode_grant,
)

GOOD = EdgeGrant("cam-1", ("detection", "identification"), ("retail", "office"), "Shop 1, Main St", 1)


def test_oid_is_under_the_uuid_arc() -> None:
    import uuid

    assert GRANT_OID_DOTTED.startswith("2.25.")
    assert int(GRANT_OID_DOTTED.split(".")[2]) == uuid.UUID("61a6719d-7d5a-42de-8a65-722a26f1f630").int


def test_round_trip() -> None:
    assert decode_grant(encode_grant(GOOD)) == GOOD


def test_encoding_is_der_sequence_with_version_first() -> None:
    der = encode_grant(GOOD)
    assert der[0] == 0x30 and der[2:5] == b"\x02\x01\x01"


def _raw(version: int = 1, device: str = "cam-1", caps: tuple[str, ...] = ("detection",),
         tags: tuple[str, ...] = ("retail",), site: str = "s", policy: int = 1) -> _EdgeGrantAsn1:
    value = _EdgeGrantAsn1()
    value["version"] = version
    value["deviceId"] = device
    c = _TextList(); c.extend(caps); value["capabilities"] = c
    t = _TextList(); t.extend(tags); value["deploymentTags"] = t
    value["site"] = site
    value["policyVersion"] = policy
    return value


def _der(value: object) -> bytes:
    from pyasn1.codec.der import encoder

    return bytes(encoder.encode(value))


@pytest.mark.parametrize("data, message", [
    (b"", "not a DER EdgeGrant"),
    (b"\x30", "not a DER EdgeGrant"),
    (b"\x04\x03abc", "not a DER EdgeGrant"),
    (b"\x30\x03\x02\x01\x01", "not a DER EdgeGrant"),  # truncated: fields missing
    (encode_grant(GOOD) + b"\x00", "1 trailing bytes"),
    (encode_grant(GOOD)[:-1], "not a DER EdgeGrant"),
    (b"\x30\x80" + encode_grant(GOOD)[2:] + b"\x00\x00", "not a DER EdgeGrant"),  # indefinite length (BER)
    (b"\x30\x81" + encode_grant(GOOD)[1:], "not DER"),  # long-form length where short form is due
])
def test_malformed_encodings_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(GrantError, match=message):
        decode_grant(data)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(GrantError, match="version 2 is not supported"):
        decode_grant(_der(_raw(version=2)))


def test_wrong_inner_type_is_refused() -> None:
    der = bytearray(_der(_raw()))
    index = der.index(b"\x0c\x05cam-1")
    der[index] = 0x13  # PrintableString where UTF8String is due
    with pytest.raises(GrantError, match="not a DER EdgeGrant"):
        decode_grant(bytes(der))


def test_constructed_string_ber_form_is_refused() -> None:
    value = _raw()
    ber = bytes(ber_encoder.encode(value, defMode=False))
    with pytest.raises(GrantError):
        decode_grant(ber)


@pytest.mark.parametrize("kwargs, message", [
    ({"caps": ("detection", "emotion")}, "unknown capabilities"),
    ({"caps": ()}, "no capabilities"),
    ({"caps": ("detection", "detection")}, "repeats"),
    ({"device": "Cam 1"}, "device id"),
    ({"device": "../etc"}, "device id"),
    ({"site": ""}, "site"),
    ({"tags": ("retail\x00",)}, "control"),
])
def test_semantically_bad_grants_are_refused(kwargs: dict[str, object], message: str) -> None:
    data = _der(_raw(**kwargs))  # type: ignore[arg-type]
    with pytest.raises(GrantError, match=message):
        decode_grant(data)


def test_negative_policy_version_is_refused() -> None:
    der = _der(_raw(policy=1))
    assert der.endswith(b"\x02\x01\x01")
    with pytest.raises(GrantError, match="not a DER EdgeGrant"):
        decode_grant(der[:-1] + b"\xff")


def test_grant_dataclass_refuses_what_decoder_refuses() -> None:
    with pytest.raises(GrantError, match="unknown capabilities"):
        EdgeGrant("cam-1", ("detection", "age"), (), "s", 1)


def test_oversized_value_is_refused() -> None:
    with pytest.raises(GrantError, match="over the"):
        decode_grant(b"\x30" + b"\x00" * 10000)


def test_non_bytes_is_refused() -> None:
    with pytest.raises(GrantError, match="must be bytes"):
        decode_grant("0")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    try:
        grant = decode_grant(data)
    except GrantError:
        return
    assert encode_grant(grant) == data  # anything accepted is canonical DER of itself


device_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
texts = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn")), min_size=1,
                max_size=30).filter(lambda s: s.isprintable())


@settings(max_examples=200, deadline=None)
@given(device_ids, st.sampled_from([("detection",), ("detection", "identification"), ("identification",)]),
       st.lists(texts, max_size=5, unique=True), texts, st.integers(0, 2**31 - 1))
def test_round_trip_property(device: str, caps: tuple[str, ...], tags: list[str], site: str, policy: int) -> None:
    grant = EdgeGrant(device, caps, tuple(tags), site, policy)
    der = encode_grant(grant)
    assert decode_grant(der) == grant


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(encode_grant(GOOD)) - 1), st.integers(1, 255))
def test_single_byte_corruption_is_refused_or_still_canonical(index: int, delta: int) -> None:
    data = bytearray(encode_grant(GOOD))
    data[index] = (data[index] + delta) % 256
    try:
        grant = decode_grant(bytes(data))
    except GrantError:
        return
    assert grant != GOOD and encode_grant(grant) == bytes(data)
