"""Trust material (control path): certificates, the EdgeGrant extension, the device key, revocation,
deployment tags and the tamper-evident audit log. Shared with the field tool `edge-provision`."""
