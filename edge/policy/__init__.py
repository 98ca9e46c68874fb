"""The identification gate (control path), in three layers.

- `decision`: pure; given the loaded material and a clock reading, the mode and every reason.
- `material`: reads certificate, chain, trust anchors, device key and CRL from files, and writes nothing.
- `gate`: loads, decides, audits each change of decision, and alone issues `IdentificationGrant`s.

`config` is the `[policy]` configuration section. The names below are the public API;
the submodules' other names are theirs.
"""
from edge.policy.build import firmware_build_time
from edge.policy.config import PolicyConfig
from edge.policy.decision import (
    FIRMWARE_POLICY_VERSION,
    Check,
    Mode,
    PolicyDecision,
    PolicyMaterial,
    evaluate,
    verify_chain,
)
from edge.policy.gate import (
    DECISION_EVENT,
    GateDecision,
    IdentificationGrant,
    PolicyGate,
    PolicyPreview,
    is_gate_issued,
    preview_decision,
)
from edge.policy.material import InstalledCrl, load_crl_issuers, load_material, read_installed_crl

__all__ = [
    "DECISION_EVENT",
    "FIRMWARE_POLICY_VERSION",
    "Check",
    "GateDecision",
    "IdentificationGrant",
    "InstalledCrl",
    "Mode",
    "PolicyConfig",
    "PolicyDecision",
    "PolicyGate",
    "PolicyMaterial",
    "PolicyPreview",
    "evaluate",
    "firmware_build_time",
    "is_gate_issued",
    "load_crl_issuers",
    "load_material",
    "preview_decision",
    "read_installed_crl",
    "verify_chain",
]
