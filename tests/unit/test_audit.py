"""The hash-chained audit log: edits, deletions, insertions and reordering are detected."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edge.trust.audit import GENESIS_HASH, AuditError, AuditLog, record_hash, verify_log


def write(path: Path, n: int, on_append=None) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    log = AuditLog(path, on_append=on_append)
    return [log.append("event", {"i": i}) for i in range(n)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_chain_links_every_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    records = write(path, 4)
    assert records[0]["prev"] == GENESIS_HASH
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:]))
    assert [r["seq"] for r in records] == [0, 1, 2, 3]
    result = verify_log(path)
    assert result.ok and result.records == 4 and result.head == records[-1]["hash"]


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_on_append_sees_each_durable_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    seen: list[dict[str, object]] = []

    def publish(record: dict[str, object]) -> None:
        assert json.loads(lines(path)[-1]) == record  # already on disk when published
        seen.append(record)

    records = write(path, 3, publish)
    assert seen == records


def test_failing_callback_does_not_lose_the_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    def broken(record: dict[str, object]) -> None:
        raise RuntimeError("broker down")

    write(path, 2, broken)
    assert verify_log(path).records == 2


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = write(path, 2)
    again = AuditLog(path).append("later")
    assert again["seq"] == 2 and again["prev"] == first[-1]["hash"]
    assert verify_log(path).ok


def test_edit_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 3)
    text = lines(path)
    text[1] = text[1].replace('"i":1', '"i":7')
    path.write_text("\n".join(text) + "\n")
    result = verify_log(path)
    assert not result.ok and "record 1 was altered" in result.problems[0]


def test_edit_with_recomputed_hash_is_detected_at_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 3)
    text = lines(path)
    record = json.loads(text[1])
    record["data"] = {"i": 7}
    record["hash"] = record_hash(record)
    text[1] = json.dumps(record)
    path.write_text("\n".join(text) + "\n")
    result = verify_log(path)
    assert not result.ok and any("does not follow" in p for p in result.problems)


def test_deletion_inside_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 4)
    text = lines(path)
    del text[2]
    path.write_text("\n".join(text) + "\n")
    result = verify_log(path)
    assert not result.ok and any("does not follow" in p for p in result.problems)


def test_reordering_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 3)
    text = lines(path)
    text[0], text[1] = text[1], text[0]
    path.write_text("\n".join(text) + "\n")
    assert not verify_log(path).ok


def test_truncated_tail_shows_in_the_head(tmp_path: Path) -> None:
    """A deleted tail leaves a valid chain; the head then differs from the last one published."""
    path = tmp_path / "audit.log"
    published: list[dict[str, object]] = []
    write(path, 3, published.append)
    path.write_text("\n".join(lines(path)[:2]) + "\n")
    result = verify_log(path)
    assert result.ok and result.head != published[-1]["hash"]


def test_torn_last_line_is_reported_and_the_chain_continues(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    records = write(path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 2, "ti')
    new = AuditLog(path).append("after power cut")
    assert new["prev"] == records[-1]["hash"]
    result = verify_log(path)
    assert not result.ok and any("not an audit record" in p for p in result.problems)


def test_garbage_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 1)
    with open(path, "a") as handle:
        handle.write("hello\n")
    assert "not an audit record" in verify_log(path).problems[0]


def test_missing_log_is_empty_and_intact(tmp_path: Path) -> None:
    result = verify_log(tmp_path / "none.log")
    assert result.ok and result.records == 0


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AuditError, match="cannot open audit log"):
        AuditLog(blocker / "audit.log").append("x")


def test_verify_can_insist_the_log_exists(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="does not exist"):
        verify_log(tmp_path / "none.log", missing_ok=False)
    assert not (tmp_path / "none.log").exists()


# --- append only what changed ---------------------------------------------------------------------

DECISION = {"mode": "detection", "reasons": ("no revocation list",), "serial": "3e9"}


def test_same_data_again_is_not_appended_even_by_a_new_writer(tmp_path: Path) -> None:
    """A restarted service is a new AuditLog over the same file: the file, not memory, says what was last."""
    path = tmp_path / "audit.log"
    sent: list[dict[str, object]] = []
    first = AuditLog(path, on_append=sent.append).append_if_changed("decision", DECISION)
    assert first is not None and json.loads(lines(path)[0])["data"] == {**DECISION, "reasons": ["no revocation list"]}
    for _ in range(3):
        assert AuditLog(path, on_append=sent.append).append_if_changed("decision", dict(DECISION)) is None
    assert len(lines(path)) == 1 and len(sent) == 1


def test_changed_data_is_appended_and_other_events_do_not_hide_the_last_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append_if_changed("decision", DECISION)
    log.append("crl-applied", {"n": 1})
    log.append("gallery-erase", {"person": "p-1"})
    assert log.append_if_changed("decision", DECISION) is None  # the last *decision* is still the same
    changed = {**DECISION, "mode": "identification", "reasons": ()}
    assert log.append_if_changed("decision", changed) is not None
    assert log.append_if_changed("decision", DECISION) is not None  # back again is a change too
    assert [json.loads(line)["event"] for line in lines(path)] == [
        "decision", "crl-applied", "gallery-erase", "decision", "decision"]
    assert verify_log(path).ok


def test_the_last_record_is_found_beyond_one_read_window(tmp_path: Path) -> None:
    """Many other events after the last decision: the backwards search crosses window edges mid-line."""
    from edge.trust.audit import TAIL_WINDOW_BYTES

    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append_if_changed("decision", DECISION)
    filler = "x" * 997  # not a divisor of the window, so lines straddle its edges
    while path.stat().st_size < 3 * TAIL_WINDOW_BYTES:
        log.append("other", {"filler": filler})
    before = path.stat().st_size
    assert log.append_if_changed("decision", DECISION) is None and path.stat().st_size == before
    assert log.append_if_changed("decision", {**DECISION, "serial": "3ea"}) is not None


def test_an_altered_last_record_does_not_stand_for_the_decision(tmp_path: Path) -> None:
    """Someone edits the recorded decision to match what the device would say next: it is appended anyway."""
    path = tmp_path / "audit.log"
    AuditLog(path).append_if_changed("decision", DECISION)
    changed = {**DECISION, "mode": "identification"}
    path.write_text(path.read_text().replace('"detection"', '"identification"'))
    assert AuditLog(path).append_if_changed("decision", changed) is not None
    assert len(lines(path)) == 2 and not verify_log(path).ok


def test_a_torn_tail_is_skipped_when_looking_for_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    AuditLog(path).append_if_changed("decision", DECISION)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 1, "event": "decision", "da')  # power cut mid-write
    assert AuditLog(path).append_if_changed("decision", DECISION) is None
