"""Human-readable account of a certificate: what it grants and what the device would decide.

Why through the device's own `evaluate`: the installer must see the decision
the camera will make, not a second opinion that could drift from it.
"""
from __future__ import annotations

import datetime as dt

from cryptography import x509

from edge.trust.certificates import read_device_identity
from edge.common.errors import EdgeError
from edge.policy.build import firmware_build_time
from edge.policy.decision import Mode, PolicyDecision, PolicyMaterial, evaluate
from edge.trust.tags import classify_tag

KEY_CHECK = "key"


def decide_for(leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...],
               anchors: tuple[x509.Certificate, ...], crl: x509.CertificateRevocationList | None,
               now: dt.datetime, device_key: object | None = None) -> PolicyDecision:
    """The gate's decision; without the device's key, binding is assumed and reported as unchecked."""
    material = PolicyMaterial(leaf, intermediates, anchors, device_key or leaf.public_key(), crl)
    return evaluate(material, now, build_time=firmware_build_time())


def render(leaf: x509.Certificate, intermediates: tuple[x509.Certificate, ...],
           decision: PolicyDecision | None, key_checked: bool) -> list[str]:
    lines = [f"certificate   serial {leaf.serial_number:x}",
             f"  subject     {leaf.subject.rfc4514_string()}",
             f"  issuer      {leaf.issuer.rfc4514_string()}",
             f"  valid       {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"]
    try:
        identity = read_device_identity(leaf)
        grant = identity.grant
        lines += [f"  device id   {identity.device_id}",
                  f"  site        {grant.site}",
                  f"  grants      {', '.join(grant.capabilities)}",
                  f"  policy ver. {grant.policy_version}",
                  "  tags"]
        for tag in grant.deployment_tags:
            verdict = classify_tag(tag)
            lines.append(f"    - {tag!r}: {verdict.tag_class.value}")
        if not grant.deployment_tags:
            lines.append("    (none)")
    except EdgeError as exc:
        lines.append(f"  grant       unreadable: {exc.message}")
    lines.append("chain")
    lines.append(f"  0 {leaf.subject.rfc4514_string()} (this certificate)")
    for depth, ca in enumerate(intermediates, start=1):
        lines.append(f"  {depth} {ca.subject.rfc4514_string()} (valid to {ca.not_valid_after_utc:%Y-%m-%d})")
    if decision is None:
        lines.append("decision      not evaluated: give --trust-anchor to check the chain and the grant")
        return lines
    allowed = decision.mode is Mode.IDENTIFICATION
    lines.append("checks")
    for check in decision.checks:
        if check.name == KEY_CHECK and not key_checked:
            lines.append("  [ -- ] key: binding to the device's own key is checked on the device")
            continue
        lines.append(f"  [{' ok ' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    lines.append(f"identification would be {'ALLOWED' if allowed else 'OFF'}; detection runs either way")
    return lines
