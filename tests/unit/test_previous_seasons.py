"""What the feature stage fetches about a season's players before it: the previous seasons.

The Score API is replaced at its client's interface by a table of seasons (``None``: the API
has no such season, 404): only "no such season" means absent, anything else fails the load.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, cast

import pytest

from scorebeater.errors import ScoreApiError, ScoreApiNotFound, StageError
from scorebeater.inputs import PreviousSeasons
from scorebeater.scoreapi.records import GameCounts, PlayerSeasonTotal, SeasonInfo
from scorebeater.stages.previous_seasons import previous_seasons

if TYPE_CHECKING:
    from scorebeater.clients.score_api import ScoreApiClient

T0 = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def total(season: int, pid: int, games: int, ftm: int = 100) -> PlayerSeasonTotal:
    return PlayerSeasonTotal(season, pid, f"P{pid}", 25, 3, "BOS", games, 2000, ftm, ftm + 20, 900)


class Scores:
    """The client's two calls used here, over ``totals`` and ``schedules`` by season."""

    def __init__(
        self,
        totals: dict[int, list[PlayerSeasonTotal] | Exception],
        schedules: dict[int, int | Exception | None],
    ) -> None:
        self.totals = totals
        self.schedules = schedules

    async def season(self, season: int) -> SeasonInfo:
        scheduled = self.schedules.get(season, ScoreApiNotFound("score_api", "no season", status=404))
        if isinstance(scheduled, Exception):
            raise scheduled
        return SeasonInfo(
            season=season,
            status="final",
            has_games=scheduled is not None,
            published_at=T0,
            scheduled_games_per_team=scheduled,
            first_regular_date=None,
            last_regular_date=None,
            regular_season_final_at=T0,
            final_at=T0,
            games=GameCounts(0, 0, 0, 0, 0),
            totals_available=True,
        )

    async def season_totals(self, season: int) -> AsyncIterator[PlayerSeasonTotal]:
        rows = self.totals.get(season, ScoreApiNotFound("score_api", "no season", status=404))
        if isinstance(rows, Exception):
            raise rows
        for row in rows:
            yield row


async def fetch(scores: Scores, season: int = 2010) -> dict[int, PreviousSeasons]:
    return await previous_seasons(cast("ScoreApiClient", scores), season)


# Seven players of S-1: five played all 82 games of the schedule, one 83 (traded), one 40.
PREV = [total(2009, pid, 82) for pid in range(1, 6)] + [total(2009, 6, 83), total(2009, 7, 40)]


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (66, 66),  # the API's schedule
        (None, 82),  # a season known only from its totals: read from them
        (ScoreApiNotFound("score_api", "no season", status=404), 82),  # no season object at all
    ],
    ids=["api", "null-from-totals", "404-from-totals"],
)
async def test_previous_schedule_from_the_api_else_from_its_totals(
    schedule: int | Exception | None, expected: int
) -> None:
    prev = await fetch(Scores({2009: PREV}, {2009: schedule}))
    assert {p.season_games for p in prev.values()} == {expected}


async def test_two_and_three_seasons_back_are_zero_where_he_did_not_play() -> None:
    scores = Scores(
        {2009: PREV, 2008: [total(2008, 1, 50, ftm=70)], 2007: [total(2007, 7, 64, ftm=30)]}, {2009: 82}
    )
    prev = await fetch(scores)
    assert (prev[1].prev2_ftm, prev[1].prev2_games, prev[1].prev3_ftm, prev[1].prev3_games) == (70, 50, 0, 0)
    assert (prev[7].prev2_ftm, prev[7].prev2_games, prev[7].prev3_ftm, prev[7].prev3_games) == (0, 0, 30, 64)
    assert prev[7] == PreviousSeasons(100, 120, 40, 2000, 25, 3, 82, 0, 0, 30, 64)


async def test_no_previous_season_means_no_previous_players() -> None:
    assert await fetch(Scores({}, {})) == {}


@pytest.mark.parametrize("season", [2009, 2008, 2007])
async def test_any_failure_but_not_found_fails_the_load(season: int) -> None:
    """An outage is not "no such season": loading on empty totals would lose data."""
    outage = ScoreApiError("score_api", "unavailable", status=503, transient=True)
    totals: dict[int, list[PlayerSeasonTotal] | Exception] = {2009: PREV, 2008: [], 2007: []}
    totals[season] = outage
    with pytest.raises(ScoreApiError, match="unavailable"):
        await fetch(Scores(totals, {2009: 82}))
    with pytest.raises(ScoreApiError, match="unavailable"):
        await fetch(Scores({2009: PREV}, {2009: outage}))


async def test_a_previous_season_with_no_schedule_at_all_fails_the_load() -> None:
    with pytest.raises(StageError, match="season 2009 has player totals but no known schedule"):
        await fetch(Scores({2009: [total(2009, 1, 0)]}, {2009: None}))
