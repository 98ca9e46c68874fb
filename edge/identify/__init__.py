"""Identification lives here, apart from detection, behind the policy gate.

Why a separate subpackage: the detection path (camera, inference, pose,
publish) never imports it, so a detection-only deployment does not even load
identification code. Everything here starts from an `IdentificationSession`,
and a session can only be opened with an `IdentificationGrant` that
`edge.policy.gate.PolicyGate.decide` issued (in the spirit of `cryptography`'s
hazmat separation).

Modules: `align` (pure geometry), `embedding` (MobileFaceNet), `gallery`
(consented enrolments with retention, matching, erasure). Everything that
computes or uses an embedding needs a live session; erasure does not, so that
data can always be deleted, even after the grant has ended.
"""
from __future__ import annotations

import datetime as dt

from edge.common.errors import EdgeError
from edge.policy.gate import IdentificationGrant, is_gate_issued


class IdentificationRefused(EdgeError):
    """Identification was asked for without a live grant from the policy gate."""

    exit_code = 8


class IdentificationSession:
    """Holds the gate's grant; every use re-checks that it is still live."""

    __slots__ = ("_grant",)

    def __init__(self, grant: IdentificationGrant) -> None:
        if not is_gate_issued(grant):
            raise IdentificationRefused(
                "identification needs a grant issued by the policy gate",
                "run 'edge-camera policy' to see why identification is not allowed")
        self._grant = grant

    @property
    def device_id(self) -> str:
        return self._grant.device_id

    @property
    def site(self) -> str:
        return self._grant.site

    def require_live(self, now: dt.datetime) -> None:
        """Why per use: the grant ends with the certificate or the CRL's nextUpdate."""
        require_session(self)
        if not self._grant.is_live(now):
            raise IdentificationRefused(
                f"the identification grant ended at {self._grant.valid_until.isoformat()}",
                "the policy gate must decide again (certificate or revocation list expired)")


def require_session(session: object) -> IdentificationSession:
    """Why re-check: a session object made without `__init__` must not pass either."""
    if not isinstance(session, IdentificationSession) or not is_gate_issued(getattr(session, "_grant", None)):
        raise IdentificationRefused("identification needs a session opened with a grant from the policy gate")
    return session
