"""The replay Score API: real seasons served through the contract as if live.

``scorebeater replay-api`` runs :func:`command`; the daemon embeds :func:`serve_replay`.
Both build a :class:`~scorebeater.scoreapi.catalog.ReplayCatalog` once and answer from it at
the replay clock's current time, so a game turns final as the clock passes it and a season's
totals appear after its last regular-season game. The contract is ``openapi.yaml`` beside
this module (served at ``/openapi.yaml``).

Request pipeline (outermost first): the contract's JSON errors for every failure
(:func:`scorebeater.httpsurface.surface_app`), then from :mod:`scorebeater.scoreapi.middleware`
bearer auth (constant-time compare) and an optional token-bucket rate limit (429 +
``Retry-After``), then the handler. Every response carries ``X-Replay-Time``. Integer
parameters are ASCII digits within their documented range (:func:`~scorebeater.httpsurface.int_param`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from scorebeater.config import Secret, secret_from_option
from scorebeater.data import History, load_history
from scorebeater.errors import ConfigError
from scorebeater.httpsurface import ApiError, coded_error, int_param, json_response, surface_app
from scorebeater.lifecycle import run_until_signal
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import GAME_STATUSES, GameKey, GameStatus, ReplayCatalog, SeasonIndex
from scorebeater.scoreapi.middleware import TokenBucket, auth
from scorebeater.scoreapi.middleware import rate_limit as limit_rate
from scorebeater.scoreapi.timeline import AcceleratedClock, ReplayClock

if TYPE_CHECKING:
    import argparse

    from aiohttp.typedefs import Middleware

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
CURSOR_VERSION = 1
DEFAULT_TOKEN_ENV = "SCOREBEATER_SCORE_API_TOKEN"  # noqa: S105 - a variable's name, not a secret
REPLAY_TIME_HEADER = "X-Replay-Time"


@dataclass(frozen=True, slots=True)
class ReplayState:
    """What the handlers share; held in the app under :data:`STATE`."""

    catalog: ReplayCatalog
    clock: ReplayClock
    openapi: bytes

    def now(self) -> int:
        return timeline.epoch(self.clock.now())


STATE = web.AppKey("replay_state", ReplayState)
REPLAY_T = web.RequestKey("replay_t", int)
"""The request's replay time (epoch seconds), fixed at first use."""


def _state(request: web.Request) -> ReplayState:
    return request.app[STATE]


def _stamp_replay_time(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[REPLAY_TIME_HEADER] = timeline.rfc3339(_replay_time(request))


def _replay_time(request: web.Request) -> int:
    # One instant per request, so every part of an answer agrees with its header.
    t = request.get(REPLAY_T)
    if t is None:
        t = _state(request).now()
        request[REPLAY_T] = t
    return t


# --- parameters --------------------------------------------------------------------------------


def _season_param(value: str | None, name: str) -> int:
    if value is None or value == "":
        raise ApiError(400, "missing_parameter", f"{name} is required", param=name)
    return int_param(value, name, lo=1, hi=9999)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    return DEFAULT_LIMIT if raw is None else int_param(raw, "limit", lo=1, hi=MAX_LIMIT)


def _status_param(value: str | None) -> GameStatus | None:
    if value is None:
        return None
    for status in GAME_STATUSES:
        if value == status:
            return status
    raise ApiError(
        400, "invalid_parameter", f"status must be one of {', '.join(GAME_STATUSES)}", param="status"
    )


def _time_param(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be an RFC 3339 date-time", param=name
        ) from None
    if when.tzinfo is None:
        raise ApiError(400, "invalid_parameter", f"{name} must carry a UTC offset (Z or +00:00)", param=name)
    return when.timestamp()


def encode_cursor(payload: Mapping[str, Any]) -> str:
    """Opaque cursor text (base64url JSON); clients must not build or parse it."""
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode("ascii")


def _decode_cursor(text: str, kind: str) -> dict[str, Any]:
    bad = ApiError(400, "invalid_cursor", "cursor is not one this server issued", param="cursor")
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION or payload.get("k") != kind:
        raise bad
    return payload


def _games_after(payload: Mapping[str, Any]) -> GameKey | None:
    after = payload.get("after")
    if after is None:
        return None
    if (
        isinstance(after, list)
        and len(after) == 2  # noqa: PLR2004 - (updated_at, game_id)
        and isinstance(after[0], int)
        and isinstance(after[1], str)
    ):
        return after[0], after[1]
    raise ApiError(400, "invalid_cursor", "cursor is not one this server issued", param="cursor")


# --- handlers ----------------------------------------------------------------------------------


def _visible_season(request: web.Request, season: int) -> SeasonIndex:
    index = _state(request).catalog.season(season, _replay_time(request))
    if index is None:
        raise ApiError(404, "season_not_found", f"no season {season}")
    return index


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "replay_time": timeline.rfc3339(_replay_time(request))})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_state(request).openapi, content_type="application/yaml")


