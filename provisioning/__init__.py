"""The installer's side of provisioning: CAs, issuing, revocation, bundles (`edge-provision`)."""
