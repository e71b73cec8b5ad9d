"""Per-season indexes over the real data, built once at start-up, queried at a replay time.

The replay server answers every request from these indexes: nothing is parsed, grouped or
sorted per request except the games of one season (about 1,300) when the games feed is
asked. Box-score bodies do not depend on the replay time once a game is final, so each is
encoded once, on first request, and served as bytes afterwards.

Visibility is the only thing that depends on the replay time ``t`` (epoch seconds), and every
query takes it explicitly: a season whose publication is after ``t`` does not exist for the
caller, a game after ``t`` has no score, and season totals exist only once the regular season
is final. See :mod:`scorebeater.scoreapi.timeline` for the rules.
"""

from __future__ import annotations

import bisect
import datetime as dt
import unicodedata
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from scorebeater.errors import DataError
from scorebeater.scoreapi import timeline

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from scorebeater.data import Game, History, PlayerGame, SeasonTotal

GameStatus = Literal["scheduled", "in_progress", "final"]
SeasonStatus = Literal["scheduled", "in_progress", "regular_season_final", "final"]
GAME_STATUSES: tuple[GameStatus, ...] = ("scheduled", "in_progress", "final")

DERIVED_ID_BASE = 9_000_000_000
"""Derived player ids are ``DERIVED_ID_BASE + crc32(normalised name)``: above every real id."""

GameKey = tuple[int, str]
"""Keyset position in the games feed: ``(updated_at epoch seconds, game_id)``."""


def normalise_name(name: str) -> str:
    """Accents folded, case folded, punctuation dropped, whitespace collapsed."""
    folded = unicodedata.normalize("NFKD", name)
    ascii_only = "".join(c for c in folded if not unicodedata.combining(c))
    kept = "".join(c if c.isalnum() else " " for c in ascii_only.casefold())
    return " ".join(kept.split())


def derived_player_id(name: str) -> int:
    """Stable id for a play-by-play name without a Basketball-Reference id.

    The same name gives the same id in every season and on every run (CRC-32 is fixed), and
    the id is at least :data:`DERIVED_ID_BASE`, so it never equals a real id.
    """
    return DERIVED_ID_BASE + zlib.crc32(normalise_name(name).encode("utf-8"))


@dataclass(frozen=True, slots=True)
class GameEntry:
    """One game with its timeline instants (epoch seconds) and pre-built JSON parts."""

    game: Game
    published_at: int
    scheduled_at: int
    final_at: int
    lines: tuple[dict[str, Any], ...]
    static: dict[str, Any]
    """The fields that never change (ids, teams, schedule)."""
    _times: tuple[str, str, str]
    """``published_at``, ``scheduled_at``, ``final_at`` as RFC 3339."""

    def status(self, t: int) -> GameStatus:
        if t >= self.final_at:
            return "final"
        if t >= self.scheduled_at:
            return "in_progress"
        return "scheduled"

    def updated_at(self, t: int) -> int:
        """Replay time of the game's last status change at ``t`` (publication if none)."""
        if t >= self.final_at:
            return self.final_at
        if t >= self.scheduled_at:
            return self.scheduled_at
        return self.published_at

    def to_json(self, t: int) -> dict[str, Any]:
        """The contract's ``Game`` object as seen at ``t`` (caller checks visibility)."""
        status = self.status(t)
        final = status == "final"
        updated = {"scheduled": self._times[0], "in_progress": self._times[1], "final": self._times[2]}
        g = self.game
        return {
            **self.static,
            "status": status,
            "final_at": self._times[2] if final else None,
            "home_pts": g.home_pts if final else None,
            "away_pts": g.away_pts if final else None,
            "updated_at": updated[status],
        }

    def box_score_json(self) -> dict[str, Any]:
        """The contract's ``BoxScore`` (valid only once the game is final)."""
        g = self.game
        return {
            "game_id": g.game_id,
            "season": g.season,
            "season_type": g.season_type,
            "game_seq": g.game_seq,
            "date": g.date.isoformat(),
            "status": "final",
            "final_at": self._times[2],
            "teams": [
                {"side": "home", "team": g.home, "pts": g.home_pts},
                {"side": "away", "team": g.away, "pts": g.away_pts},
            ],
            "players": list(self.lines),
        }


