"""The gate trusts the clock for identification only once it is synchronised (edge.policy.clock).

Real certificates and a real audit log; the sync source is a flag file the test owns.
"""
from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edge.policy import Mode, PolicyGate, is_gate_issued
from edge.policy.clock import (
    MAX_ERROR_US,
    STA_UNSYNC,
    ClockState,
    FlagFileSync,
    SystemClockSync,
    kernel_clock_state,
    timedatectl_clock_state,
)
from edge.policy.gate import CLOCK_SYNC_CHECK, CLOCK_UNSYNCED
from edge.trust.audit import AuditLog, verify_log
from support.pki import NOW, Device, Pki, grant, provision


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture
def device(tmp_path: Path, pki: Pki) -> Device:
    dev = provision(tmp_path, pki)
    (dev.state_dir / "installed-crl.pem").write_bytes(pki.crl(NOW).public_bytes(serialization.Encoding.PEM))
    return dev


def gate_for(device: Device, flag: Path) -> PolicyGate:
    gate = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW,
                      clock_sync=FlagFileSync(flag))
    gate.crl_store.reload()
    return gate


def test_identification_waits_for_the_clock_then_follows_it(device: Device, tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    gate = gate_for(device, flag)
    before = gate.decide()
    assert before.mode is Mode.DETECTION and before.identification is None
    assert before.reasons == (f"{CLOCK_UNSYNCED} (no {flag})",)
    assert [c.name for c in before.checks if not c.ok] == [CLOCK_SYNC_CHECK]
    assert not gate.clock_trusted
    flag.touch()
    after = gate.decide()
    assert after.mode is Mode.IDENTIFICATION and is_gate_issued(after.identification)
    assert gate.clock_trusted and any(c.name == CLOCK_SYNC_CHECK and c.ok for c in after.checks)
    log = device.state_dir / "audit.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["data"]["mode"] for r in records if r["event"] == "policy-decision"] == ["detection", "identification"]
    assert verify_log(log).ok


def test_an_unsynchronised_clock_adds_its_reason_to_a_detection_decision(tmp_path: Path, pki: Pki) -> None:
    dev = provision(tmp_path, pki, grant(capabilities=("detection",)))
    decision = gate_for(dev, tmp_path / "none").decide()
    assert decision.mode is Mode.DETECTION and len(decision.reasons) >= 2
    assert decision.reasons[-1].startswith(CLOCK_UNSYNCED)


def test_without_a_sync_source_the_caller_vouches_for_its_clock(device: Device) -> None:
    gate = PolicyGate(device.config, audit=AuditLog(device.state_dir / "audit.log"), clock=lambda: NOW)
    gate.crl_store.reload()
    decision = gate.decide()
    assert decision.mode is Mode.IDENTIFICATION and gate.clock_trusted
    assert all(c.name != CLOCK_SYNC_CHECK for c in decision.checks)


def test_system_sources_in_order_the_first_that_can_tell_decides(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    asked: list[str] = []

    def source(name: str, state: ClockState | None):  # type: ignore[no-untyped-def]
        def read() -> ClockState | None:
            asked.append(name)
            return state
        return read

    unsynced = ClockState(False, "kernel says no")
    sync = SystemClockSync(FlagFileSync(flag), source("kernel", unsynced), source("timedatectl", ClockState(True, "yes")))
    assert sync() == unsynced and asked == ["kernel"]  # the kernel answered: timedatectl is not asked
    flag.touch()
    asked.clear()
    assert sync().synchronised and asked == []  # timesyncd's flag is enough
    flag.unlink()
    sandboxed = SystemClockSync(FlagFileSync(flag), source("kernel", None), source("timedatectl", ClockState(True, "yes")))
    assert sandboxed() == ClockState(True, "yes") and asked == ["kernel", "timedatectl"]
    silent = SystemClockSync(FlagFileSync(flag), source("kernel", None), source("timedatectl", None))
    state = silent()
    assert not state.synchronised and "no time synchronisation service answered" in state.detail


@pytest.mark.parametrize("status, maxerror, synced", [
    (0, 1000, True), (STA_UNSYNC, 1000, False), (0, MAX_ERROR_US, False), (0x2001 | STA_UNSYNC, 0, False),
])
def test_kernel_status_reads_sta_unsync_and_the_error_bound(status: int, maxerror: int, synced: bool) -> None:
    def adjtimex(timex: ctypes.Structure) -> int:
        timex.status = status  # type: ignore[attr-defined]
        timex.maxerror = maxerror  # type: ignore[attr-defined]
        return 0

    state = kernel_clock_state(adjtimex)
    assert state is not None and state.synchronised is synced


def test_kernel_status_refused_by_seccomp_means_ask_elsewhere() -> None:
    assert kernel_clock_state(lambda _timex: -1) is None


def test_the_real_adjtimex_answers_here() -> None:
    """Outside the service's sandbox a read-only adjtimex needs no privilege."""
    state = kernel_clock_state()
    assert state is not None and state.detail.startswith("kernel NTP status")


@pytest.mark.parametrize("answer, expected", [("yes", True), ("no", False), (None, None), ("", None)])
def test_timedatectl_answer(answer: str | None, expected: bool | None) -> None:
    state = timedatectl_clock_state(lambda _args: answer)
    assert (state.synchronised if state else None) is expected
