"""``ScoreApiClient``: the daemon's only way to read the Score API (``scoreapi/openapi.yaml``).

One keep-alive aiohttp session per client with a deadline on every request. Each call is an
idempotent GET retried only through :func:`scorebeater.clients.http.retrying`: timeouts,
connection errors, truncated bodies, unparsable JSON, 429 (honouring ``Retry-After``) and
5xx, bounded by ``max_attempts`` and ``retry_budget_s``. 401/403 raise
:class:`~scorebeater.errors.ScoreApiAuthError`, 404 :class:`~scorebeater.errors.ScoreApiNotFound`,
409 :class:`SeasonNotFinal` / :class:`GameNotFinal`, other 4xx a non-transient
:class:`~scorebeater.errors.ScoreApiError`.

Why an unparsable 200 body is transient: a correct server always sends JSON, so a body that
does not parse (cut short, mangled by a proxy) is a transport fault and the same GET may well
succeed. A body that parses but is not the contract's shape will parse the same way next time:
it is a non-transient error for the call.

Every record is validated. A malformed or impossible one (missing field, negative count,
FTM > FTA, a box score for another game, a row of another season) is rejected with a reason:
counted in :attr:`ScoreApiClient.rejected` and ``records_rejected{kind, reason}``, logged as
``score_api.record_rejected``, and skipped. It never reaches nor crashes the caller.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import aiohttp
import orjson
import structlog

from scorebeater.clients.http import is_transient_status, make_session, parse_retry_after, retrying
from scorebeater.errors import (
    ScoreApiAuthError,
    ScoreApiError,
    ScoreApiNotFound,
    UpstreamError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from types import TracebackType

    from scorebeater.config import ScoreApiConfig
    from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)

TARGET = "score_api"
MAX_PAGE_SIZE = 1000

GameStatus = Literal["scheduled", "in_progress", "final"]
SeasonStatus = Literal["scheduled", "in_progress", "regular_season_final", "final"]
SeasonType = Literal["regular", "playoffs"]
Endpoint = Literal["games", "boxscore", "season", "seasons", "totals"]

_GAME_STATUSES: tuple[GameStatus, ...] = ("scheduled", "in_progress", "final")
_SEASON_STATUSES: tuple[SeasonStatus, ...] = ("scheduled", "in_progress", "regular_season_final", "final")
_SEASON_TYPES: tuple[SeasonType, ...] = ("regular", "playoffs")


class ScoreApiNotFinal(ScoreApiError):
    """409: the resource exists but is not final yet; ask again later. ``code`` is the API's."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(TARGET, message, status=409, transient=False)


class SeasonNotFinal(ScoreApiNotFinal):
    """The season's regular season is not final, so its totals are not served yet."""


class GameNotFinal(ScoreApiNotFinal):
    """The game is not final, so its box score is not served yet."""


# --- records -----------------------------------------------------------------------------------


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

T = TypeVar("T")


