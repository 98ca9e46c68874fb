"""Subscribers' de-duplication on (device, seq) (edge/wire/dedupe.py), as docs/mqtt.md tells them to."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.wire.dedupe import Deduplicator, DeviceSeqs, first_time


def test_a_redelivery_is_dropped_and_other_devices_are_apart() -> None:
    d = Deduplicator()
    kept = [(dev, seq) for dev, seq in [("a", 1), ("a", 2), ("b", 1), ("a", 2), ("b", 1), ("a", 1), ("a", 3)]
            if d.first_time(dev, seq)]
    assert kept == [("a", 1), ("a", 2), ("b", 1), ("a", 3)]
    assert d.duplicates == 3


def test_memory_stays_small_once_the_seqs_are_contiguous() -> None:
    state = DeviceSeqs()
    for seq in [3, 1, 2, 5, 4]:
        state, new = first_time(state, seq)
        assert new
    assert state == DeviceSeqs(floor=5)


def test_a_gap_that_never_fills_is_given_up_past_the_bound() -> None:
    state = DeviceSeqs()
    for seq in range(2, 7):  # seq 1 was lost
        state, _ = first_time(state, seq, max_ahead=4)
    assert state.floor == 6 and state.above == frozenset() and state.gaps_given_up == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 60)), max_size=300))
def test_keeps_exactly_the_first_occurrence_of_each_pair_while_within_the_bound(
        arrivals: list[tuple[str, int]]) -> None:
    d = Deduplicator(max_ahead=1000)
    kept = [pair for pair in arrivals if d.first_time(*pair)]
    expected = list(dict.fromkeys(arrivals))
    assert kept == expected
    assert d.duplicates == len(arrivals) - len(expected)
