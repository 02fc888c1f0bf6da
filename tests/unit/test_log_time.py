"""Log time (`pipeline.stages.log_time`): processing time as far as the worker has read."""

from __future__ import annotations

from pipeline.stages.log_time import BEHIND_US, SETTLE_US, LogClock

S = 1_000_000
WALL = 1_800_000_000 * S


def test_at_the_head_of_the_log_log_time_is_the_wall_clock() -> None:
    clock = LogClock()
    assert clock.at(WALL) == WALL  # nothing read yet
    clock.heard(0, WALL - S // 10, WALL)  # read 100 ms after ingest
    assert clock.at(WALL) == WALL
    assert clock.at(WALL + 3 * S) == WALL + 3 * S
    assert clock.behind(WALL + 3 * S) == 0


def test_a_backlog_holds_log_time_at_the_newest_frame_read() -> None:
    clock = LogClock()
    old = WALL - 3600 * S
    clock.heard(0, old, WALL)
    assert clock.at(WALL) == old
    # The wall clock goes on, the log does not: no silence grows between frames.
    assert clock.at(WALL + 5 * S) == old
    clock.heard(0, old + S // 2, WALL + 6 * S)
    assert clock.at(WALL + 6 * S) == old + S // 2
    assert clock.behind(WALL + 6 * S) == 3600 * S + 6 * S - S // 2
    # An older frame (another connector, buffered data) does not take it back.
    clock.heard(0, old, WALL + 7 * S)
    assert clock.at(WALL + 7 * S) == old + S // 2


def test_the_partition_furthest_behind_sets_log_time() -> None:
    clock = LogClock()
    clock.heard(("raw", 0), WALL - S // 10, WALL)  # at the head
    clock.heard(("raw", 1), WALL - 60 * S, WALL)  # a minute behind
    clock.heard(("other", 1), WALL - 30 * S, WALL)  # another topic's partition 1
    assert clock.at(WALL) == WALL - 60 * S
    clock.heard(("raw", 1), WALL + 2 * S, WALL + 2 * S)  # caught up
    assert clock.at(WALL + 2 * S) == WALL - 30 * S


def test_a_lag_below_the_behind_threshold_is_latency_not_a_backlog() -> None:
    clock = LogClock()
    clock.heard(0, WALL - BEHIND_US + 1, WALL)
    assert clock.at(WALL) == WALL
    clock = LogClock()
    clock.heard(0, WALL - BEHIND_US, WALL)
    assert clock.at(WALL) == WALL - BEHIND_US


def test_a_partition_silent_for_the_settle_time_is_read_to_its_end() -> None:
    clock = LogClock()
    old = WALL - 3600 * S
    clock.heard(0, old, WALL)
    assert clock.at(WALL + SETTLE_US - 1) == old
    # Nothing more came: the backlog ended where its connectors stopped, and from here
    # their silence counts, with the wall clock.
    assert clock.at(WALL + SETTLE_US) == WALL + SETTLE_US
    assert clock.at(WALL + SETTLE_US + 7 * S) == WALL + SETTLE_US + 7 * S
    # Frames read as they come take log time to the wall clock.
    clock.heard(0, WALL + 30 * S, WALL + 30 * S)
    assert clock.at(WALL + 30 * S) == WALL + 30 * S


def test_log_time_never_goes_back_once_frames_were_read() -> None:
    clock = LogClock()
    clock.heard(0, WALL - S // 10, WALL)
    assert clock.at(WALL + 2 * S) == WALL + 2 * S
    # The worker falls behind (a burst): log time stands where it was...
    clock.heard(0, WALL + S, WALL + 10 * S)
    assert clock.at(WALL + 10 * S) == WALL + 2 * S
    assert clock.at(WALL + 11 * S) == WALL + 2 * S
    # ...until the frames it reads are newer.
    clock.heard(0, WALL + 4 * S, WALL + 12 * S)
    assert clock.at(WALL + 12 * S) == WALL + 4 * S


def test_before_any_frame_the_wall_clock_does_not_bind_log_time() -> None:
    clock = LogClock()
    assert clock.at(WALL) == WALL
    clock.heard(0, WALL - 600 * S, WALL + S)  # a restarted worker's first, old frame
    assert clock.at(WALL + S) == WALL - 600 * S


def test_an_ingest_time_ahead_of_the_wall_clock_counts_as_the_wall_clock() -> None:
    clock = LogClock()
    clock.heard(0, WALL + 3600 * S, WALL)
    assert clock.at(WALL) == WALL
    clock.heard(0, WALL - 3600 * S, WALL + BEHIND_US)  # the head stays at WALL
    assert clock.at(WALL + BEHIND_US) == WALL
