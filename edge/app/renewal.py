"""The device's side of renewal, wired into the service: ask in time, take only a certificate that fits, swap, reconnect.

Why here (the imperative shell): the judgement is `edge.trust.renewal` (pure)
and the files are `edge.trust.renewal_files`; this module reads the clock and
the files, publishes the request through the publisher's single writer, and
hears the certificate topic. Detection never waits for any of it: whatever
happens to the certificate, frames go on into the outbox.

What the service shows: the retained status and every health sample carry
the certificate's state (valid, renewing, expired, revoked), its serial,
expiry and days left, and a sentence saying why, so an operator sees a
certificate running out, a refused offer, or why nothing arrives any more.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edge.app import logfmt
from edge.app.config import ServiceConfig
from edge.common.errors import EdgeError
from edge.common.topics import renewal_request_topic
from edge.trust.audit import AuditError
from edge.trust.certificates import CertificateError, load_certificates
from edge.trust.crl import revoked_serial
from edge.trust.device_key import load_device_key
from edge.trust.renewal import (
    Acceptance,
    CertificateState,
    CertificateStatus,
    certificate_status,
    judge_certificate,
    make_request,
    renewal_due_at,
)
from edge.trust.renewal_files import RenewalFiles
from edge.wire import serialize

if TYPE_CHECKING:
    from edge.app.service import Service
    from edge.policy.gate import GateDecision, PolicyGate

log = logging.getLogger(__name__)

# The shortest wait between two looks at the certificate (a lapse computed as "now" must not spin).
MIN_CHECK_S = 1.0
REFUSED_EVENT = "certificate-refused"
RENEWED_EVENT = "certificate-renewed"
REQUESTED_EVENT = "certificate-renewal-requested"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _files(config: ServiceConfig) -> RenewalFiles | None:
    if config.mqtt.cert is None or config.mqtt.key is None:
        return None
    return RenewalFiles(config.mqtt.cert, config.mqtt.key)


def finish_interrupted_swap(config: ServiceConfig) -> None:
    """At start, before the certificate is read: complete a swap a power cut interrupted (edge.trust.renewal_files)."""
    files = _files(config)
    try:
        if files is not None and files.finish_swap():
            logfmt.event(log, "renewal", f"finished installing the renewed certificate {files.cert} "
                                         "(the last run stopped half way)", cert=str(files.cert))
    except OSError as exc:
        logfmt.event(log, "renewal", f"cannot finish installing the renewed certificate: {exc}; "
                                     "the previous certificate stays in use", level=logging.ERROR)


def report(status: CertificateStatus) -> serialize.CertificateReport:
    return serialize.CertificateReport(status.state.value, f"{status.serial:x}", status.not_after.timestamp(),
                                       status.days_left, status.detail)


class RenewalAgent:
    """Watches the device certificate, asks for renewal, and takes (or refuses) what comes back."""

    def __init__(self, service: Service, config: ServiceConfig, files: RenewalFiles, current: x509.Certificate,
                 gate: PolicyGate | None, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self.service = service
        self.config = config
        self.files = files
        self.current = current
        self.gate = gate
        self.clock = clock
        self.device = config.device.id
        self.publisher = service.publisher
        self.request_topic = renewal_request_topic(config.mqtt.topic_root, self.device)
        # Renewal needs the trust anchor to judge what comes back, so it runs only with [policy].
        self.active = config.policy is not None and config.renewal.enabled
        self.revoked_at: dt.datetime | None = None
        self.last_refusal: str | None = None
        self.requested = False
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._shown: tuple[object, ...] | None = None

    # --- what status and health say -----------------------------------------------------------
    def status(self) -> CertificateStatus:
        with self._lock:
            return certificate_status(self.current, self.clock(),
                                      renew_at=self.config.renewal.renew_at if self.active else None,
                                      revoked_at=self.revoked_at, last_refusal=self.last_refusal)

    def report(self) -> serialize.CertificateReport:
        return report(self.status())

    def _show(self) -> None:
        """Retained status again when what it says changed (not for every day that passes)."""
        current = self.status()
        shown = (current.state, current.serial, self.last_refusal)
        if shown == self._shown:
            return
        self._shown = shown
        self.service.status = replace(self.service.status, certificate=report(current))
        self.publisher.update_status(self.service.status)
        level = logging.INFO if current.state in (CertificateState.VALID, CertificateState.RENEWING) else logging.ERROR
        logfmt.event(log, "certificate", current.detail, level=level, state=current.state.value,
                     serial=f"{current.serial:x}")

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.service.status = replace(self.service.status, certificate=self.report())
        self.service.certificate_report = self.report
        self.service.on_decision = self.on_decision
        if self.active:
            self.publisher.on_certificate = self.offer
        current = self.status()
        if current.state is CertificateState.VALID:  # the start line names it: no line of its own
            self._shown = (current.state, current.serial, self.last_refusal)
            self.publisher.update_status(self.service.status)
        self.check()

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def check(self) -> None:
        """Timer: past `renew_at` of its life, ask (once per certificate, and again after a restart)."""
        with self._lock:
            self._follow_file()
            now = self.clock()
            due = renewal_due_at(self.current, self.config.renewal.renew_at)
            expired = now > self.current.not_valid_after_utc
            if self.active and now >= due and not expired and not self.requested and self.revoked_at is None:
                self._ask(now)
            self._show()
            wait = self.config.renewal.check_s
            if self.active and now < due:
                wait = min(wait, (due - now).total_seconds())
            if not expired:
                wait = min(wait, (self.current.not_valid_after_utc - now).total_seconds() + MIN_CHECK_S)
            self._timer = threading.Timer(max(MIN_CHECK_S, wait), self.check)
            self._timer.daemon = True
            self._timer.start()

    def _follow_file(self) -> None:
        """A certificate installed by hand (and SIGHUP) is the one in use from now on: watch that one."""
        try:
            installed = load_certificates(self.files.cert.read_bytes(), f"[mqtt] cert {self.files.cert}")[0]
        except (CertificateError, OSError):
            return  # the TLS layer says why at the next connection; keep watching the one in memory
        if installed != self.current:
            self.current, self.requested, self.last_refusal = installed, False, None

    def _ask(self, now: dt.datetime) -> None:
        try:
            current_key = load_device_key(self.files.key)
            new_key = self.files.new_key() if self.config.renewal.rotate_key else None
        except (EdgeError, OSError) as exc:
            logfmt.event(log, "renewal", f"cannot make a renewal request: {exc}", level=logging.ERROR)
            return
        request = make_request(self.device, current_key, self.current, new_key)
        payload = serialize.renewal_request(self.device, now.timestamp(), request.rotation, request.csr_pem,
                                            request.certificate_pem, request.proof)
        self.publisher.publish_retained(self.request_topic, payload)
        self.requested = True
        self._audit(REQUESTED_EVENT, {"serial": f"{self.current.serial_number:x}", "rotation": request.rotation})
        logfmt.event(log, "renewal", f"certificate {self.current.serial_number:x} expires on "
                                     f"{self.current.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renewal requested on "
                                     f"{self.request_topic} ({'new key' if request.rotation else 'same key'})",
                     topic=self.request_topic, rotation=request.rotation)

    # --- what comes back ----------------------------------------------------------------------
    def _held_key(self) -> ec.EllipticCurvePublicKey:
        pending = self.files.pending_key()
        return (pending if pending is not None else load_device_key(self.files.key)).public_key()

    def _anchors(self) -> tuple[x509.Certificate, ...]:
        assert self.config.policy is not None  # `active` implies it
        return tuple(load_certificates(self.config.policy.trust_anchor.read_bytes(), "trust anchor"))

    def offer(self, payload: bytes) -> None:
        """The certificate topic (paho's thread): judge, then install and reconnect, or refuse and keep the old one."""
        with self._lock:
            try:
                verdict = judge_certificate(payload, device_id=self.device, current=self.current,
                                            anchors=self._anchors(), held_key=self._held_key(), now=self.clock(),
                                            crl=None if self.gate is None else self.gate.crl_store.current())
            except (EdgeError, OSError) as exc:
                self._refuse(f"cannot be checked: {exc}", None)
                return
            if verdict.outcome is Acceptance.UNCHANGED:
                return
            if verdict.outcome is Acceptance.REFUSED or verdict.certificate is None:
                self._refuse(verdict.reason, verdict.certificate)
                return
            try:
                self.files.install(payload)
                self.publisher.replace_credentials(self.files.cert, self.files.key)
            except (EdgeError, OSError) as exc:
                self._refuse(f"cannot be installed: {exc}", verdict.certificate)
                return
            old, self.current = self.current, verdict.certificate
            self.requested, self.last_refusal, self.revoked_at = False, None, None
        self.publisher.publish_retained(self.request_topic, b"")  # answered: clear the request at the broker
        self._audit(RENEWED_EVENT, {"old_serial": f"{old.serial_number:x}",
                                    "serial": f"{self.current.serial_number:x}",
                                    "not_after": self.current.not_valid_after_utc.isoformat()})
        logfmt.event(log, "renewal", f"renewed certificate installed: {verdict.reason}; reconnecting with it",
                     serial=f"{self.current.serial_number:x}")
        if self.service.redecide is not None:
            self.service.redecide()  # the gate decides again on the new certificate
        self._show()

    def _refuse(self, reason: str, cert: x509.Certificate | None) -> None:
        with self._lock:
            self.last_refusal = reason
        self._audit(REFUSED_EVENT, {"reason": reason, "serial": None if cert is None else f"{cert.serial_number:x}"})
        logfmt.event(log, "renewal", f"certificate offered for renewal refused, the current one stays in use: {reason}",
                     level=logging.ERROR)
        self._show()

    def on_decision(self, decision: GateDecision) -> None:
        """Every gate decision: is the certificate in use on the CRL the device holds?"""
        crl = None if self.gate is None else self.gate.crl_store.current()
        with self._lock:
            serial = self.current.serial_number
            self.revoked_at = None if crl is None or decision.serial != serial else revoked_serial(crl, serial)
        self._show()

    def _audit(self, event: str, data: dict[str, object]) -> None:
        if self.gate is None or self.gate.audit is None:
            return
        try:
            self.gate.audit.append(event, data)
        except AuditError as exc:  # a full disk must not stop renewal
            log.error("%s (%s)", exc, event)


def attach_renewal(service: Service, config: ServiceConfig, gate: PolicyGate | None,
                   clock: Callable[[], dt.datetime] = _utc_now) -> RenewalAgent | None:
    """Certificate state in status and health always; renewal itself with [policy] and [renewal] enabled."""
    files = _files(config)
    if files is None:
        return None
    try:
        current = load_certificates(files.cert.read_bytes(), f"[mqtt] cert {files.cert}")[0]
    except (CertificateError, OSError) as exc:
        logfmt.event(log, "renewal", f"the device certificate cannot be read, so it is not watched: {exc}",
                     level=logging.ERROR)
        return None
    agent = RenewalAgent(service, config, files, current, gate, clock)
    agent.start()
    if gate is not None and service.redecide is not None:
        service.redecide()  # the decision made before the agent listened: revoked already?
    return agent

