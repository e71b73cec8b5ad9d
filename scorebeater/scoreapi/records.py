"""The Score API's records as the daemon sees them, and their validation from JSON.

Each ``parse_*`` function turns one JSON object of the contract (``openapi.yaml`` beside this
module) into a frozen record, or raises :class:`~scorebeater.errors.ValidationError` with a
reason code (:mod:`scorebeater.fields`): a missing field, a negative count, FTM > FTA, a box
score of another game, a row of another season, a value beyond its plausibility bound
(:mod:`scorebeater.bounds`: ``fta = 2**63`` is ``implausible_fta``, a season of 1 is a bad
value). Every rejection carries the record's key (``ValidationError.key``: the game id, the
season, ``<game_id>/<player_id>`` for a box-score line, ``<season>/<player_id>`` for a player
total) once it is known. The functions are pure: counting, logging and skipping a rejected
record are the client's (:class:`scorebeater.clients.score_api.ScoreApiClient`).

Seasons are named by their end year (``2014`` is 2013-14). Date-times are tz-aware UTC.
This module imports no HTTP or server code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from scorebeater import bounds
from scorebeater.fields import BAD_TYPE, Fields

GameStatus = Literal["scheduled", "in_progress", "final"]
SeasonStatus = Literal["scheduled", "in_progress", "regular_season_final", "final"]
SeasonType = Literal["regular", "playoffs"]

_GAME_STATUSES: tuple[GameStatus, ...] = ("scheduled", "in_progress", "final")
_SEASON_STATUSES: tuple[SeasonStatus, ...] = ("scheduled", "in_progress", "regular_season_final", "final")
_SEASON_TYPES: tuple[SeasonType, ...] = ("regular", "playoffs")


@dataclass(frozen=True, slots=True)
class GameCounts:
    """Counts of a season's games visible at the server's replay time."""

    regular: int
    playoffs: int
    scheduled: int
    in_progress: int
    final: int


@dataclass(frozen=True, slots=True)
class SeasonInfo:
    """One season as the API reports it (``season`` is the end year)."""

    season: int
    status: SeasonStatus
    has_games: bool
    published_at: dt.datetime
    scheduled_games_per_team: int | None
    first_regular_date: dt.date | None
    last_regular_date: dt.date | None
    regular_season_final_at: dt.datetime | None
    final_at: dt.datetime | None
    games: GameCounts
    totals_available: bool

    @property
    def regular_season_final(self) -> bool:
        """True once the season's totals are the ground truth."""
        return self.status in ("regular_season_final", "final")


@dataclass(frozen=True, slots=True)
class GameInfo:
    """One game of the games feed; scores and ``final_at`` are ``None`` unless final."""

    game_id: str
    season: int
    season_type: SeasonType
    game_seq: int
    date: dt.date
    date_estimated: bool
    scheduled_at: dt.datetime
    status: GameStatus
    final_at: dt.datetime | None
    home: str
    away: str
    home_pts: int | None
    away_pts: int | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class GamesPage:
    """One page of the games feed. Keep ``next_cursor`` to resume polling later."""

    games: tuple[GameInfo, ...]
    next_cursor: str
    has_more: bool
    replay_time: dt.datetime


@dataclass(frozen=True, slots=True)
class BoxScoreLine:
    """One player's free throws in one game. ``team`` is ``None`` where unknown."""

    player_id: int
    player: str
    team: str | None
    ftm: int
    fta: int


@dataclass(frozen=True, slots=True)
class BoxScore:
    """A final game's free throws; a player absent from ``players`` took none."""

    game_id: str
    season: int
    season_type: SeasonType
    game_seq: int
    date: dt.date
    final_at: dt.datetime
    home: str
    away: str
    home_pts: int
    away_pts: int
    players: tuple[BoxScoreLine, ...]


@dataclass(frozen=True, slots=True)
class PlayerSeasonTotal:
    """A player's official regular-season totals (the ground truth once final)."""

    season: int
    player_id: int
    player: str
    age: int | None
    experience: int
    team: str | None
    games: int
    minutes: int | None
    ftm: int
    fta: int
    pts: int


# --- validation --------------------------------------------------------------------------------


def _season(f: Fields, expected: int | None) -> int:
    """The record's season; ``wrong_season`` unless it is ``expected`` (any when ``None``)."""
    season = f.within("season", bounds.SEASON)
    if expected is not None and season != expected:
        raise f.error("wrong_season", f"season {season}, asked for {expected}")
    return season


def parse_season(obj: object) -> SeasonInfo:
    """Validate one ``Season`` object. Raises ``ValidationError``."""
    f = Fields(obj, "season")
    season = _season(f, None)
    f.key = str(season)
    counts = Fields(f.record.get("games"), "season.games", key=f.key)
    return SeasonInfo(
        season=season,
        status=f.choice("status", _SEASON_STATUSES),
        has_games=f.flag("has_games"),
        published_at=f.time("published_at"),
        scheduled_games_per_team=f.opt_within("scheduled_games_per_team", bounds.SCHEDULED_GAMES),
        first_regular_date=f.opt_date("first_regular_date"),
        last_regular_date=f.opt_date("last_regular_date"),
        regular_season_final_at=f.opt_time("regular_season_final_at"),
        final_at=f.opt_time("final_at"),
        games=GameCounts(
            regular=counts.within("regular", bounds.LEAGUE_GAMES),
            playoffs=counts.within("playoffs", bounds.LEAGUE_GAMES),
            scheduled=counts.within("scheduled", bounds.LEAGUE_GAMES),
            in_progress=counts.within("in_progress", bounds.LEAGUE_GAMES),
            final=counts.within("final", bounds.LEAGUE_GAMES),
        ),
        totals_available=f.flag("totals_available"),
    )


