"""The replay clock, the timeline rules and the rate limiter: pure functions and fake time."""

from __future__ import annotations

import datetime as dt

import pytest

from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.middleware import TokenBucket
from scorebeater.scoreapi.timeline import AcceleratedClock, ManualClock

UTC = dt.UTC


class FakeMonotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def test_game_times_are_23h_and_final_two_and_a_half_hours_later() -> None:
    day = dt.date(2013, 10, 29)
    assert timeline.scheduled_at(day) == dt.datetime(2013, 10, 29, 23, 0, tzinfo=UTC)
    assert timeline.final_at(day) == dt.datetime(2013, 10, 30, 1, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("season", "first_game", "expected"),
    [
        (2014, dt.date(2013, 10, 29), dt.datetime(2013, 7, 1, tzinfo=UTC)),
        # A first game before July 1 (never in the NBA) still publishes the season by then.
        (2014, dt.date(2013, 6, 15), dt.datetime(2013, 6, 15, tzinfo=UTC)),
        # Totals-only seasons appear, already over, on June 30 of their end year.
        (1990, None, dt.datetime(1990, 6, 30, tzinfo=UTC)),
    ],
)
def test_season_publication(season: int, first_game: dt.date | None, expected: dt.datetime) -> None:
    assert timeline.season_publication(season, first_game) == expected


def test_accelerated_clock_runs_speed_times_real_time() -> None:
    mono = FakeMonotonic()
    start = dt.datetime(2013, 10, 28, tzinfo=UTC)
    clock = AcceleratedClock(start, 86400.0, monotonic=mono)
    assert clock.now() == start
    mono.value += 1.5
    assert clock.now() == start + dt.timedelta(days=1, hours=12)


def test_accelerated_clock_rejects_naive_start_and_bad_speed() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AcceleratedClock(dt.datetime(2013, 10, 28), 1.0)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="speed"):
        AcceleratedClock(dt.datetime(2013, 10, 28, tzinfo=UTC), 0.0)


def test_manual_clock_moves_forward_only() -> None:
    clock = ManualClock(dt.datetime(2013, 10, 28, tzinfo=UTC))
    clock.advance(dt.timedelta(hours=2))
    assert clock.now() == dt.datetime(2013, 10, 28, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(dt.datetime(2013, 10, 27, tzinfo=UTC))
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(dt.timedelta(seconds=-1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-10-28", dt.datetime(2013, 10, 28, tzinfo=UTC)),
        ("2013-10-28T12:30:00Z", dt.datetime(2013, 10, 28, 12, 30, tzinfo=UTC)),
        ("2013-10-28T14:30:00+02:00", dt.datetime(2013, 10, 28, 12, 30, tzinfo=UTC)),
    ],
)
def test_parse_start_accepts_dates_and_offset_datetimes(text: str, expected: dt.datetime) -> None:
    assert timeline.parse_start(text) == expected


@pytest.mark.parametrize(
    ("text", "message"), [("yesterday", "not an ISO"), ("2013-10-28T12:00:00", "no UTC offset")]
)
def test_parse_start_rejects_bad_values(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timeline.parse_start(text)


def test_rfc3339_round_trip() -> None:
    when = dt.datetime(2014, 4, 17, 1, 30, tzinfo=UTC)
    assert timeline.rfc3339(timeline.epoch(when)) == "2014-04-17T01:30:00Z"


def test_token_bucket_allows_bursts_then_says_how_long_to_wait() -> None:
    mono = FakeMonotonic()
    bucket = TokenBucket(2.0, monotonic=mono)
    assert bucket.take() == 0.0
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    mono.value += 0.5
    assert bucket.take() == 0.0
    mono.value += 100
    # Refill is capped at the burst size: two tokens, not two hundred.
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