@dataclass(slots=True)
class SeasonIndex:
    """Everything about one season, with instants in epoch seconds."""

    season: int
    published_at: int
    games: tuple[GameEntry, ...]
    """By ``game_seq``: regular season first."""
    regular_final_at: int
    """When the regular season turns final (= ``published_at`` for a totals-only season)."""
    final_at: int
    """When the whole season (playoffs included) turns final."""
    first_game_at: int
    scheduled_games_per_team: int | None
    first_regular_date: dt.date | None
    last_regular_date: dt.date | None
    totals: tuple[dict[str, Any], ...]
    """Player season totals as JSON objects, by ``player_id``."""
    totals_ids: list[int] = field(default_factory=list)

    @property
    def has_games(self) -> bool:
        return bool(self.games)

    def visible(self, t: int) -> bool:
        return t >= self.published_at

    def status(self, t: int) -> SeasonStatus:
        if t >= self.final_at:
            return "final"
        if t >= self.regular_final_at:
            return "regular_season_final"
        if t >= self.first_game_at:
            return "in_progress"
        return "scheduled"

    def totals_final(self, t: int) -> bool:
        """Season totals are the ground truth only once the regular season is final."""
        return t >= self.regular_final_at

    def to_json(self, t: int) -> dict[str, Any]:
        """The contract's ``Season`` object at ``t`` (caller checks visibility)."""
        counts: Counter[str] = Counter()
        for entry in self.games:
            if t >= entry.published_at:
                counts[entry.status(t)] += 1
                counts[entry.game.season_type] += 1
        regular_final = t >= self.regular_final_at
        return {
            "season": self.season,
            "status": self.status(t),
            "has_games": self.has_games,
            "published_at": timeline.rfc3339(self.published_at),
            "scheduled_games_per_team": self.scheduled_games_per_team,
            "first_regular_date": _iso(self.first_regular_date),
            "last_regular_date": _iso(self.last_regular_date),
            "regular_season_final_at": timeline.rfc3339(self.regular_final_at) if regular_final else None,
            "final_at": timeline.rfc3339(self.final_at) if t >= self.final_at else None,
            "games": {
                "regular": counts["regular"],
                "playoffs": counts["playoffs"],
                "scheduled": counts["scheduled"],
                "in_progress": counts["in_progress"],
                "final": counts["final"],
            },
            "totals_available": regular_final and bool(self.totals),
        }

    def games_page(
        self,
        t: int,
        *,
        status: GameStatus | None,
        updated_since: float | None,
        after: GameKey | None,
        limit: int,
    ) -> tuple[list[dict[str, Any]], GameKey | None, bool]:
        """Visible games ordered by ``(updated_at, game_id)``, strictly after ``after``.

        Returns ``(games, key of the last game returned or None, has_more)``.
        """
        keyed: list[tuple[GameKey, GameEntry]] = []
        for entry in self.games:
            if t < entry.published_at or (status is not None and entry.status(t) != status):
                continue
            updated = entry.updated_at(t)
            if updated_since is not None and updated <= updated_since:
                continue
            key = (updated, entry.game.game_id)
            if after is not None and key <= after:
                continue
            keyed.append((key, entry))
        keyed.sort(key=lambda item: item[0])
        page = keyed[:limit]
        last = page[-1][0] if page else None
        return [entry.to_json(t) for _, entry in page], last, len(keyed) > limit

    def totals_page(self, *, after: int | None, limit: int) -> tuple[list[dict[str, Any]], int | None, bool]:
        """Season totals by ``player_id``, strictly after ``after``: ``(rows, last id, has_more)``."""
        lo = 0 if after is None else bisect.bisect_right(self.totals_ids, after)
        page = self.totals[lo : lo + limit]
        last = page[-1]["player_id"] if page else None
        return list(page), last, lo + limit < len(self.totals)


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _line(pg: PlayerGame) -> dict[str, Any]:
    return {
        "player_id": pg.player_id if pg.player_id is not None else derived_player_id(pg.player),
        "player": pg.player,
        "team": pg.team or None,
        "ftm": pg.ftm,
        "fta": pg.fta,
    }


def _total(t: SeasonTotal) -> dict[str, Any]:
    return {
        "season": t.season,
        "player_id": t.player_id,
        "player": t.player,
        "age": t.age,
        "experience": t.experience,
        "team": t.team or None,
        "games": t.games,
        "minutes": t.minutes,
        "ftm": t.ftm,
        "fta": t.fta,
        "pts": t.pts,
    }


def _games_per_team(games: Iterable[Game]) -> int | None:
    per_team: Counter[str] = Counter()
    for g in games:
        per_team[g.home] += 1
        per_team[g.away] += 1
    return max(per_team.values()) if per_team else None


