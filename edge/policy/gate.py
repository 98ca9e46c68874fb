"""The identification gate: loads the material, decides, audits, and alone issues `IdentificationGrant`s.

Why one place issues grants: `edge.identify` opens a session only with a grant
this module minted for a decision in identification mode that the audit log
recorded, so no other code path can switch identification on. The judgement
itself is `edge.policy.decision.evaluate`; reading files is
`edge.policy.material`; this module is the imperative shell around them.
`preview_decision` is the same judgement with no side effect at all, for
`edge-camera policy`.
"""
from __future__ import annotations

import datetime as dt
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import NoReturn

from edge.policy.clock import ClockState, ClockSync
from edge.policy.config import PolicyConfig
from edge.policy.build import firmware_build_time
from edge.policy.decision import Check, Mode, PolicyDecision, evaluate
from edge.policy.material import load_crl_issuers, load_material, read_installed_crl
from edge.trust.audit import AuditError, AuditLog
from edge.trust.revocation import CrlResult, CrlStore
from edge.trust.tags import Vocabulary

# The audit event of a policy decision; one is appended only when the decision changes.
DECISION_EVENT = "policy-decision"
# The gate's own check, after `evaluate`'s: the wall clock was synchronised (edge.policy.clock).
CLOCK_SYNC_CHECK = "clock-sync"
CLOCK_UNSYNCED = "the clock is not synchronised yet: identification waits for time sync"

logger = logging.getLogger(__name__)


