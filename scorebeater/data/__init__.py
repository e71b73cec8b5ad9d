"""Real NBA history: the bundled copy and a checked loader for any directory in its layout.

Three gzip CSV files (see ``README.md`` beside this module):

- ``season_totals.csv.gz``: one row per player and season (the ground truth once final);
- ``games.csv.gz``: one row per game, with its season, type, schedule place and date;
- ``player_games.csv.gz``: one row per player and game in which he took a free throw.

:func:`load_history` checks the header of each file and every row. A bad row is rejected
with a reason (``ftm_gt_fta``, ``unknown_game``, ``implausible_fta``, ...; field reasons as in
:mod:`scorebeater.fields`, CSV dialect; the plausibility bounds are
:mod:`scorebeater.bounds`, shared with the Score API client and storage), counted in
:class:`LoadReport` and never silently dropped: the report is logged and returned, and the
daemon counts its rejections in ``scorebeater_records_rejected_total{kind="data_<file>"}``
(:meth:`LoadReport.rejections`). A missing file or a missing column is a
:class:`~scorebeater.errors.DataError`, since no row of it can be trusted.

A row the replay would serve is held to at least what the Score API client checks (its
records are :mod:`scorebeater.scoreapi.records`), so no accepted row is rejected again on
every fetch.

A game dated before an earlier ``game_seq`` of its season is kept but reported: a warning
``date_out_of_order`` in the report and the log. Real schedules do this (a postponed game keeps
its place), and rejecting the game would also drop its free throws; the bundled data has none.

A directory may hold games for only some seasons while its season totals reach further back
(previous-season features come from the totals).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import structlog

from scorebeater import bounds
from scorebeater.errors import DataError, ValidationError
from scorebeater.fields import Dialect, Fields

log = structlog.get_logger(__name__)

SEASON_TOTALS = "season_totals.csv.gz"
GAMES = "games.csv.gz"
PLAYER_GAMES = "player_games.csv.gz"
FILES = (SEASON_TOTALS, GAMES, PLAYER_GAMES)

SeasonType = Literal["regular", "playoffs"]
_SEASON_TYPES: tuple[SeasonType, ...] = ("regular", "playoffs")

_MAX_SAMPLES = 5


@dataclass(frozen=True, slots=True)
class SeasonTotal:
    """One player's official regular-season totals (counts are whole numbers)."""

    season: int
    player_id: int
    player: str
    age: int | None
    experience: int
    team: str
    games: int
    minutes: int | None
    ftm: int
    fta: int
    pts: int


@dataclass(frozen=True, slots=True)
class Game:
    """One scheduled game; ``game_seq`` orders a season's games, regular season first."""

    season: int
    season_type: SeasonType
    game_seq: int
    game_id: str
    date: date
    date_estimated: bool
    away: str
    home: str
    away_pts: int
    home_pts: int


@dataclass(frozen=True, slots=True)
class PlayerGame:
    """One player's free throws in one game. ``player_id`` is ``None`` where unmatched."""

    season: int
    season_type: SeasonType
    game_seq: int
    game_id: str
    date: date
    player_id: int | None
    player: str
    team: str
    ftm: int
    fta: int


def rejection_kind(file: str) -> str:
    """The ``kind`` label of a data file's rejections: ``data_player_games`` for
    ``player_games.csv.gz`` (the Score API's kinds are ``game``, ``boxscore_line``, ...)."""
    return "data_" + file.split(".", 1)[0]


