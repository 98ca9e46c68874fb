"""Errors a person can act on.

Why: installers and operators read these, so every error says what was wrong
and what was expected, and the command-line shell prints them without a
traceback. Anything that is not an `EdgeError` is a bug and keeps its traceback.
"""
from __future__ import annotations

import re
import sys
from argparse import Namespace
from typing import Callable

# The shell's convention for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
# sysexits(3) EX_CONFIG: `edge-camera run` exits with it on a permanent error (a refused configuration,
# an unreadable or tampered model), and the unit's `RestartPreventExitStatus=78` keeps systemd from
# restarting a service that would only fail the same way again.
EXIT_CONFIG = 78


class EdgeError(Exception):
    """A refusal or failure the user can fix; `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  what to do: {self.hint}"


class ConfigError(EdgeError):
    """A configuration value is missing, malformed or forbidden."""

    exit_code = 2

    def __init__(self, where: str, problem: str, expected: str | None = None) -> None:
        message = f"configuration {where}: {problem}"
        super().__init__(message, f"expected {expected}" if expected else None)
        self.where = where


class ModelError(EdgeError):
    """A model file is missing, does not match its manifest, or cannot run here."""

    exit_code = 3


class AcceleratorError(EdgeError):
    """An accelerator that was asked for explicitly is absent or failed to load."""

    exit_code = 4


class InputError(EdgeError):
    """An image, video or camera could not be read."""

    exit_code = 5


# cryptography's Rust core reports DER it cannot parse as `ParseError { kind: ShortData { needed: 357 } ... }`.
_DER_PARSE = re.compile(r"error parsing asn1 value: ParseError \{ kind: (\w+)[^)]*")
_DER_KINDS = {"ShortData": "it ends too early (a truncated file)", "ExtraData": "extra bytes follow its end",
              "UnexpectedTag": "an unexpected field", "InvalidValue": "an invalid value",
              "InvalidLength": "an invalid length", "IntegerOverflow": "a number too large",
              "InvalidTag": "an invalid field"}
# The X.509 verifier's wording (`cryptography.x509.verification.VerificationError`), said plainly.
_VERIFIER = (("validation failed: ", ""),
             ("candidates exhausted: ", "no chain to a trusted issuer was found: "),
             ("cert is not valid at validation time", "a certificate in the chain is expired or not yet valid "
                                                      "by the device's clock"))


def plain_crypto(text: str) -> str:
    """A message from the cryptography library in words an installer can act on.

    Why here: its Rust parser and X.509 verifier word their errors for
    programmers ("ParseError { kind: ShortData ... }", "candidates exhausted");
    these reach people through certificate checks and the policy decision.
    """
    def der(match: re.Match[str]) -> str:
        kind = match.group(1)
        return f"damaged DER data: {_DER_KINDS.get(kind, re.sub(r'(?<!^)(?=[A-Z])', ' ', kind).lower())}"

    text = _DER_PARSE.sub(der, text)
    for programmer, plain in _VERIFIER:
        text = text.replace(programmer, plain)
    return text


def is_permanent(exc: EdgeError) -> bool:
    """Whether a restart cannot help: the configuration or the model must change first.

    Everything else (a camera, a broker, a disk, an accelerator) may come back
    by itself, so the service retries it, and a failure that still ends the
    process is one systemd restarts.
    """
    return isinstance(exc, (ConfigError, ModelError))


def run_handler(prog: str, handler: Callable[[Namespace], int], args: Namespace, prefix: str = "") -> int:
    """Run a command-line handler as the field tools do: a refusal prints its
    message (no traceback) and returns its exit code; Ctrl-C returns 130."""
    try:
        return int(handler(args))
    except EdgeError as exc:
        print(f"{prog}: {prefix}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
