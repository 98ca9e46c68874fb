"""The service's threads named for the operating system, so `top -H`, `ps -L` and /proc say which one spends the CPU.

Why: Python (3.11) names its threads only for itself; to the kernel every
thread of the service is called after the process, so an operator looking at
a busy device, or a benchmark splitting the service's CPU by thread
(`benchmarks/service.py`), cannot tell the camera reader from the MQTT pump.
Naming the calling thread is a per-thread setting (`prctl(PR_SET_NAME)`, the
call behind `pthread_setname_np`), not a process-wide one.
"""
from __future__ import annotations

import ctypes
import sys
import threading

__all__ = ["NamedThread", "name_this_thread"]

PR_SET_NAME = 15
# The kernel keeps 15 bytes of a thread's name (and a NUL): longer names are cut.
OS_NAME_BYTES = 15


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` (its first 15 bytes) in the kernel's view; nothing happens off Linux."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode("utf-8", "replace")[:OS_NAME_BYTES]), 0, 0, 0)


class NamedThread(threading.Thread):
    """A `threading.Thread` that also carries its name to the kernel as it starts."""

    def run(self) -> None:
        name_this_thread(self.name)
        super().run()
