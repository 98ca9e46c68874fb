"""The rate decision (edge/wire/rate.py): changes at once, otherwise the cap; per-frame keeps every face frame."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.common.errors import ConfigError
from edge.wire.rate import CAPPED, DEFAULT_MAX_PER_S, PER_FRAME, RateConfig, RateState, decide

FRAME_S = 1 / 30


def run(frames: list[frozenset[int]], interval: float | None, frame_s: float = FRAME_S) -> list[int]:
    """Indices of the frames that are published."""
    state, sent = RateState(), []
    for i, tracks in enumerate(frames):
        state, send = decide(state, tracks, 1000.0 + i * frame_s, interval)
        if send:
            sent.append(i)
    return sent


def test_the_default_is_capped_at_one_message_a_second() -> None:
    config = RateConfig()
    assert (config.mode, config.max_per_s, config.min_interval_s) == (CAPPED, DEFAULT_MAX_PER_S, 1.0)
    assert RateConfig(mode=PER_FRAME).min_interval_s is None
    assert RateConfig(max_per_s=4).min_interval_s == 0.25


def test_a_steady_scene_goes_out_at_the_cap_with_the_latest_frame() -> None:
    sent = run([frozenset({7})] * 96, 1.0, frame_s=1 / 32)  # three seconds at 32 fps (exact in binary), one face
    assert sent == [0, 32, 64]


def test_a_change_goes_out_at_once_whatever_the_cap() -> None:
    frames = [frozenset({7})] * 10 + [frozenset({7, 8})] * 5 + [frozenset({8})] * 5 + [frozenset()] * 10
    assert run(frames, 1.0) == [0, 10, 15, 20]  # arrived, second face, first left, scene empty (once)


def test_the_per_frame_stream_sends_every_face_frame_and_one_empty_frame() -> None:
    frames = [frozenset()] * 3 + [frozenset({1})] * 4 + [frozenset()] * 3
    assert run(frames, None) == [3, 4, 5, 6, 7]


def test_a_clock_that_stepped_back_does_not_silence_the_device() -> None:
    state, _ = decide(RateState(), frozenset({1}), 1000.0, 1.0)
    state, send = decide(state, frozenset({1}), 900.0, 1.0)
    assert send and state.last_sent == 900.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.frozensets(st.integers(0, 3), max_size=3), min_size=1, max_size=300),
       st.sampled_from([0.1, 0.5, 1.0, 2.0]))
def test_capped_never_misses_a_change_and_never_exceeds_the_cap_between_changes(
        frames: list[frozenset[int]], interval: float) -> None:
    sent = set(run(frames, interval))
    per_frame = set(run(frames, None))
    assert sent <= per_frame  # the cap only ever removes messages
    previous: frozenset[int] = frozenset()
    last_sent_at: float | None = None
    for i, tracks in enumerate(frames):
        if tracks != previous:
            assert i in sent, f"change at frame {i} not published"
        elif i in sent:
            assert tracks, "an unchanged empty scene was published"
            assert last_sent_at is None or (i * FRAME_S - last_sent_at) >= interval - 1e-9
        if i in sent:
            last_sent_at = i * FRAME_S
        previous = tracks
    # With faces in view the scene is never silent for longer than the interval (plus one frame).
    for i, tracks in enumerate(frames):
        if tracks and i not in sent:
            earlier = [j for j in sent if j < i]
            assert earlier and (i - max(earlier)) * FRAME_S < interval + FRAME_S


@pytest.mark.parametrize("data, key", [({"mode": "burst"}, "mode"), ({"max_per_s": 0}, "max_per_s"),
                                       ({"max_per_s": 5000}, "max_per_s")])
def test_bad_settings_are_refused_naming_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        RateConfig.from_mapping(data)
    assert err.value.where == f"[detections] {key}"