class IdentificationGrant:
    """Proof, for `edge.identify`, that the gate allowed identification.

    Only `PolicyGate.decide` creates these: the constructor wants a private
    seal, and `edge.identify` also checks that the object is one the gate
    registered, so neither `IdentificationGrant(...)` nor `object.__new__`
    nor a copy yields a usable grant. Like `cryptography`'s hazmat layer this
    is a guard against mistakes and shortcuts in code review, not against
    code that deliberately reaches into private names.
    """

    __slots__ = ("device_id", "site", "deployment_tags", "serial", "valid_until", "__weakref__")

    def __init__(self, seal: object, decision: PolicyDecision) -> None:
        if seal is not _GATE_SEAL:
            raise TypeError("IdentificationGrant is issued by the policy gate only (edge.policy.gate.PolicyGate.decide)")
        if decision.mode is not Mode.IDENTIFICATION or decision.grant is None or decision.valid_until is None:
            raise TypeError("IdentificationGrant needs a decision in identification mode")
        self.device_id = decision.grant.device_id
        self.site = decision.grant.site
        self.deployment_tags = decision.grant.deployment_tags
        self.serial = decision.serial
        self.valid_until = decision.valid_until
        _ISSUED.add(self)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "valid_until"):
            raise AttributeError("IdentificationGrant is immutable")
        object.__setattr__(self, name, value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("IdentificationGrant cannot be copied or pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("IdentificationGrant cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("IdentificationGrant cannot be copied")

    def is_live(self, now: dt.datetime) -> bool:
        return firmware_build_time() <= now < self.valid_until


_GATE_SEAL = object()
_ISSUED: "weakref.WeakSet[IdentificationGrant]" = weakref.WeakSet()


def is_gate_issued(grant: object) -> bool:
    return isinstance(grant, IdentificationGrant) and any(grant is g for g in _ISSUED)


@dataclass(frozen=True, slots=True)
class GateDecision(PolicyDecision):
    """A decision as the gate acted on it: audited, and carrying the grant it issued in identification mode."""

    identification: IdentificationGrant | None = field(default=None, compare=False, repr=False)

    @classmethod
    def issued(cls, decision: PolicyDecision, identification: IdentificationGrant | None) -> GateDecision:
        return cls(**{f.name: getattr(decision, f.name) for f in fields(PolicyDecision)},
                   identification=identification)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class PolicyPreview:
    """What the gate would decide now, and what it would make of the locally installed CRL."""

    decision: PolicyDecision
    local_crl: CrlResult


def preview_decision(config: PolicyConfig, now: dt.datetime, *,
                     vocabulary: Vocabulary | None = None) -> PolicyPreview:
    """The gate's decision without its side effects: no directory made, no CRL stored, no record, no grant.

    Why: `edge-camera policy` is how an installer asks the device what it
    would do, and asking must not change the answer the service finds later
    (a stored CRL, an audit record the broker never saw). The one thing this
    cannot tell is whether the audit log is writable by the service.
    """
    installed = read_installed_crl(config, load_crl_issuers(config))
    decision = evaluate(load_material(config, installed.crl), now, build_time=firmware_build_time(),
                        vocabulary=vocabulary)
    return PolicyPreview(decision, installed.local)


class PolicyGate:
    """Reads the installed material, decides, audits each change of decision, mints identification grants.

    The service calls `decide()` at start, after `crl_store` applied a CRL, on
    SIGHUP (after `crl_store.reload()`), at the latest at `valid_until`, and
    as soon as the clock is seen synchronised.
    Each call withdraws the grants earlier calls issued, so identification
    sessions must be reopened with the new decision's grant.

    `clock_sync` says whether `clock` can be trusted (edge.policy.clock): while
    it says no, the decision is detection, with the reason, whatever else
    passed. The service hands in the system's sources; without one, the caller
    vouches for the clock it hands in (a fixed time in a test, a replay).
    """

    def __init__(self, config: PolicyConfig, *, audit: AuditLog | None = None,
                 clock: Callable[[], dt.datetime] = _utc_now, vocabulary: Vocabulary | None = None,
                 clock_sync: ClockSync | None = None) -> None:
        self.config = config
        self.audit = audit
        self.clock = clock
        self.vocabulary = vocabulary
        self.clock_sync = clock_sync
        # The last reading of `clock_sync`: None until one was taken (or without a source).
        self.clock_state: ClockState | None = None
        self._issued: "weakref.WeakSet[IdentificationGrant]" = weakref.WeakSet()
        self.crl_store = CrlStore(config.state_dir, load_crl_issuers(config), local_path=config.crl, audit=audit)
        # The locally installed CRL counts from the start, not only after the first SIGHUP.
        self.startup_crl = self.crl_store.reload()

    def decide(self) -> GateDecision:
        now = self.clock()
        decision = self._with_clock_sync(evaluate(load_material(self.config, self.crl_store.current()), now,
                                                  build_time=firmware_build_time(), vocabulary=self.vocabulary))
        problem = self._audit(decision)
        if problem is not None and decision.mode is Mode.IDENTIFICATION:
            # Identification without an audit trail is not allowed; detection is unaffected.
            failed = Check("audit", False, f"{problem}: identification needs a working audit log")
            decision = replace(decision, mode=Mode.DETECTION, reasons=(failed.detail,),
                               checks=decision.checks + (failed,))
        # A new decision withdraws every grant this gate issued before: a certificate revoked
        # a second ago must end identification now, not when the old grant would have expired.
        for old in list(self._issued):
            _ISSUED.discard(old)
        self._issued = weakref.WeakSet()
        grant = None
        if decision.mode is Mode.IDENTIFICATION:
            grant = IdentificationGrant(_GATE_SEAL, decision)
            self._issued.add(grant)
        return GateDecision.issued(decision, grant)

    @property
    def clock_trusted(self) -> bool:
        """Whether the last decision could trust the clock (always, without a sync source)."""
        return self.clock_state is None or self.clock_state.synchronised

    def _with_clock_sync(self, decision: PolicyDecision) -> PolicyDecision:
        """The clock-sync check added; an unsynchronised clock makes the decision detection."""
        if self.clock_sync is None:
            return decision
        state = self.clock_state = self.clock_sync()
        if state.synchronised:
            return replace(decision, checks=decision.checks + (Check(CLOCK_SYNC_CHECK, True, state.detail),))
        failed = Check(CLOCK_SYNC_CHECK, False, f"{CLOCK_UNSYNCED} ({state.detail})")
        reasons = decision.reasons + (failed.detail,) if decision.mode is Mode.DETECTION else (failed.detail,)
        return replace(decision, mode=Mode.DETECTION, reasons=reasons, checks=decision.checks + (failed,))

    def _audit(self, decision: PolicyDecision) -> str | None:
        """Record the decision unless the log's last one is the same; the problem, if the log failed."""
        if self.audit is None:
            return "no audit log is configured"
        try:
            self.audit.append_if_changed(DECISION_EVENT, decision.audit_record())
        except AuditError as exc:
            logger.error("%s", exc)
            return exc.message
        return None
