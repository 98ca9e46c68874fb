"""Refusals of `edge-provision`, each with the exit code documented in docs/provisioning.md."""
from __future__ import annotations

from edge.common.errors import EdgeError

EXIT_OK = 0
EXIT_USAGE = 2  # argparse's own code for a wrong command line


class UsageError(EdgeError):
    """The options together make no sense (argparse alone cannot tell), e.g. a server certificate with no name."""

    exit_code = EXIT_USAGE


class InputFileError(EdgeError):
    """A file given to the tool is missing, unreadable or not what it should be."""

    exit_code = 3


class PassphraseError(EdgeError):
    """No passphrase could be obtained, or it does not open the key."""

    exit_code = 4


class RefusedError(EdgeError):
    """The request is well formed but the scheme forbids it; nothing was signed."""

    exit_code = 5


class VerificationFailed(EdgeError):
    """A certificate or bundle does not verify; the device would not accept it."""

    exit_code = 6


class OutputExistsError(EdgeError):
    """An output file exists; the tool never overwrites keys, CAs or certificates."""

    exit_code = 7


class BrokerError(EdgeError):
    """`renew --broker`: the broker cannot be reached, refuses the operator, or refuses to take an answer."""

    exit_code = 8