async def list_seasons(request: web.Request) -> web.Response:
    t = _replay_time(request)
    seasons = [s.to_json(t) for s in _state(request).catalog.visible_seasons(t)]
    return json_response({"replay_time": timeline.rfc3339(t), "data": seasons})


async def get_season(request: web.Request) -> web.Response:
    season = int_param(request.match_info["season"], "season", lo=1, hi=9999)
    return json_response(_visible_season(request, season).to_json(_replay_time(request)))


async def list_games(request: web.Request) -> web.Response:
    query = request.query
    season = _season_param(query.get("season"), "season")
    status = _status_param(query.get("status"))
    since = _time_param(query.get("updated_since"), "updated_since")
    limit = _limit(request)
    after: GameKey | None = None
    cursor = query.get("cursor")
    if cursor:
        payload = _decode_cursor(cursor, "games")
        if (payload.get("season"), payload.get("status"), payload.get("since")) != (season, status, since):
            raise ApiError(
                400,
                "invalid_cursor",
                "cursor was issued for other season/status/updated_since values",
                param="cursor",
            )
        after = _games_after(payload)
    index = _visible_season(request, season)
    t = _replay_time(request)
    games, last, has_more = index.games_page(t, status=status, updated_since=since, after=after, limit=limit)
    # Always a cursor: it is the resume point of a poll even when this page is empty.
    resume = last if last is not None else after
    next_cursor = encode_cursor(
        {
            "v": CURSOR_VERSION,
            "k": "games",
            "season": season,
            "status": status,
            "since": since,
            "after": list(resume) if resume is not None else None,
        }
    )
    return json_response(
        {"replay_time": timeline.rfc3339(t), "data": games, "next_cursor": next_cursor, "has_more": has_more}
    )


async def get_box_score(request: web.Request) -> web.Response:
    game_id = request.match_info["game_id"]
    state = _state(request)
    t = _replay_time(request)
    entry = state.catalog.game(game_id, t)
    if entry is None:
        raise ApiError(404, "game_not_found", f"no game {game_id}")
    if entry.status(t) != "final":
        raise ApiError(
            409, "game_not_final", f"game {game_id} is {entry.status(t)}; box scores are served once final"
        )
    return web.Response(body=state.catalog.box_score_body(entry), content_type="application/json")


async def list_player_totals(request: web.Request) -> web.Response:
    season = int_param(request.match_info["season"], "season", lo=1, hi=9999)
    limit = _limit(request)
    after: int | None = None
    cursor = request.query.get("cursor")
    if cursor:
        payload = _decode_cursor(cursor, "totals")
        raw_after = payload.get("after")
        if payload.get("season") != season or not isinstance(raw_after, int):
            raise ApiError(400, "invalid_cursor", "cursor was issued for another season", param="cursor")
        after = raw_after
    index = _visible_season(request, season)
    t = _replay_time(request)
    if not index.totals_final(t):
        raise ApiError(
            409,
            "season_not_final",
            f"season {season} is {index.status(t)}; totals are final after its regular season",
        )
    rows, last, has_more = index.totals_page(after=after, limit=limit)
    next_cursor = (
        encode_cursor({"v": CURSOR_VERSION, "k": "totals", "season": season, "after": last})
        if has_more and last is not None
        else None
    )
    return json_response(
        {"replay_time": timeline.rfc3339(t), "data": rows, "next_cursor": next_cursor, "has_more": has_more}
    )


def _openapi_text() -> bytes:
    return resources.files("scorebeater.scoreapi").joinpath("openapi.yaml").read_bytes()