class _Fields:
    """Typed, checked access to one JSON object; every failure is a ``ValidationError``."""

    def __init__(self, obj: object, what: str) -> None:
        if not isinstance(obj, dict):
            raise ValidationError("bad_type", f"{what} is {type(obj).__name__}, not an object")
        self.obj: dict[str, Any] = obj
        self.what = what

    def raw(self, key: str) -> Any:
        if key not in self.obj:
            raise ValidationError("missing_field", f"{self.what}: {key} is missing")
        return self.obj[key]

    def _bad(self, key: str, expected: str) -> ValidationError:
        return ValidationError("bad_type", f"{self.what}: {key}={self.obj.get(key)!r} is not {expected}")

    def integer(self, key: str, *, lo: int | None = None) -> int:
        value = self.raw(key)
        if type(value) is not int:
            raise self._bad(key, "an integer")
        if lo is not None and value < lo:
            reason = "negative_count" if value < 0 else "bad_value"
            raise ValidationError(reason, f"{self.what}: {key}={value} is below {lo}")
        return value

    def opt_integer(self, key: str, *, lo: int | None = None) -> int | None:
        return None if self.raw(key) is None else self.integer(key, lo=lo)

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise self._bad(key, "a non-empty string")
        return value

    def opt_text(self, key: str) -> str | None:
        return None if self.raw(key) is None else self.text(key)

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self._bad(key, "a boolean")
        return value

    def choice(self, key: str, choices: tuple[T, ...]) -> T:
        value = self.raw(key)
        for choice in choices:
            if value == choice:
                return choice
        raise ValidationError("bad_value", f"{self.what}: {key}={value!r} is not one of {choices}")

    def time(self, key: str) -> dt.datetime:
        value = self.text(key)
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self._bad(key, "an RFC 3339 date-time") from None
        if when.tzinfo is None:
            raise self._bad(key, "a date-time with an offset")
        return when.astimezone(dt.UTC)

    def opt_time(self, key: str) -> dt.datetime | None:
        return None if self.raw(key) is None else self.time(key)

    def date(self, key: str) -> dt.date:
        value = self.text(key)
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise self._bad(key, "an ISO date") from None

    def opt_date(self, key: str) -> dt.date | None:
        return None if self.raw(key) is None else self.date(key)

    def season(self, expected: int | None) -> int:
        season = self.integer("season", lo=1)
        if expected is not None and season != expected:
            raise ValidationError("wrong_season", f"{self.what}: season {season}, asked for {expected}")
        return season


def _made_attempted(f: _Fields) -> tuple[int, int]:
    ftm, fta = f.integer("ftm", lo=0), f.integer("fta", lo=0)
    if ftm > fta:
        raise ValidationError("ftm_gt_fta", f"{f.what}: ftm {ftm} > fta {fta}")
    return ftm, fta


def parse_season(obj: object) -> SeasonInfo:
    """Validate one ``Season`` object. Raises ``ValidationError``."""
    f = _Fields(obj, "season")
    counts = _Fields(f.obj.get("games"), "season.games")
    return SeasonInfo(
        season=f.season(None),
        status=f.choice("status", _SEASON_STATUSES),
        has_games=f.flag("has_games"),
        published_at=f.time("published_at"),
        scheduled_games_per_team=f.opt_integer("scheduled_games_per_team", lo=1),
        first_regular_date=f.opt_date("first_regular_date"),
        last_regular_date=f.opt_date("last_regular_date"),
        regular_season_final_at=f.opt_time("regular_season_final_at"),
        final_at=f.opt_time("final_at"),
        games=GameCounts(
            regular=counts.integer("regular", lo=0),
            playoffs=counts.integer("playoffs", lo=0),
            scheduled=counts.integer("scheduled", lo=0),
            in_progress=counts.integer("in_progress", lo=0),
            final=counts.integer("final", lo=0),
        ),
        totals_available=f.flag("totals_available"),
    )