@dataclass(slots=True)
class LoadReport:
    """What the loader accepted, rejected and warned about, per file and reason."""

    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    warnings: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Rows kept but reported (``date_out_of_order``), per file and code."""
    samples: list[str] = field(default_factory=list)
    """The first few rejections and warnings as ``file:line: reason: detail`` lines."""

    def reject(self, file: str, line: int, reason: str, detail: str) -> None:
        self.rejected[file, reason] += 1
        self._sample(file, line, reason, detail)

    def warn(self, file: str, line: int, code: str, detail: str) -> None:
        self.warnings[file, code] += 1
        self._sample(file, line, code, detail)

    def _sample(self, file: str, line: int, code: str, detail: str) -> None:
        if len(self.samples) < _MAX_SAMPLES * 4:
            self.samples.append(f"{file}:{line}: {code}: {detail}")

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def rejections(self) -> list[tuple[str, str, int]]:
        """``(kind, reason, count)`` of every rejection, for ``records_rejected{kind, reason}``
        (kind: :func:`rejection_kind`), sorted."""
        return sorted((rejection_kind(file), reason, n) for (file, reason), n in self.rejected.items())


@dataclass(frozen=True, slots=True)
class History:
    """Everything loaded from one data directory, plus the load report."""

    source: str
    season_totals: tuple[SeasonTotal, ...]
    games: tuple[Game, ...]
    player_games: tuple[PlayerGame, ...]
    report: LoadReport

    def totals_by_season(self) -> dict[int, dict[int, SeasonTotal]]:
        """``{season: {player_id: totals}}``."""
        out: dict[int, dict[int, SeasonTotal]] = {}
        for t in self.season_totals:
            out.setdefault(t.season, {})[t.player_id] = t
        return out

    def game_seasons(self) -> list[int]:
        """Seasons that have at least one regular-season game, ascending."""
        return sorted({g.season for g in self.games if g.season_type == "regular"})


def _fields(row: dict[str, str]) -> Fields:
    # No ``what``: the report prefixes each rejection with its own ``file:line``.
    return Fields(row, dialect=Dialect.CSV)


def _season(f: Fields) -> int:
    return f.within("season", bounds.SEASON)


def _parse_total(row: dict[str, str]) -> SeasonTotal:
    f = _fields(row)
    ftm, fta = f.made_attempted("ft", "fta", bounds.SEASON_FREE_THROWS)
    pts = f.within("pts", bounds.SEASON_PTS)
    if pts < ftm:
        raise f.invalid("pts", f"pts {pts} < ft {ftm}")
    return SeasonTotal(
        season=_season(f),
        player_id=f.within("player_id", bounds.DATA_PLAYER_ID),
        player=f.text("player"),
        age=f.opt_within("age", bounds.AGE),
        experience=f.within("experience", bounds.EXPERIENCE),
        team=f.opt_text("team") or "",
        games=f.within("g", bounds.SEASON_GAMES),
        minutes=f.opt_within("mp", bounds.SEASON_MINUTES),
        ftm=ftm,
        fta=fta,
        pts=pts,
    )


def _parse_game(row: dict[str, str]) -> Game:
    f = _fields(row)
    away, home = f.text("away"), f.text("home")
    if away == home:
        raise f.error("same_teams", f"away and home are both {away!r}")
    game_id = f.numeric_id("game_id")
    estimated = f.flag("date_estimated")
    return Game(
        season=_season(f),
        season_type=f.choice("season_type", _SEASON_TYPES),
        game_seq=f.within("game_seq", bounds.GAME_SEQ),
        game_id=game_id,
        date=f.date("date"),
        date_estimated=estimated,
        away=away,
        home=home,
        away_pts=f.within("away_pts", bounds.GAME_PTS),
        home_pts=f.within("home_pts", bounds.GAME_PTS),
    )


def _parse_player_game(row: dict[str, str]) -> PlayerGame:
    f = _fields(row)
    ftm, fta = f.made_attempted("ftm", "fta", bounds.GAME_FREE_THROWS)
    return PlayerGame(
        season=_season(f),
        season_type=f.choice("season_type", _SEASON_TYPES),
        game_seq=f.within("game_seq", bounds.GAME_SEQ),
        game_id=f.text("game_id"),
        date=f.date("date"),
        player_id=f.opt_within("player_id", bounds.DATA_PLAYER_ID),
        player=f.text("player"),
        team=f.opt_text("team") or "",
        ftm=ftm,
        fta=fta,
    )


_COLUMNS = {
    SEASON_TOTALS: (
        "season",
        "player_id",
        "player",
        "age",
        "experience",
        "team",
        "g",
        "mp",
        "ft",
        "fta",
        "pts",
    ),
    GAMES: (
        "season",
        "season_type",
        "game_seq",
        "game_id",
        "date",
        "date_estimated",
        "away",
        "home",
        "away_pts",
        "home_pts",
    ),
    PLAYER_GAMES: (
        "season",
        "season_type",
        "game_seq",
        "game_id",
        "date",
        "player_id",
        "player",
        "team",
        "ftm",
        "fta",
    ),
}

T = TypeVar("T")


def _rows(source: Path | resources.abc.Traversable, name: str) -> Iterator[tuple[int, dict[str, str]]]:
    path = source / name
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{source}: missing {name}") from None
    try:
        text = gzip.decompress(raw).decode("utf-8") if name.endswith(".gz") else raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable gzip UTF-8 CSV: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in _COLUMNS[name] if c not in (reader.fieldnames or ())]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    for row in reader:
        yield reader.line_num, row


def _load(
    source: Path | resources.abc.Traversable,
    name: str,
    parse: Callable[[dict[str, str]], T],
    report: LoadReport,
) -> list[T]:
    out: list[T] = []
    for line, row in _rows(source, name):
        if None in row or any(v is None for v in row.values()):
            report.reject(
                name, line, "bad_field_count", "row has a different number of fields than the header"
            )
            continue
        try:
            out.append(parse(row))
        except ValidationError as exc:
            report.reject(name, line, exc.reason, str(exc))
            continue
        report.accepted[name] += 1
    return out


def _check_player_game(
    pg: PlayerGame, game: Game | None, seen: set[tuple[str, str]]
) -> tuple[str, str] | None:
    """``(reason, detail)`` when a player-game disagrees with its game or repeats, else ``None``."""
    if game is None:
        return "unknown_game", f"game_id {pg.game_id} is not in {GAMES}"
    if (game.season, game.season_type, game.game_seq, game.date) != (
        pg.season,
        pg.season_type,
        pg.game_seq,
        pg.date,
    ):
        return "game_mismatch", f"game_id {pg.game_id} disagrees with {GAMES}"
    if pg.team and pg.team not in (game.home, game.away):
        # The Score API client would reject the served line on every fetch.
        return "unknown_team", f"game_id {pg.game_id}: team {pg.team!r} did not play in it"
    key = (pg.game_id, str(pg.player_id) if pg.player_id is not None else pg.player)
    if key in seen:
        return "duplicate", f"game_id {pg.game_id} player {pg.player!r}"
    seen.add(key)
    return None


def _report_dates_out_of_order(games: list[Game], report: LoadReport) -> None:
    """Warn for each game dated before a game earlier in its season's schedule.

    ``games`` is sorted by ``(season, game_seq)``. The game is kept: see the module docstring.
    """
    latest: Game | None = None
    out_of_order: list[str] = []
    for g in games:
        if latest is not None and latest.season == g.season and g.date < latest.date:
            out_of_order.append(g.game_id)
            report.warn(
                GAMES,
                0,
                "date_out_of_order",
                f"season {g.season} game_seq {g.game_seq} (game_id {g.game_id}) on {g.date}"
                f" is before game_seq {latest.game_seq} on {latest.date}",
            )
        if latest is None or latest.season != g.season or g.date > latest.date:
            latest = g
    if out_of_order:
        log.warning("data.dates_out_of_order", games=len(out_of_order), first=out_of_order[:_MAX_SAMPLES])


def bundled_data_dir() -> resources.abc.Traversable:
    """The data directory shipped inside the package."""
    return resources.files(__name__)


def load_history(directory: Path | str | None = None) -> History:
    """Load and check a data directory (``None``: the bundled copy).

    Rows are checked one by one; cross-file checks follow: a player-game whose game is not
    in ``games`` (or disagrees with it on season, type, sequence or date, or names a team
    that did not play in it) is rejected as ``unknown_game`` / ``game_mismatch`` /
    ``unknown_team``, duplicates as ``duplicate``. Games dated out of schedule order are
    kept, with a ``date_out_of_order`` warning.

    Raises:
        DataError: a file or a required column is missing, or a file cannot be decoded.
    """
    source: Path | resources.abc.Traversable
    if directory is None:
        source = bundled_data_dir()
    else:
        source = Path(directory)
        if not source.is_dir():
            raise DataError(f"{source}: not a directory")
    report = LoadReport()

    totals: list[SeasonTotal] = []
    seen_totals: set[tuple[int, int]] = set()
    for t in _load(source, SEASON_TOTALS, _parse_total, report):
        key = (t.season, t.player_id)
        if key in seen_totals:
            report.accepted[SEASON_TOTALS] -= 1
            report.reject(SEASON_TOTALS, 0, "duplicate", f"season {t.season} player_id {t.player_id}")
            continue
        seen_totals.add(key)
        totals.append(t)

    games: list[Game] = []
    by_id: dict[str, Game] = {}
    for g in _load(source, GAMES, _parse_game, report):
        if g.game_id in by_id:
            report.accepted[GAMES] -= 1
            report.reject(GAMES, 0, "duplicate", f"game_id {g.game_id}")
            continue
        by_id[g.game_id] = g
        games.append(g)

    player_games: list[PlayerGame] = []
    seen_pg: set[tuple[str, str]] = set()
    for pg in _load(source, PLAYER_GAMES, _parse_player_game, report):
        rejection = _check_player_game(pg, by_id.get(pg.game_id), seen_pg)
        if rejection is not None:
            report.accepted[PLAYER_GAMES] -= 1
            report.reject(PLAYER_GAMES, 0, *rejection)
            continue
        player_games.append(pg)

    games.sort(key=lambda g: (g.season, g.game_seq))
    player_games.sort(key=lambda p: (p.season, p.game_seq))
    _report_dates_out_of_order(games, report)
    log.info(
        "data.loaded",
        source=str(source),
        season_totals=len(totals),
        games=len(games),
        player_games=len(player_games),
        rejected=report.rejected_total,
        rejected_by_reason={f"{f}:{r}": n for (f, r), n in sorted(report.rejected.items())},
        warnings={f"{f}:{c}": n for (f, c), n in sorted(report.warnings.items())},
    )
    return History(
        source=str(source),
        season_totals=tuple(totals),
        games=tuple(games),
        player_games=tuple(player_games),
        report=report,
    )
