"""The identification gate (control path): a pure decision over loaded material and a clock, the loading of
that material, and the gate that audits decisions and alone issues `IdentificationGrant`s."""