def parse_game(obj: object, *, season: int | None = None) -> GameInfo:
    """Validate one ``Game`` of ``season`` (any season if ``None``). Raises ``ValidationError``."""
    f = Fields(obj, "game")
    game_id = f.numeric_id("game_id")
    f.what, f.key = f"game {game_id}", game_id
    home, away = f.text("home"), f.text("away")
    if home == away:
        raise f.error("same_teams", f"home and away are both {home!r}")
    status = f.choice("status", _GAME_STATUSES)
    final_at = f.opt_time("final_at")
    home_pts, away_pts = f.opt_within("home_pts", bounds.GAME_PTS), f.opt_within("away_pts", bounds.GAME_PTS)
    scored = final_at is not None and home_pts is not None and away_pts is not None
    unscored = final_at is None and home_pts is None and away_pts is None
    if (status == "final" and not scored) or (status != "final" and not unscored):
        raise f.error("inconsistent_status", f"status {status} disagrees with final_at/scores")
    return GameInfo(
        game_id=game_id,
        season=_season(f, season),
        season_type=f.choice("season_type", _SEASON_TYPES),
        game_seq=f.within("game_seq", bounds.GAME_SEQ),
        date=f.date("date"),
        date_estimated=f.flag("date_estimated"),
        scheduled_at=f.time("scheduled_at"),
        status=status,
        final_at=final_at,
        home=home,
        away=away,
        home_pts=home_pts,
        away_pts=away_pts,
        updated_at=f.time("updated_at"),
    )


def parse_box_score_header(obj: dict[str, Any], game_id: str, season: int | None) -> BoxScore:
    """Validate a box score's game fields (``players`` left empty). Raises ``ValidationError``."""
    f = Fields(obj, f"box score {game_id}", key=game_id)
    got = f.text("game_id")
    if got != game_id:
        raise f.error("unknown_game", f"asked for game {game_id}, got a box score of game {got}")
    f.choice("status", ("final",))
    teams: dict[str, tuple[str, int]] = {}
    raw_teams = f.raw("teams")
    if not isinstance(raw_teams, list) or len(raw_teams) != 2:  # noqa: PLR2004 - home and away
        raise f.error(BAD_TYPE, "teams must be a list of two")
    for raw in raw_teams:
        t = Fields(raw, f"{f.what} team", key=game_id)
        teams[t.choice("side", ("home", "away"))] = (t.text("team"), t.within("pts", bounds.GAME_PTS))
    if set(teams) != {"home", "away"} or teams["home"][0] == teams["away"][0]:
        raise f.invalid("teams", "teams must be one home and one away team")
    return BoxScore(
        game_id=got,
        season=_season(f, season),
        season_type=f.choice("season_type", _SEASON_TYPES),
        game_seq=f.within("game_seq", bounds.GAME_SEQ),
        date=f.date("date"),
        final_at=f.time("final_at"),
        home=teams["home"][0],
        away=teams["away"][0],
        home_pts=teams["home"][1],
        away_pts=teams["away"][1],
        players=(),
    )


def parse_box_score_line(obj: object, box: BoxScore) -> BoxScoreLine:
    """Validate one player line of ``box``. Raises ``ValidationError``."""
    f = Fields(obj, f"box score {box.game_id} player", key=box.game_id)
    player_id = f.within("player_id", bounds.PLAYER_ID)
    f.what, f.key = f"box score {box.game_id} player {player_id}", f"{box.game_id}/{player_id}"
    team = f.opt_text("team")
    if team is not None and team not in (box.home, box.away):
        raise f.error("unknown_team", f"team {team!r} did not play in this game")
    ftm, fta = f.made_attempted("ftm", "fta", bounds.GAME_FREE_THROWS)
    return BoxScoreLine(player_id=player_id, player=f.text("player"), team=team, ftm=ftm, fta=fta)


def parse_player_total(obj: object, *, season: int | None = None) -> PlayerSeasonTotal:
    """Validate one ``PlayerTotal`` of ``season``. Raises ``ValidationError``."""
    f = Fields(obj, "player total")
    player_id = f.within("player_id", bounds.PLAYER_ID)
    f.what = f"player total {player_id}"
    f.key = f"{season}/{player_id}" if season is not None else None
    ftm, fta = f.made_attempted("ftm", "fta", bounds.SEASON_FREE_THROWS)
    pts = f.within("pts", bounds.SEASON_PTS)
    if pts < ftm:
        raise f.invalid("pts", f"pts {pts} < ftm {ftm}")
    return PlayerSeasonTotal(
        season=_season(f, season),
        player_id=player_id,
        player=f.text("player"),
        age=f.opt_within("age", bounds.AGE),
        experience=f.within("experience", bounds.EXPERIENCE),
        team=f.opt_text("team"),
        games=f.within("games", bounds.SEASON_GAMES),
        minutes=f.opt_within("minutes", bounds.SEASON_MINUTES),
        ftm=ftm,
        fta=fta,
        pts=pts,
    )


__all__ = [
    "BoxScore",
    "BoxScoreLine",
    "GameCounts",
    "GameInfo",
    "GameStatus",
    "GamesPage",
    "PlayerSeasonTotal",
    "SeasonInfo",
    "SeasonStatus",
    "SeasonType",
    "parse_box_score_header",
    "parse_box_score_line",
    "parse_game",
    "parse_player_total",
    "parse_season",
]
