"""The service's threads carry their names to the kernel (what `top -H` and benchmarks/service.py read)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from edge.common.threads import OS_NAME_BYTES, NamedThread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names in /proc are Linux's")


def kernel_name(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def names_seen_by_the_kernel(name: str) -> tuple[str, str]:
    seen: list[str] = []
    done = threading.Event()

    def body() -> None:
        seen.append(kernel_name(threading.get_native_id()))
        done.set()

    NamedThread(target=body, name=name).start()
    assert done.wait(5)
    plain: list[str] = []
    thread = threading.Thread(target=lambda: plain.append(kernel_name(threading.get_native_id())))
    thread.start()
    thread.join(5)
    return seen[0], plain[0]


def test_a_named_thread_is_named_for_the_kernel_and_a_plain_one_is_not() -> None:
    named, plain = names_seen_by_the_kernel("mqtt-pump")
    assert named == "mqtt-pump"
    assert plain != "mqtt-pump"


def test_a_long_name_is_cut_to_what_the_kernel_keeps() -> None:
    named, _ = names_seen_by_the_kernel("identification-worker")
    assert named == "identification-worker"[:OS_NAME_BYTES]
