"""MQTT topic names every part agrees on: the service, the demo's broker ACLs and the device-id rule.

Why here: the topic root, the fleet-wide CRL topic and Home Assistant's
discovery prefix are defaults of the configuration and also appear in broker
ACLs and in the rule that no device may be called `fleet`; one definition
keeps them from drifting apart.
"""
from __future__ import annotations

DEFAULT_TOPIC_ROOT = "edge/v1"
# The topic level under the root that holds fleet-wide topics; no device id may take it.
FLEET_LEVEL = "fleet"
CRL_TOPIC_LEAF = f"{FLEET_LEVEL}/crl"
DEFAULT_DISCOVERY_PREFIX = "homeassistant"
# The per-device topic of identification matches; broker ACLs name it to keep its readers apart.
IDENTITIES_LEAF = "identities"
MQTT_WILDCARDS = "+#"


def crl_topic(topic_root: str) -> str:
    """The retained, signed CRL every device of the fleet reads."""
    return f"{topic_root}/{CRL_TOPIC_LEAF}"

# Renewal topics sit under the fleet level, not under the device's own prefix: the broker's ACL lets a
# device write anything under `<root>/<device>/`, and its certificate topic must be one it can only read.
RENEWAL_LEVEL = f"{FLEET_LEVEL}/renew"
RENEWAL_REQUEST_LEAF = "csr"
RENEWAL_CERTIFICATE_LEAF = "cert"


def renewal_request_topic(topic_root: str, device: str) -> str:
    """Retained: the device's renewal request (a CSR and proof, edge.trust.renewal); `+` for every device."""
    return f"{topic_root}/{RENEWAL_LEVEL}/{device}/{RENEWAL_REQUEST_LEAF}"


def renewal_certificate_topic(topic_root: str, device: str) -> str:
    """Retained: the renewed certificate chain `edge-provision renew` publishes for the device to take."""
    return f"{topic_root}/{RENEWAL_LEVEL}/{device}/{RENEWAL_CERTIFICATE_LEAF}"