def create_app(
    catalog: ReplayCatalog,
    clock: ReplayClock,
    *,
    token: Secret | None = None,
    rate_limit: float | None = None,
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The replay Score API as an aiohttp application.

    ``token``: bearer token clients must send (``None`` or empty: no auth). ``rate_limit``:
    requests per second before 429 (``None``: unlimited). ``middlewares`` run inside the
    error middleware and before auth (tests inject faults there).
    """
    chain: list[Middleware] = [*middlewares]
    if token is not None and token.get():
        chain.append(auth(token))
    if rate_limit is not None:
        chain.append(limit_rate(TokenBucket(rate_limit)))
    app = surface_app(coded_error, surface="replay", stamp=_stamp_replay_time, middlewares=chain)
    app[STATE] = ReplayState(catalog=catalog, clock=clock, openapi=_openapi_text())
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_get("/v1/seasons", list_seasons)
    app.router.add_get("/v1/seasons/{season}", get_season)
    app.router.add_get("/v1/seasons/{season}/player-totals", list_player_totals)
    app.router.add_get("/v1/games", list_games)
    app.router.add_get("/v1/games/{game_id}/boxscore", get_box_score)
    return app


@dataclass(frozen=True, slots=True)
class ReplayServer:
    """A running replay server: its base ``url``, ``clock`` and the replayed ``season``."""

    url: str
    clock: ReplayClock
    catalog: ReplayCatalog
    season: int
    start: dt.datetime


@contextlib.asynccontextmanager
async def serve_replay(
    history: History,
    *,
    host: str = "127.0.0.1",
    port: int = 8600,
    speed: float = 86400.0,
    start: dt.datetime | None = None,
    season: int | None = None,
    token: Secret | None = None,
    rate_limit: float | None = None,
    clock: ReplayClock | None = None,
) -> AsyncIterator[ReplayServer]:
    """Serve ``history`` on ``host:port`` (0: any free port) until the block exits.

    The replay clock starts when the server is listening, at ``start`` (default: the day
    before ``season``'s first regular-season game, 00:00 UTC; ``season`` default: the last
    with regular-season games), running ``speed`` times real time. Pass ``clock`` to drive
    time yourself (``start`` and ``speed`` are then ignored).

    Raises:
        DataError: the data has nothing to replay, or ``season`` has no games.
        OSError: the address cannot be bound.
    """
    catalog = ReplayCatalog.build(history)
    replayed = catalog.resolve_season(season)
    if clock is None:
        clock = AcceleratedClock(start if start is not None else catalog.default_start(replayed), speed)
    runner = web.AppRunner(create_app(catalog, clock, token=token, rate_limit=rate_limit), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        url_host = f"[{host}]" if ":" in host else host
        url = f"http://{url_host}:{runner.addresses[0][1]}"
        started = clock.now()
        log.info(
            "replay.started",
            url=url,
            season=replayed,
            replay_time=timeline.rfc3339(timeline.epoch(started)),
            speed=speed,
            auth=token is not None and bool(token.get()),
            rate_limit=rate_limit,
            seasons=len(catalog.seasons),
            games=len(catalog.games_by_id),
        )
        yield ReplayServer(url=url, clock=clock, catalog=catalog, season=replayed, start=started)
    finally:
        await runner.cleanup()
        log.info("replay.stopped")


async def _serve(
    history: History,
    args: argparse.Namespace,
    token: Secret | None,
    start: dt.datetime | None,
    stop: asyncio.Event,
) -> None:
    async with serve_replay(
        history,
        host=args.host,
        port=args.port,
        speed=args.speed,
        start=start,
        season=args.season,
        token=token,
        rate_limit=args.rate_limit,
    ):
        await stop.wait()


async def command(args: argparse.Namespace) -> int:
    """``scorebeater replay-api``: serve until SIGINT/SIGTERM, then exit 0 (see ``lifecycle``).

    Raises:
        ConfigError: ``--start`` is not an ISO date or date-time with an offset, or
            ``--token-env`` names a variable that is unset or empty (or is no valid name).
        DataError: the data directory is unusable or has no such season.
    """
    start: dt.datetime | None = None
    if args.start:
        try:
            start = timeline.parse_start(args.start)
        except ValueError as exc:
            raise ConfigError("--start", [str(exc)]) from exc
    # --token-env VAR must name a set variable; without the option, the default variable is
    # used if set; '' (or the default unset) serves without auth, which is worth a warning.
    token_env = DEFAULT_TOKEN_ENV if args.token_env is None else args.token_env
    token = secret_from_option(token_env, option="--token-env", required=args.token_env is not None)
    if token is None:
        log.warning("replay.auth_disabled", token_env=token_env, effect="/v1 requests need no token")
    history = load_history(args.data)
    await run_until_signal(functools.partial(_serve, history, args, token, start), name="replay-api")
    return 0
