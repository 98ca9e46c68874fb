"""A window spilled while the publisher fetches is not passed over.

Why: the 500-device run left 771 messages in outboxes, never sent. A fetch
listed the stored windows, the writer then spilled the window to disk, and
the fetch looked at the (now newer) window: it saw neither copy of the
spilled messages, returned a newer one, and the publisher's cursor moved
past them for good. The interleaving is made here on purpose: the fetch
reads an older stored window (`unpack`), and while it does, the real writer
thread spills the window and takes a new message.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.delivery import outbox as outbox_module
from edge.delivery.outbox import Outbox, OutboxConfig, Pending
from support.mosquitto import wait_until

TOPIC = "edge/v1/cam-a/detections"
WINDOW_MS = 200.0


def _submit(box: Outbox) -> None:
    box.submit(TOPIC, lambda seq: f'{{"seq": {seq}}}'.encode())


def test_a_spill_during_a_fetch_leaves_no_message_behind_the_cursor(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxConfig(window_ms=WINDOW_MS))
    box.start()
    try:
        _submit(box)  # id 1, spilled once its window ages: the stored window the fetch reads
        assert wait_until(lambda: bool(box._firsts) and not box._held)
        _submit(box)
        _submit(box)  # ids 2 and 3 in the window
        assert wait_until(lambda: len(box._held) == 2, timeout=WINDOW_MS / 1000 / 2)
        real_unpack = outbox_module.unpack

        def unpack_while_the_writer_spills(blob: bytes) -> list[Pending]:
            # The writer spills ids 2 and 3 (their window ages) and takes id 4 into a new window.
            assert wait_until(lambda: not box._held)
            _submit(box)
            assert wait_until(lambda: len(box._held) == 1)
            return real_unpack(blob)

        monkeypatch.setattr(outbox_module, "unpack", unpack_while_the_writer_spills)
        fetched = [p.id for p in box.fetch(0, 20)]
        monkeypatch.setattr(outbox_module, "unpack", real_unpack)
        # What a fetch returns is the start of what is unsettled: nothing below its last id is missing.
        assert fetched == list(range(1, len(fetched) + 1))
        assert fetched[:3] == [1, 2, 3]
        later = [p.id for p in box.fetch(fetched[-1], 20)]
        assert sorted(fetched + later) == [1, 2, 3, 4]
    finally:
        box.close()
