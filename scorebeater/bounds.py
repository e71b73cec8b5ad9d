"""Plausibility bounds, written once for every boundary a number crosses into the daemon.

The data loader (:mod:`scorebeater.data`), the Score API records
(:mod:`scorebeater.scoreapi.records`, through :class:`scorebeater.fields.Fields`) and storage
(:func:`scorebeater.storage.base.conform`, the last line of defence) all check against the
same :class:`Bound` objects, so a value one of them accepts is never refused by another.

A count is bounded by **twice the historical record**: the records below are the maxima of the
bundled data (``scorebeater/data/season_totals.csv.gz``: every BAA/NBA player-season, 1946-47
to 2013-14; ``player_games.csv.gz``: every player-game 2006-07 to 2013-14), which
``tests/unit/test_bounds.py`` recomputes, so they cannot drift from the data. Twice a record
leaves room for a record being broken and for longer seasons; anything beyond is a unit
error, an overflow or garbage, and would pin a model input (a probability of 0 or 1 for the
rest of a season, a false outcome in the training data). Per game, free throws are capped at
50 attempts (the record is 39).

Above its bound a count is rejected as ``implausible_<name>`` (``implausible_fta``), in both
dialects of :mod:`scorebeater.fields`: the code names the quantity, not the source's column,
so the loader's ``ft`` and the Score API's ``ftm`` both give ``implausible_ftm``. Ranges that
are not records (ids, seasons, ages) fail as any other bad value (``bad_value`` /
``bad_<column>``); a count below 0 is ``negative_count``. The codes are an interface, like
every reason code (see :mod:`scorebeater.fields`).

This module imports nothing: storage, the loader and the records all depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

INT64_MAX = 2**63 - 1
"""Ids are stored as int64 (Arrow, Parquet, Postgres ``bigint``)."""

# --- records in the bundled data ---------------------------------------------------------------
RECORD_SEASON_FTM = 840
"""Free throws made in one regular season: Jerry West, 1965-66."""
RECORD_SEASON_FTA = 1363
"""Free throws attempted in one regular season: Wilt Chamberlain, 1961-62."""
RECORD_SEASON_GAMES = 88
"""Games in one regular season: Walt Bellamy, 1968-69 (traded: 35 + 53 games)."""
RECORD_SEASON_MINUTES = 3882
"""Minutes in one regular season: Wilt Chamberlain, 1961-62."""
RECORD_SEASON_PTS = 4029
"""Points in one regular season: Wilt Chamberlain, 1961-62."""
RECORD_GAME_FTA = 39
"""Free throws attempted in one game: Dwight Howard, 2012-13 (25 of 39; the NBA record, which he
had first set in 2011-12)."""
RECORD_SEASON_GAME_SEQ = 1317
"""Games in one season, playoffs included (the most ``game_seq``): 2013-14."""
RECORD_TEAM_GAME_PTS = 186
"""Points by one team in one game: Detroit, 1983-12-13 (triple overtime). The bundled games
(2006-07 to 2013-14) reach 168."""
RECORD_AGE = (18, 46)
"""Youngest and oldest player-season ages (1 February of the season) in the bundled totals."""
RECORD_EXPERIENCE = 21
"""Most seasons in one career in the bundled totals: Robert Parish (1996-97 was his 21st)."""


@dataclass(frozen=True, slots=True)
class Bound:
    """The inclusive range ``lo..hi`` of plausible values of one quantity.

    ``implausible`` says what a value above ``hi`` is: ``True`` for a count bounded by a
    record (rejected as :attr:`reason`, ``implausible_<name>``), ``False`` for a range that
    is not a record (ids, seasons, ages: rejected as any bad value).
    """

    name: str
    lo: int
    hi: int
    implausible: bool = False

    @property
    def reason(self) -> str:
        """``implausible_<name>``: the reason code of a count above :attr:`hi`."""
        return f"implausible_{self.name}"

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"{self.lo}..{self.hi}"

    def widened(self, by: int) -> Bound:
        """This bound with ``hi`` raised by ``by`` and ``lo`` lowered to 0 (a model input
        derived from it: next season's age, 0 where unknown)."""
        return Bound(self.name, 0, self.hi + by, self.implausible)


def _count(name: str, record: int) -> Bound:
    return Bound(name, 0, 2 * record, implausible=True)


# --- ids and calendar --------------------------------------------------------------------------
PLAYER_ID = Bound("player_id", 1, INT64_MAX)
"""A player id from the Score API: a Basketball-Reference id, or a derived id >= 9e9."""
DATA_PLAYER_ID = Bound("player_id", 1, 8_999_999_999)
"""A player id in the data files: a Basketball-Reference id (at most 4218 in the bundled data),
below the replay's derived ids (``scoreapi.catalog.DERIVED_ID_BASE``, 9e9) so none can collide."""
GAME_ID = Bound("game_id", 1, INT64_MAX)
"""A game id's numeric value (ids are ASCII digit strings, leading zeros allowed)."""
GAME_ID_MAX_LENGTH = 20
"""Characters in a game id: the 19 digits of int64 plus one leading zero (NBA ids have two
leading zeros but 10 digits)."""
SEASON = Bound("season", 1947, 2100)
"""A season, by its end year: the BAA's first (1946-47) up to a sane end."""
GAME_SEQ = Bound("game_seq", 1, 2 * RECORD_SEASON_GAME_SEQ)
"""A game's place in its season's schedule."""
LEAGUE_GAMES = Bound("games", 0, GAME_SEQ.hi, implausible=True)
"""A count of one season's games, all teams (regular, playoffs, final, ...)."""

# --- one player-season -------------------------------------------------------------------------
SEASON_FTM = _count("ftm", RECORD_SEASON_FTM)
SEASON_FTA = _count("fta", RECORD_SEASON_FTA)
SEASON_GAMES = _count("games", RECORD_SEASON_GAMES)
"""Games played by a player, or by a team, in one regular season."""
SCHEDULED_GAMES = Bound("games", 1, SEASON_GAMES.hi, implausible=True)
"""Regular-season games scheduled per team (82 since 1967-68)."""
SEASON_MINUTES = _count("minutes", RECORD_SEASON_MINUTES)
SEASON_PTS = _count("pts", RECORD_SEASON_PTS)
AGE = Bound("age", 15, 60)
"""A player's age in a season (the bundled data: 18 to 46)."""
EXPERIENCE = Bound("experience", 1, 40)
"""A player's season number in his career, 1 = rookie (the bundled data: at most 21)."""

# --- one game ----------------------------------------------------------------------------------
GAME_FTA = Bound("fta", 0, 50, implausible=True)
"""Free throws attempted by one player in one game: at most 50 (the record is 39)."""
GAME_FTM = Bound("ftm", 0, GAME_FTA.hi, implausible=True)
"""Free throws made by one player in one game: at most as many as attempted."""
GAME_PTS = _count("pts", RECORD_TEAM_GAME_PTS)
"""Points by one team in one game."""

GAME_FREE_THROWS = (GAME_FTM, GAME_FTA)
"""``(made, attempted)`` of one player in one game, for ``Fields.made_attempted``."""
SEASON_FREE_THROWS = (SEASON_FTM, SEASON_FTA)
"""``(made, attempted)`` of one player in one regular season."""

__all__ = [
    "AGE",
    "DATA_PLAYER_ID",
    "EXPERIENCE",
    "GAME_FREE_THROWS",
    "GAME_FTA",
    "GAME_FTM",
    "GAME_ID",
    "GAME_ID_MAX_LENGTH",
    "GAME_PTS",
    "GAME_SEQ",
    "INT64_MAX",
    "LEAGUE_GAMES",
    "PLAYER_ID",
    "SCHEDULED_GAMES",
    "SEASON",
    "SEASON_FREE_THROWS",
    "SEASON_FTA",
    "SEASON_FTM",
    "SEASON_GAMES",
    "SEASON_MINUTES",
    "SEASON_PTS",
    "Bound",
]
