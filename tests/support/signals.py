"""The service installs its own SIGTERM, SIGINT and SIGHUP handlers in the test's process; this puts pytest's back."""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

# What `Service.install_signal_handlers` takes over (edge/app/service.py).
SERVICE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """Whatever a test's service does to the handlers, the next test starts with the ones it had."""
    saved = {sig: signal.getsignal(sig) for sig in SERVICE_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
