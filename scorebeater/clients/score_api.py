"""``ScoreApiClient``: the daemon's only way to read the Score API (``scoreapi/openapi.yaml``).

Open one with ``async with ScoreApiClient.open(cfg, metrics=m) as api:``; the client exists
only inside that block, over one keep-alive aiohttp session with a deadline on every request.
Each call is an idempotent GET retried only through :func:`scorebeater.clients.http.retrying`:
timeouts, connection errors, truncated bodies, unparsable JSON, 429 (honouring
``Retry-After``) and 5xx, bounded by ``max_attempts`` and ``retry_budget_s``. 401/403 raise
:class:`~scorebeater.errors.ScoreApiAuthError`, 404 :class:`~scorebeater.errors.ScoreApiNotFound`,
409 :class:`SeasonNotFinal` / :class:`GameNotFinal`, other 4xx a non-transient
:class:`~scorebeater.errors.ScoreApiError`.

Why an unparsable 200 body is transient: a correct server always sends JSON, so a body that
does not parse (cut short, mangled by a proxy) is a transport fault and the same GET may well
succeed. A body that parses but is not the contract's shape will parse the same way next time:
it is a non-transient error for the call.

Every record is validated (:mod:`scorebeater.scoreapi.records`). A malformed or impossible
one (missing field, negative count, FTM > FTA, a box score for another game, a row of another
season) is rejected with a reason: counted in :attr:`ScoreApiClient.rejected` and
``records_rejected{kind, reason}``, logged as ``score_api.record_rejected``, and skipped. It
never reaches nor crashes the caller.

Readiness (:meth:`ScoreApiClient.check_ready`) is one authenticated ``GET /v1/seasons``, not
the public ``/healthz``: a refused token makes the daemon not ready instead of failing every
run behind a green probe. Its answer is reused for :data:`READY_CACHE_S` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import aiohttp
import orjson
import structlog

from scorebeater.clients.http import make_session, retrying
from scorebeater.clients.score_api_errors import (
    TARGET,
    GameNotFinal,
    RecordRejected,
    ScoreApiNotFinal,
    SeasonNotFinal,
    contract_error,
    status_error,
)
from scorebeater.errors import (
    ScoreApiError,
    UpstreamError,
    ValidationError,
)
from scorebeater.fields import BAD_TYPE, Fields
from scorebeater.scoreapi.records import (
    BoxScore,
    BoxScoreLine,
    GameInfo,
    GamesPage,
    GameStatus,
    PlayerSeasonTotal,
    SeasonInfo,
    parse_box_score_header,
    parse_box_score_line,
    parse_game,
    parse_player_total,
    parse_season,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from scorebeater.config import ScoreApiConfig
    from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)

MAX_PAGE_SIZE = 1000
READY_CACHE_S = 5.0
"""How long a readiness answer, success or failure, is reused: a probe every second (or several
probes at once) costs the Score API at most one request per period."""
READY_TIMEOUT_S = 2.0
"""Deadline of the readiness request. Below the admin API's own check deadline, so a hanging
Score API is reported, and cached, as a timeout of this request."""

Endpoint = Literal["games", "boxscore", "season", "seasons", "totals"]
T = TypeVar("T")


def _page(
    body: object, path: str, *, cursor_nullable: bool
) -> tuple[list[Any], str | None, bool, dt.datetime]:
    if not isinstance(body, dict):
        raise contract_error(path, f"body is {type(body).__name__}, not an object")
    data, cursor, has_more = body.get("data"), body.get("next_cursor"), body.get("has_more")
    if not isinstance(data, list):
        raise contract_error(path, "data is not a list")
    if not isinstance(has_more, bool):
        raise contract_error(path, "has_more is not a boolean")
    if not (isinstance(cursor, str) or (cursor is None and cursor_nullable)):
        raise contract_error(path, "next_cursor is not a string")
    if has_more and cursor is None:
        raise contract_error(path, "has_more without next_cursor")
    try:
        replay_time = Fields(body, "page").time("replay_time")
    except ValidationError as exc:
        raise contract_error(path, str(exc)) from exc
    return data, cursor, has_more, replay_time


# --- the client --------------------------------------------------------------------------------


class ScoreApiClient:
    """Async client of the Score API: ``async with ScoreApiClient.open(cfg) as api:``.

    Every method is an idempotent GET, retried on transient failures within
    ``cfg.max_attempts`` and ``cfg.retry_budget_s``; the errors each raises are listed on
    it. Safe to share between tasks (one session, ``cfg.max_connections`` connections).
    """

    def __init__(
        self,
        cfg: ScoreApiConfig,
        *,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
        ready_cache_s: float = READY_CACHE_S,
    ) -> None:
        """A client over ``session``, which the caller owns and closes; :meth:`open` builds both.

        ``session`` should carry the headers :meth:`open` sets (Accept, bearer token) and a
        deadline on every request. ``ready_cache_s`` is how long :meth:`check_ready` reuses
        its answer.
        """
        self._cfg = cfg
        self._metrics = metrics
        self._base = cfg.base_url.rstrip("/")
        self._session = session
        self.rejected: Counter[tuple[str, str]] = Counter()
        """Rejected records by ``(kind, reason)`` since the client was created."""
        self.retries = 0
        self._ready_cache_s = ready_cache_s
        self._ready: tuple[float, ScoreApiError | None] | None = None
        """``(monotonic time, error or None)`` of the last readiness request."""
        self._ready_lock = asyncio.Lock()

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, cfg: ScoreApiConfig, *, metrics: Metrics | None = None, ready_cache_s: float = READY_CACHE_S
    ) -> AsyncIterator[Self]:
        """A ready client for the duration of the block; its session closes on exit.

        Opening makes no request (the server may still be down: calls retry). Not reentrant:
        each ``open`` builds its own session and connection pool.
        """
        headers = {"Accept": "application/json"}
        if cfg.token is not None and cfg.token.get():
            headers["Authorization"] = f"Bearer {cfg.token.get()}"
        async with make_session(
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            max_connections=cfg.max_connections,
            headers=headers,
        ) as session:
            yield cls(cfg, session=session, metrics=metrics, ready_cache_s=ready_cache_s)

    # --- public API ----------------------------------------------------------------------------

    async def ping(self) -> dt.datetime:
        """One unretried ``GET /healthz``; returns the server's replay time.

        ``/healthz`` is public: this proves the server answers, not that our token is
        accepted (that is :meth:`check_ready`). Raises ``ScoreApiError`` (transient when
        unreachable). Not counted in the metrics.
        """
        body = await self._attempt(None, "/healthz", None)
        try:
            return Fields(body, "health").time("replay_time")
        except ValidationError as exc:
            raise contract_error("/healthz", str(exc)) from exc

    async def check_ready(self) -> None:
        """Readiness: the Score API answers an authenticated call. Returns ``None`` when ready.

        One unretried ``GET /v1/seasons`` (the cheapest authenticated call of the contract)
        within :data:`READY_TIMEOUT_S`. Its answer, success or failure, is reused for
        ``ready_cache_s`` seconds after it arrives, and concurrent callers share one request.
        Not counted in the request metrics.

        Raises:
            ScoreApiAuthError: the token is refused (401/403).
            ScoreApiError: unreachable, timed out, 429 or 5xx, or an answer that is not the
                contract's season list.
        """
        async with self._ready_lock:
            if self._ready is None or time.monotonic() - self._ready[0] >= self._ready_cache_s:
                self._ready = (time.monotonic(), await self._probe_ready())
            error = self._ready[1]
        if error is not None:
            # The cached instance is raised again: drop the traceback of its previous raise
            # so it does not grow with every probe.
            raise error.with_traceback(None)

    async def seasons(self) -> list[SeasonInfo]:
        """Every season visible now, ascending. Invalid season objects are rejected and skipped.

        Raises ``ScoreApiError`` (and subclasses) after retries.
        """
        path = "/v1/seasons"
        body = await self._get("seasons", path)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise contract_error(path, "data is not a list")
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
            raise contract_error(path, str(exc)) from exc
        if info.season != season:
            self._reject("season", ValidationError("wrong_season", f"asked for {season}, got {info.season}"))
            raise contract_error(path, f"season {info.season} returned for {season}")
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

    async def box_score(
        self, game_id: str, *, season: int | None = None, strict: bool = False
    ) -> BoxScore | None:
        """The box score of a final game, or ``None`` if the API's answer was rejected.

        ``None`` means the box score itself was invalid (another game's, another season's,
        malformed teams): it is counted and logged. With ``strict``, such a box score, and a
        body that is not a box score object with a players list, raise :class:`RecordRejected`
        instead (not counted). Invalid player lines are skipped, as are repeated player ids.
        Raises ``GameNotFinal`` (409), ``ScoreApiNotFound`` (404) and ``ScoreApiError`` after
        retries.
        """
        path = f"/v1/games/{game_id}/boxscore"
        body = await self._get("boxscore", path)
        if not isinstance(body, dict) or not isinstance(body.get("players"), list):
            if strict:
                detail = f"box score {game_id}: not an object with a players list"
                raise RecordRejected("boxscore", BAD_TYPE, detail, payload=orjson.dumps(body))
            raise contract_error(path, "not a box score object with a players list")
        try:
            box = parse_box_score_header(body, game_id, season)
        except ValidationError as exc:
            if strict:
                raise RecordRejected("boxscore", exc.reason, str(exc), payload=orjson.dumps(body)) from exc
            self._reject("boxscore", exc)
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
                    ValidationError(
                        "duplicate",
                        f"game {game_id}: player {line.player_id} repeated",
                        key=f"{game_id}/{line.player_id}",
                    ),
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
                        "player_total",
                        ValidationError(
                            "duplicate", f"player {row.player_id} repeated", key=f"{season}/{row.player_id}"
                        ),
                    )
                    continue
                seen.add(row.player_id)
                yield row
            if not has_more:
                return

    # --- internals -----------------------------------------------------------------------------

    async def _probe_ready(self) -> ScoreApiError | None:
        path = "/v1/seasons"
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                body = await self._attempt(None, path, None)
        except TimeoutError:
            return ScoreApiError(TARGET, f"GET {path}: timed out after {READY_TIMEOUT_S} s", transient=True)
        except ScoreApiError as exc:
            return exc
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return contract_error(path, "data is not a list")
        return None

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
        log.warning("score_api.record_rejected", kind=kind, reason=exc.reason, key=exc.key, detail=str(exc))

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
            raise status_error(path, code, body, headers)
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


__all__ = [
    "GameNotFinal",
    "RecordRejected",
    "ScoreApiClient",
    "ScoreApiNotFinal",
    "SeasonNotFinal",
]
