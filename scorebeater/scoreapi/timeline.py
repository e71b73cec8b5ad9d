"""The replay clock and the rules that place real games on one global replay timeline.

Every instant here is a tz-aware UTC :class:`~datetime.datetime` at the interface and whole
epoch seconds (``int``) inside the indexes, because comparisons on ints are what the server
does thousands of times per request.

Timeline rules (the contract documents the same rules, see ``openapi.yaml``):

- a game is *scheduled* at its date 23:00 UTC (``scheduled_at``), *in progress* from then and
  *final* 2 h 30 later (``final_at``); games on the same date turn final together;
- a season is *published* (visible at all) at ``July 1 of its start year, 00:00 UTC``, or at its
  first game's date 00:00 UTC if that is earlier; its regular-season games are visible from
  then, while its playoff games are published only when the regular season turns final
  (matchups are not known before);
- a season present only in the season totals (no games in the data) is visible, and final,
  from ``June 30 of its end year, 00:00 UTC``.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

GAME_START = dt.time(23, 0)
"""Replay tip-off time of every game (UTC); the data has dates only."""
GAME_DURATION = dt.timedelta(hours=2, minutes=30)
"""A game is in progress for this long after tip-off, then final."""


class ReplayClock(Protocol):
    """Where the replay is now. ``now()`` is tz-aware UTC and never goes backwards."""

    def now(self) -> dt.datetime: ...


class AcceleratedClock:
    """Replay time = ``start + (real seconds elapsed since creation) * speed``.

    ``speed`` is replay seconds per real second (86400: one replayed day per second).
    ``monotonic`` is the real-time source (``time.monotonic``); pass another in tests.
    """

    def __init__(
        self, start: dt.datetime, speed: float, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.start = start.astimezone(dt.UTC)
        self.speed = speed
        self._monotonic = monotonic
        self._origin = monotonic()

    def now(self) -> dt.datetime:
        elapsed = self._monotonic() - self._origin
        return self.start + dt.timedelta(seconds=elapsed * self.speed)


class ManualClock:
    """A clock that moves only when told: for tests and for step-by-step replays."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._now = start.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        return self._now

    def set(self, when: dt.datetime) -> None:
        """Move to ``when``; raises ``ValueError`` if that is in the past or naive."""
        if when.tzinfo is None:
            raise ValueError("when must be timezone-aware")
        if when < self._now:
            raise ValueError(f"a replay clock never goes backwards ({when} < {self._now})")
        self._now = when.astimezone(dt.UTC)

    def advance(self, delta: dt.timedelta) -> None:
        """Move forward by ``delta`` (must not be negative)."""
        self.set(self._now + delta)


def midnight(day: dt.date) -> dt.datetime:
    """``day`` at 00:00 UTC."""
    return dt.datetime.combine(day, dt.time(0, 0), tzinfo=dt.UTC)


def scheduled_at(day: dt.date) -> dt.datetime:
    """Replay tip-off of a game played on ``day``."""
    return dt.datetime.combine(day, GAME_START, tzinfo=dt.UTC)


def final_at(day: dt.date) -> dt.datetime:
    """The moment a game played on ``day`` turns final."""
    return scheduled_at(day) + GAME_DURATION


def season_publication(season: int, first_game_day: dt.date | None) -> dt.datetime:
    """When season ``season`` (end year) becomes visible.

    With games: July 1 of its start year, or its first game's date if earlier. Without games
    (season totals only): June 30 of its end year, when such a season is already over.
    """
    if first_game_day is None:
        return midnight(dt.date(season, 6, 30))
    return min(midnight(dt.date(season - 1, 7, 1)), midnight(first_game_day))


def epoch(when: dt.datetime) -> int:
    """Whole epoch seconds of a tz-aware instant (floor)."""
    return int(when.timestamp() // 1)


def rfc3339(seconds: int) -> str:
    """Epoch seconds as RFC 3339 UTC (``2013-10-29T23:00:00Z``)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_start(value: str) -> dt.datetime:
    """Parse ``--start``: an ISO date (00:00 UTC) or an ISO date-time with an offset.

    Raises ``ValueError`` naming the value when it is neither.
    """
    text = value.strip()
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return midnight(day)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"start {value!r} is not an ISO date or date-time") from None
    if when.tzinfo is None:
        raise ValueError(f"start {value!r} has no UTC offset (add Z or +00:00)")
    return when.astimezone(dt.UTC)