def parse_game(obj: object, *, season: int | None = None) -> GameInfo:
    """Validate one ``Game`` of ``season`` (any season if ``None``). Raises ``ValidationError``."""
    f = _Fields(obj, "game")
    game_id = f.text("game_id")
    if not game_id.isdigit():
        raise ValidationError("bad_value", f"game: game_id={game_id!r} is not numeric")
    f.what = f"game {game_id}"
    home, away = f.text("home"), f.text("away")
    if home == away:
        raise ValidationError("same_teams", f"{f.what}: home and away are both {home!r}")
    status = f.choice("status", _GAME_STATUSES)
    final_at = f.opt_time("final_at")
    home_pts, away_pts = f.opt_integer("home_pts", lo=0), f.opt_integer("away_pts", lo=0)
    scored = final_at is not None and home_pts is not None and away_pts is not None
    unscored = final_at is None and home_pts is None and away_pts is None
    if (status == "final" and not scored) or (status != "final" and not unscored):
        raise ValidationError(
            "inconsistent_status", f"{f.what}: status {status} disagrees with final_at/scores"
        )
    return GameInfo(
        game_id=game_id,
        season=f.season(season),
        season_type=f.choice("season_type", _SEASON_TYPES),
        game_seq=f.integer("game_seq", lo=1),
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
    f = _Fields(obj, f"box score {game_id}")
    got = f.text("game_id")
    if got != game_id:
        raise ValidationError("unknown_game", f"asked for game {game_id}, got a box score of game {got}")
    f.choice("status", ("final",))
    teams: dict[str, tuple[str, int]] = {}
    raw_teams = f.raw("teams")
    if not isinstance(raw_teams, list) or len(raw_teams) != 2:  # noqa: PLR2004 - home and away
        raise ValidationError("bad_type", f"{f.what}: teams must be a list of two")
    for raw in raw_teams:
        t = _Fields(raw, f"{f.what} team")
        teams[t.choice("side", ("home", "away"))] = (t.text("team"), t.integer("pts", lo=0))
    if set(teams) != {"home", "away"} or teams["home"][0] == teams["away"][0]:
        raise ValidationError("bad_value", f"{f.what}: teams must be one home and one away team")
    return BoxScore(
        game_id=got,
        season=f.season(season),
        season_type=f.choice("season_type", _SEASON_TYPES),
        game_seq=f.integer("game_seq", lo=1),
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
    f = _Fields(obj, f"box score {box.game_id} player")
    player_id = f.integer("player_id", lo=1)
    f.what = f"box score {box.game_id} player {player_id}"
    team = f.opt_text("team")
    if team is not None and team not in (box.home, box.away):
        raise ValidationError("unknown_team", f"{f.what}: team {team!r} did not play in this game")
    ftm, fta = _made_attempted(f)
    return BoxScoreLine(player_id=player_id, player=f.text("player"), team=team, ftm=ftm, fta=fta)


def parse_player_total(obj: object, *, season: int | None = None) -> PlayerSeasonTotal:
    """Validate one ``PlayerTotal`` of ``season``. Raises ``ValidationError``."""
    f = _Fields(obj, "player total")
    player_id = f.integer("player_id", lo=1)
    f.what = f"player total {player_id}"
    ftm, fta = _made_attempted(f)
    pts = f.integer("pts", lo=0)
    if pts < ftm:
        raise ValidationError("bad_value", f"{f.what}: pts {pts} < ftm {ftm}")
    return PlayerSeasonTotal(
        season=f.season(season),
        player_id=player_id,
        player=f.text("player"),
        age=f.opt_integer("age", lo=0),
        experience=f.integer("experience", lo=1),
        team=f.opt_text("team"),
        games=f.integer("games", lo=0),
        minutes=f.opt_integer("minutes", lo=0),
        ftm=ftm,
        fta=fta,
        pts=pts,
    )


def _contract_error(path: str, detail: str) -> ScoreApiError:
    log.error("score_api.response_invalid", path=path, detail=detail)
    return ScoreApiError(
        TARGET, f"GET {path}: response does not match the contract: {detail}", transient=False
    )


def _page(
    body: object, path: str, *, cursor_nullable: bool
) -> tuple[list[Any], str | None, bool, dt.datetime]:
    if not isinstance(body, dict):
        raise _contract_error(path, f"body is {type(body).__name__}, not an object")
    data, cursor, has_more = body.get("data"), body.get("next_cursor"), body.get("has_more")
    if not isinstance(data, list):
        raise _contract_error(path, "data is not a list")
    if not isinstance(has_more, bool):
        raise _contract_error(path, "has_more is not a boolean")
    if not (isinstance(cursor, str) or (cursor is None and cursor_nullable)):
        raise _contract_error(path, "next_cursor is not a string")
    if has_more and cursor is None:
        raise _contract_error(path, "has_more without next_cursor")
    try:
        replay_time = _Fields(body, "page").time("replay_time")
    except ValidationError as exc:
        raise _contract_error(path, str(exc)) from exc
    return data, cursor, has_more, replay_time


# --- the client --------------------------------------------------------------------------------


class ScoreApiClient:
    """Async client of the Score API. Use as ``async with ScoreApiClient(cfg) as api:``.

    Every method is an idempotent GET, retried on transient failures within
    ``cfg.max_attempts`` and ``cfg.retry_budget_s``; the errors each raises are listed on
    it. Safe to share between tasks (one session, ``cfg.max_connections`` connections).
    """

    def __init__(self, cfg: ScoreApiConfig, *, metrics: Metrics | None = None) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._base = cfg.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self.rejected: Counter[tuple[str, str]] = Counter()
        """Rejected records by ``(kind, reason)`` since the client was created."""
        self.retries = 0

    async def __aenter__(self) -> Self:
        headers = {"Accept": "application/json"}
        if self._cfg.token is not None and self._cfg.token.get():
            headers["Authorization"] = f"Bearer {self._cfg.token.get()}"
        self._session = make_session(
            timeout_s=self._cfg.timeout_s,
            connect_timeout_s=self._cfg.connect_timeout_s,
            max_connections=self._cfg.max_connections,
            headers=headers,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- public API ----------------------------------------------------------------------------

    async def ping(self) -> dt.datetime:
        """One unretried ``GET /healthz``; returns the server's replay time.

        Raises ``ScoreApiError`` (transient when unreachable). Not counted in the metrics.
        """
        body = await self._attempt(None, "/healthz", None)
        try:
            return _Fields(body, "health").time("replay_time")
        except ValidationError as exc:
            raise _contract_error("/healthz", str(exc)) from exc

    async def seasons(self) -> list[SeasonInfo]:
        """Every season visible now, ascending. Invalid season objects are rejected and skipped.

        Raises ``ScoreApiError`` (and subclasses) after retries.
        """
        path = "/v1/seasons"
        body = await self._get("seasons", path)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise _contract_error(path, "data is not a list")
        out: list[SeasonInfo] = []
        for obj in body["data"]:
            season = self._validated("season", parse_season, obj)
            if season is not None:
                out.append(season)
        return out

    async def season(self, season: int) -> SeasonInfo:
        """One season. Raises ``ScoreApiNotFound`` if the API has no such season (yet).

        An invalid season object is an error for the call (there is nothing to skip to).
        """
        path = f"/v1/seasons/{season}"
        body = await self._get("season", path)
        try:
            info = parse_season(body)
        except ValidationError as exc:
            self._reject("season", exc)
            raise _contract_error(path, str(exc)) from exc
        if info.season != season:
            self._reject("season", ValidationError("wrong_season", f"asked for {season}, got {info.season}"))
            raise _contract_error(path, f"season {info.season} returned for {season}")
        return info

    async def games_page(
        self,
        season: int,
        *,
        status: GameStatus | None = None,
        updated_since: dt.datetime | None = None,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> GamesPage:
        """One page of the games feed, ordered by ``(updated_at, game_id)``.

        Pass the previous page's ``next_cursor`` (with the same filters) to continue or, later,
        to poll for changes. Invalid games are rejected and left out of the page.
        Raises ``ScoreApiNotFound`` (no such season), ``ScoreApiError`` (bad cursor: 400).
        """
        params: dict[str, str] = {"season": str(season), "limit": str(self._page_size(limit))}
        if status is not None:
            params["status"] = status
        if updated_since is not None:
            if updated_since.tzinfo is None:
                raise ValueError("updated_since must be timezone-aware")
            params["updated_since"] = updated_since.astimezone(dt.UTC).isoformat()
        if cursor is not None:
            params["cursor"] = cursor
        path = "/v1/games"
        body = await self._get("games", path, params)
        data, next_cursor, has_more, replay_time = _page(body, path, cursor_nullable=False)
        games = []
        for obj in data:
            game = self._validated("game", lambda o: parse_game(o, season=season), obj)
            if game is not None:
                games.append(game)
        assert next_cursor is not None  # noqa: S101 - _page checked it (cursor_nullable=False)
        return GamesPage(
            games=tuple(games), next_cursor=next_cursor, has_more=has_more, replay_time=replay_time
        )

    async def games_pages(
        self,
        season: int,
        *,
        status: GameStatus | None = None,
        updated_since: dt.datetime | None = None,
        cursor: str | None = None,
    ) -> AsyncIterator[GamesPage]:
        """Pages of the games feed until ``has_more`` is false (the last page's cursor resumes)."""
        while True:
            page = await self.games_page(season, status=status, updated_since=updated_since, cursor=cursor)
            yield page
            if not page.has_more:
                return
            cursor = page.next_cursor

    async def games(
        self, season: int, *, status: GameStatus | None = None, updated_since: dt.datetime | None = None
    ) -> AsyncIterator[GameInfo]:
        """Every game of ``season`` matching the filters, following the cursor."""
        async for page in self.games_pages(season, status=status, updated_since=updated_since):
            for game in page.games:
                yield game

    async def box_score(self, game_id: str, *, season: int | None = None) -> BoxScore | None:
        """The box score of a final game, or ``None`` if the API's answer was rejected.

        ``None`` means the box score itself was invalid (another game's, another season's,
        malformed teams): it is counted and logged. Invalid player lines are skipped, as are
        repeated player ids. Raises ``GameNotFinal`` (409), ``ScoreApiNotFound`` (404) and
        ``ScoreApiError`` after retries.
        """
        path = f"/v1/games/{game_id}/boxscore"
        body = await self._get("boxscore", path)
        if not isinstance(body, dict) or not isinstance(body.get("players"), list):
            raise _contract_error(path, "not a box score object with a players list")
        box = self._validated("boxscore", lambda o: parse_box_score_header(o, game_id, season), body)
        if box is None:
            return None
        lines: list[BoxScoreLine] = []
        seen: set[int] = set()
        for obj in body["players"]:
            line = self._validated("boxscore_line", lambda o: parse_box_score_line(o, box), obj)
            if line is None:
                continue
            if line.player_id in seen:
                self._reject(
                    "boxscore_line",
                    ValidationError("duplicate", f"game {game_id}: player {line.player_id} repeated"),
                )
                continue
            seen.add(line.player_id)
            lines.append(line)
        return BoxScore(
            game_id=box.game_id,
            season=box.season,
            season_type=box.season_type,
            game_seq=box.game_seq,
            date=box.date,
            final_at=box.final_at,
            home=box.home,
            away=box.away,
            home_pts=box.home_pts,
            away_pts=box.away_pts,
            players=tuple(lines),
        )

    async def season_totals(self, season: int) -> AsyncIterator[PlayerSeasonTotal]:
        """Official regular-season totals of ``season``, by player id, following the cursor.

        Raises ``SeasonNotFinal`` (409: regular season not over), ``ScoreApiNotFound``, and
        ``ScoreApiError`` after retries. Invalid or repeated rows are rejected and skipped.
        """
        path = f"/v1/seasons/{season}/player-totals"
        cursor: str | None = None
        seen: set[int] = set()
        while True:
            params = {"limit": str(self._page_size(None))}
            if cursor is not None:
                params["cursor"] = cursor
            body = await self._get("totals", path, params)
            data, cursor, has_more, _ = _page(body, path, cursor_nullable=True)
            for obj in data:
                row = self._validated("player_total", lambda o: parse_player_total(o, season=season), obj)
                if row is None:
                    continue
                if row.player_id in seen:
                    self._reject(
                        "player_total", ValidationError("duplicate", f"player {row.player_id} repeated")
                    )
                    continue
                seen.add(row.player_id)
                yield row
            if not has_more:
                return

    # --- internals -----------------------------------------------------------------------------

    def _page_size(self, limit: int | None) -> int:
        # The contract caps pages at MAX_PAGE_SIZE; a larger setting would only earn 400s.
        return max(1, min(limit or self._cfg.page_size, MAX_PAGE_SIZE))

    def _validated(self, kind: str, parse: Callable[[Any], T], obj: object) -> T | None:
        try:
            return parse(obj)
        except ValidationError as exc:
            self._reject(kind, exc)
            return None

    def _reject(self, kind: str, exc: ValidationError) -> None:
        self.rejected[kind, exc.reason] += 1
        if self._metrics is not None:
            self._metrics.records_rejected.labels(kind, exc.reason).inc()
        log.warning("score_api.record_rejected", kind=kind, reason=exc.reason, detail=str(exc))

    def _on_retry(self, exc: UpstreamError | Exception) -> None:  # noqa: ARG002 - retrying() callback
        self.retries += 1
        if self._metrics is not None:
            self._metrics.score_api_retries.inc()

    async def _get(self, endpoint: Endpoint, path: str, params: Mapping[str, str] | None = None) -> Any:
        async for attempt in retrying(
            target=TARGET,
            attempts=self._cfg.max_attempts,
            budget_s=self._cfg.retry_budget_s,
            on_retry=self._on_retry,
        ):
            with attempt:
                return await self._attempt(endpoint, path, params)
        raise AssertionError("unreachable: retrying() re-raises the last error")  # pragma: no cover

    async def _attempt(self, endpoint: Endpoint | None, path: str, params: Mapping[str, str] | None) -> Any:
        if self._session is None:
            raise RuntimeError("ScoreApiClient used outside 'async with'")
        started = time.perf_counter()
        code = 0
        try:
            async with self._session.get(self._base + path, params=params) as resp:
                code = resp.status
                body = await resp.read()
                headers = resp.headers
        except TimeoutError as exc:
            raise ScoreApiError(TARGET, f"GET {path}: timed out", transient=True) from exc
        except aiohttp.ClientPayloadError as exc:
            raise ScoreApiError(
                TARGET, f"GET {path}: truncated response body: {exc}", transient=True
            ) from exc
        except aiohttp.ClientConnectionError as exc:
            raise ScoreApiError(TARGET, f"GET {path}: connection failed: {exc}", transient=True) from exc
        except aiohttp.ClientError as exc:
            raise ScoreApiError(TARGET, f"GET {path}: {exc}", transient=False) from exc
        finally:
            self._observe(endpoint, code, time.perf_counter() - started)
        if code != 200:  # noqa: PLR2004
            raise _status_error(path, code, body, headers)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ScoreApiError(
                TARGET, f"GET {path}: body is not valid JSON ({len(body)} bytes)", status=code, transient=True
            ) from exc
        if self._metrics is not None and endpoint is not None:
            self._metrics.score_api_last_success.set_to_current_time()
        return parsed

    def _observe(self, endpoint: Endpoint | None, code: int, elapsed_s: float) -> None:
        if self._metrics is None or endpoint is None:
            return
        self._metrics.score_api_requests.labels(endpoint, str(code)).inc()
        self._metrics.score_api_duration.labels(endpoint).observe(elapsed_s)


def _error_detail(body: bytes) -> tuple[str, str]:
    """``(code, message)`` from a JSON error body; empty code when the body is not one."""
    try:
        error = orjson.loads(body).get("error", {})
        return str(error.get("code", "")), str(error.get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return "", body[:200].decode("utf-8", "replace")


def _status_error(  # noqa: PLR0911 - one return per status class
    path: str, status: int, body: bytes, headers: Mapping[str, str]
) -> ScoreApiError:
    code, message = _error_detail(body)
    text = f"GET {path}: {code or 'error'}: {message}"
    if status in (401, 403):
        return ScoreApiAuthError(TARGET, text, status=status)
    if status == 404:  # noqa: PLR2004
        return ScoreApiNotFound(TARGET, text, status=status)
    if status == 409:  # noqa: PLR2004
        if code == "season_not_final":
            return SeasonNotFinal(text, code=code)
        if code == "game_not_final":
            return GameNotFinal(text, code=code)
        return ScoreApiNotFinal(text, code=code)
    if is_transient_status(status):
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return ScoreApiError(TARGET, text, status=status, transient=True, retry_after_s=retry_after)
    return ScoreApiError(TARGET, text, status=status, transient=False)


__all__ = [
    "BoxScore",
    "BoxScoreLine",
    "GameCounts",
    "GameInfo",
    "GameNotFinal",
    "GamesPage",
    "PlayerSeasonTotal",
    "ScoreApiClient",
    "ScoreApiNotFinal",
    "SeasonInfo",
    "SeasonNotFinal",
]
