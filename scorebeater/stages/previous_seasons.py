"""What the feature stage knows of a season's players before it starts: their earlier seasons.

For season S, from the Score API: each player's S-1 totals (no S-1 totals: no prediction for
him), the S-1 schedule, and his S-2 and S-3 totals (0 where he did not play). The S-1
schedule is the season's ``scheduled_games_per_team``, or, for a season known only from its
totals (``null`` there, or no such season), :func:`~scorebeater.schedule.scheduled_games_from_totals`
over the S-1 totals: the training set reads it the same way
(:func:`scorebeater.training.dataset.season_schedule`), so the two agree.

Only "no such season" (``ScoreApiNotFound``) means absent. Any other failure (an outage, a
season not final yet) fails the call: loading on empty totals would mark the season's
players as having no previous season, and their games as done.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.errors import ScoreApiNotFound, StageError
from scorebeater.inputs import PreviousSeasons
from scorebeater.schedule import scheduled_games_from_totals
from scorebeater.scoreapi.records import PlayerSeasonTotal

log = structlog.get_logger(__name__)

STAGE = "features"


async def _totals(
    scores: ScoreApiClient, season: int, event: str, *, warn: bool = False
) -> dict[int, PlayerSeasonTotal]:
    """``season``'s totals by player id; empty (logged as ``event``) if the API has no such season."""
    out: dict[int, PlayerSeasonTotal] = {}
    try:
        async for t in scores.season_totals(season):
            out[t.player_id] = t
    except ScoreApiNotFound as exc:
        (log.warning if warn else log.info)(event, season=season, error=str(exc))
        return {}
    return out


async def season_schedule(
    scores: ScoreApiClient, season: int, totals: Mapping[int, PlayerSeasonTotal]
) -> int | None:
    """Regular-season games scheduled per team in ``season``: the API's, else read from its
    ``totals``; ``None`` when neither says."""
    try:
        scheduled = (await scores.season(season)).scheduled_games_per_team
    except ScoreApiNotFound:
        scheduled = None
    if scheduled:
        return scheduled
    return scheduled_games_from_totals(t.games for t in totals.values())


async def previous_seasons(scores: ScoreApiClient, season: int) -> dict[int, PreviousSeasons]:
    """Each player with ``season - 1`` totals, with what his earlier seasons say.

    Raises:
        ScoreApiError: any failure but "no such season" (see the module docstring).
        StageError: ``season - 1`` has totals but no schedule can be read from them.
    """
    prev1 = await _totals(scores, season - 1, "features.previous_season_unknown", warn=True)
    if not prev1:
        return {}
    schedule = await season_schedule(scores, season - 1, prev1)
    if not schedule:
        raise StageError(STAGE, f"season {season - 1} has player totals but no known schedule")
    prev2 = await _totals(scores, season - 2, "features.second_previous_season_unknown")
    prev3 = await _totals(scores, season - 3, "features.third_previous_season_unknown")
    out: dict[int, PreviousSeasons] = {}
    for pid, t in prev1.items():
        t2, t3 = prev2.get(pid), prev3.get(pid)
        out[pid] = PreviousSeasons(
            ftm=t.ftm,
            fta=t.fta,
            games=t.games,
            minutes=t.minutes,
            age=t.age,
            experience=t.experience,
            season_games=schedule,
            prev2_ftm=t2.ftm if t2 else 0,
            prev2_games=t2.games if t2 else 0,
            prev3_ftm=t3.ftm if t3 else 0,
            prev3_games=t3.games if t3 else 0,
        )
    return out