class ReplayCatalog:
    """Per-season indexes of one :class:`~scorebeater.data.History`. Immutable after build."""

    def __init__(self, seasons: dict[int, SeasonIndex]) -> None:
        self.seasons = dict(sorted(seasons.items()))
        self.games_by_id = {e.game.game_id: e for s in self.seasons.values() for e in s.games}
        self._box_cache: dict[str, bytes] = {}

    @classmethod
    def build(cls, history: History) -> ReplayCatalog:
        """Index ``history``.

        Raises:
            DataError: a real player id reaches the derived-id range (ids would collide).
        """
        top = max(
            [t.player_id for t in history.season_totals]
            + [p.player_id for p in history.player_games if p.player_id is not None],
            default=0,
        )
        if top >= DERIVED_ID_BASE:
            raise DataError(f"player_id {top} is in the derived-id range (>= {DERIVED_ID_BASE})")
        lines: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for pg in history.player_games:
            lines[pg.game_id].append(_line(pg))
        games: defaultdict[int, list[Game]] = defaultdict(list)
        for g in history.games:
            games[g.season].append(g)
        totals: defaultdict[int, list[SeasonTotal]] = defaultdict(list)
        for t in history.season_totals:
            totals[t.season].append(t)
        seasons = {
            season: _index_season(season, games.get(season, []), totals.get(season, []), lines)
            for season in sorted(set(games) | set(totals))
        }
        return cls(seasons)

    def visible_seasons(self, t: int) -> list[SeasonIndex]:
        return [s for s in self.seasons.values() if s.visible(t)]

    def season(self, season: int, t: int) -> SeasonIndex | None:
        """The season if it exists and is visible at ``t``, else ``None``."""
        index = self.seasons.get(season)
        return index if index is not None and index.visible(t) else None

    def game(self, game_id: str, t: int) -> GameEntry | None:
        """The game if it exists and is visible at ``t``, else ``None``."""
        entry = self.games_by_id.get(game_id)
        return entry if entry is not None and t >= entry.published_at else None

    def box_score_body(self, entry: GameEntry) -> bytes:
        """Encoded box score of a final game, cached (it never changes once final)."""
        body = self._box_cache.get(entry.game.game_id)
        if body is None:
            body = orjson.dumps(entry.box_score_json())
            self._box_cache[entry.game.game_id] = body
        return body

    def game_seasons(self) -> list[int]:
        """Seasons with at least one regular-season game, ascending."""
        return [
            s.season for s in self.seasons.values() if any(e.game.season_type == "regular" for e in s.games)
        ]

    def resolve_season(self, season: int | None) -> int:
        """``season`` checked against the data, or the last season with regular-season games.

        Raises:
            DataError: the data has no regular-season games, or none in ``season``.
        """
        available = self.game_seasons()
        if not available:
            raise DataError("the data has no regular-season games to replay")
        if season is None or season == 0:
            return available[-1]
        if season not in available:
            raise DataError(f"season {season} has no regular-season games in the data (have {available})")
        return season

    def default_start(self, season: int) -> dt.datetime:
        """The day before ``season``'s first regular-season game, 00:00 UTC."""
        first = self.seasons[season].first_regular_date
        if first is None:
            raise DataError(f"season {season} has no regular-season games in the data")
        return timeline.midnight(first - dt.timedelta(days=1))


def _index_season(
    season: int,
    games: Sequence[Game],
    totals: Sequence[SeasonTotal],
    lines: dict[str, list[dict[str, Any]]],
) -> SeasonIndex:
    ordered = sorted(games, key=lambda g: g.game_seq)
    regular = [g for g in ordered if g.season_type == "regular"]
    first_day = min((g.date for g in ordered), default=None)
    published = timeline.epoch(timeline.season_publication(season, first_day))
    if ordered:
        regular_final = max(timeline.epoch(timeline.final_at(g.date)) for g in (regular or ordered))
        final = max(timeline.epoch(timeline.final_at(g.date)) for g in ordered)
        first_game = min(timeline.epoch(timeline.scheduled_at(g.date)) for g in ordered)
    else:
        regular_final = final = first_game = published
    entries = tuple(_entry(g, published, regular_final, lines.get(g.game_id, [])) for g in ordered)
    sorted_totals = sorted(totals, key=lambda t: t.player_id)
    return SeasonIndex(
        season=season,
        published_at=published,
        games=entries,
        regular_final_at=regular_final,
        final_at=final,
        first_game_at=first_game,
        scheduled_games_per_team=_games_per_team(regular),
        first_regular_date=min((g.date for g in regular), default=None),
        last_regular_date=max((g.date for g in regular), default=None),
        totals=tuple(_total(t) for t in sorted_totals),
        totals_ids=[t.player_id for t in sorted_totals],
    )


def _entry(g: Game, season_published: int, regular_final: int, lines: list[dict[str, Any]]) -> GameEntry:
    scheduled = timeline.epoch(timeline.scheduled_at(g.date))
    final = timeline.epoch(timeline.final_at(g.date))
    # Playoff matchups are unknown until the regular season ends: publish them then.
    published = season_published if g.season_type == "regular" else max(season_published, regular_final)
    published = min(published, scheduled)
    static = {
        "game_id": g.game_id,
        "season": g.season,
        "season_type": g.season_type,
        "game_seq": g.game_seq,
        "date": g.date.isoformat(),
        "date_estimated": g.date_estimated,
        "scheduled_at": timeline.rfc3339(scheduled),
        "home": g.home,
        "away": g.away,
    }
    times = (timeline.rfc3339(published), timeline.rfc3339(scheduled), timeline.rfc3339(final))
    ordered_lines = tuple(sorted(lines, key=lambda line: line["player_id"]))
    return GameEntry(g, published, scheduled, final, ordered_lines, static, times)
