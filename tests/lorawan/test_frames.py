"""Frame-counter dedup and counter-reset detection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.lorawan.frames import FrameTracker, FrameVerdict


def test_frames_repeat_of_same_counter_and_payload_is_dropped() -> None:
    frames = FrameTracker()
    assert frames.observe("d", 5, b"a").verdict is FrameVerdict.NEW
    assert frames.observe("d", 5, b"a").verdict is FrameVerdict.REPEAT
    assert frames.observe("d", 6, b"b").verdict is FrameVerdict.NEW
    assert frames.observe("d", 5, b"a").verdict is FrameVerdict.REPEAT  # late repeat


def test_frames_gap_from_lost_uplinks_is_new() -> None:
    frames = FrameTracker()
    frames.observe("d", 1, b"a")
    assert frames.observe("d", 9, b"b").verdict is FrameVerdict.NEW


def test_frames_counter_back_is_reset_with_new_epoch() -> None:
    frames = FrameTracker()
    for n in range(10, 13):
        frames.observe("d", n, bytes([n]))
    seen = frames.observe("d", 0, b"x")
    assert (seen.verdict, seen.epoch, seen.previous_f_cnt, seen.reason) == (
        FrameVerdict.RESET,
        1,
        12,
        "counter_back",
    )
    assert frames.observe("d", 1, b"y").verdict is FrameVerdict.NEW
    assert frames.observe("d", 1, b"y").verdict is FrameVerdict.REPEAT
    assert frames.epoch("d") == 1


def test_frames_same_counter_new_payload_after_reset_is_not_a_repeat() -> None:
    frames = FrameTracker()
    frames.observe("d", 0, b"old")
    frames.observe("d", 1, b"old1")
    assert frames.observe("d", 0, b"new").verdict is FrameVerdict.RESET


def test_frames_join_forces_a_new_epoch_even_for_a_seen_frame() -> None:
    frames = FrameTracker()
    frames.observe("d", 0, b"same")
    frames.joined("d")
    seen = frames.observe("d", 0, b"same")
    assert (seen.verdict, seen.reason, seen.epoch) == (FrameVerdict.RESET, "join", 1)


def test_frames_join_before_first_frame_is_just_new() -> None:
    frames = FrameTracker()
    frames.joined("d")
    assert frames.observe("d", 0, b"a").verdict is FrameVerdict.NEW
    assert frames.observe("d", 1, b"b").verdict is FrameVerdict.NEW


def test_frames_devices_are_independent() -> None:
    frames = FrameTracker()
    frames.observe("a", 5, b"x")
    assert frames.observe("b", 5, b"x").verdict is FrameVerdict.NEW


@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60),
    st.lists(st.integers(min_value=1, max_value=3), min_size=60, max_size=60),
)
def test_frames_every_frame_passes_once_whatever_the_repeats(
    gaps: list[int], repeats: list[int]
) -> None:
    frames = FrameTracker()
    f_cnt = 0
    passed: list[int] = []
    for gap, times in zip(gaps, repeats, strict=False):
        f_cnt += gap
        for _ in range(times):
            seen = frames.observe("d", f_cnt, f_cnt.to_bytes(4, "little"))
            if seen.verdict is not FrameVerdict.REPEAT:
                passed.append(f_cnt)
            assert seen.verdict is not FrameVerdict.RESET
    assert passed == sorted(set(passed))
    assert len(passed) == len(gaps)
