"""Test helpers for the Score API: histories, a fault-injecting middleware, a running replay app.

The replay server under test is always the real one (``create_app`` over a real catalog); faults
are injected by an aiohttp middleware placed in front of its handlers, so what the client
sees is what a misbehaving network or provider would send over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from scorebeater.config import ScoreApiConfig, Secret
from scorebeater.data import Game, History, LoadReport, PlayerGame, SeasonTotal, SeasonType, load_history
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.scoreapi.replay import create_app
from scorebeater.scoreapi.timeline import ManualClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from aiohttp.typedefs import Handler, Middleware


@functools.cache
def bundled_history() -> History:
    """The bundled real data, loaded once per test process (about a second)."""
    return load_history()


@functools.cache
def bundled_catalog() -> ReplayCatalog:
    return ReplayCatalog.build(bundled_history())


# --- synthetic histories -----------------------------------------------------------------------

TEAMS = ("AAA", "BBB", "CCC", "DDD")
UNMATCHED_NAME = "Zoë Unmatched-Player"
"""A play-by-play name without a Basketball-Reference id (gets a derived id)."""


def _player_id(team_index: int, slot: int) -> int:
    return 100 + team_index * 10 + slot


def synthetic_history(
    game_seasons: tuple[int, ...] = (2013, 2014, 2015), totals_only: tuple[int, ...] = (2011, 2012)
) -> History:
    """A small deterministic league.

    Each game season: 6 regular-season days (Nov 1-6 of the start year), two games a day
    between four teams, then 2 playoff days (Apr 20-21 of the end year), one game a day. Every
    team has two matched players (ids 100+) and team AAA also an unmatched one. Season totals
    of matched players equal their summed regular-season FTM.
    """
    games: list[Game] = []
    player_games: list[PlayerGame] = []
    totals: list[SeasonTotal] = []
    for season in game_seasons:
        days = [dt.date(season - 1, 11, d) for d in range(1, 7)]
        schedule: list[tuple[SeasonType, dt.date, str, str]] = []
        for i, day in enumerate(days):
            rival = TEAMS[1 + i % 3]
            rest = [t for t in TEAMS[1:] if t != rival]
            pairs = [(TEAMS[0], rival), (rest[0], rest[1])]
            schedule.extend(("regular", day, home, away) for home, away in pairs)
        schedule.append(("playoffs", dt.date(season, 4, 20), TEAMS[0], TEAMS[1]))
        schedule.append(("playoffs", dt.date(season, 4, 21), TEAMS[1], TEAMS[0]))
        ftm_sum: dict[int, tuple[int, int]] = {}
        for seq, (kind, day, home, away) in enumerate(schedule, start=1):
            game_id = f"{season}{seq:05d}"
            games.append(
                Game(
                    season=season,
                    season_type=kind,
                    game_seq=seq,
                    game_id=game_id,
                    date=day,
                    date_estimated=False,
                    away=away,
                    home=home,
                    away_pts=90 + seq % 7,
                    home_pts=95 + seq % 5,
                )
            )
            for team in (home, away):
                t = TEAMS.index(team)
                for slot in (1, 2):
                    pid = _player_id(t, slot)
                    fta = (seq + slot + t) % 5 + 1
                    ftm = fta - (seq + slot) % 2
                    player_games.append(
                        PlayerGame(season, kind, seq, game_id, day, pid, f"Player {pid}", team, ftm, fta)
                    )
                    if kind == "regular":
                        m, a = ftm_sum.get(pid, (0, 0))
                        ftm_sum[pid] = (m + ftm, a + fta)
                if team == TEAMS[0]:
                    player_games.append(
                        PlayerGame(season, kind, seq, game_id, day, None, UNMATCHED_NAME, team, 1, 2)
                    )
        totals.extend(
            SeasonTotal(season, pid, f"Player {pid}", 25, 3, "AAA", 6, 200, m, a, 2 * m + 10)
            for pid, (m, a) in sorted(ftm_sum.items())
        )
    for season in totals_only:
        totals.extend(
            SeasonTotal(
                season, _player_id(t, 1), f"Player {_player_id(t, 1)}", 24, 2, TEAMS[t], 50, 1000, 40, 50, 300
            )
            for t in range(4)
        )
    return History(
        source="synthetic",
        season_totals=tuple(totals),
        games=tuple(sorted(games, key=lambda g: (g.season, g.game_seq))),
        player_games=tuple(player_games),
        report=LoadReport(),
    )


# --- faults ------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected failure. ``kind``:

    - ``status``: answer ``status`` with ``headers`` and a JSON error body;
    - ``delay``: hold the answer for ``delay_s`` (a client timeout), then pass through;
    - ``malformed``: 200 with a body that is not JSON;
    - ``truncated``: 200 announcing the full length, send half, drop the connection;
    - ``mutate``: pass through, then rewrite the JSON body with ``mutate``;
    - ``body``: 200 with ``body`` verbatim;
    - ``reset``: abort the connection without an answer (a TCP reset).
    """

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    mutate: Callable[[Any], Any] | None = None
    body: bytes = b""


class FaultInjector:
    """Queues of faults per path prefix, consumed one per matching request, in order; and
    optionally chaos: a random share of the requests failed with a random fault (seeded)."""

    def __init__(self) -> None:
        self._queues: list[tuple[str, list[Fault]]] = []
        self._chaos: tuple[str, float, tuple[Fault, ...], random.Random] | None = None
        self.hits: list[tuple[str, float]] = []
        """``(path, loop time)`` of every request seen, faulted or not."""
        self.release = asyncio.Event()

    def add(self, path_prefix: str, *faults: Fault) -> None:
        self._queues.append((path_prefix, list(faults)))

    def chaos(self, rate: float, faults: tuple[Fault, ...], *, seed: int, path_prefix: str = "/v1/") -> None:
        """From now on, answer a share ``rate`` (0..1) of the requests under ``path_prefix`` with one
        of ``faults``, drawn by a generator seeded with ``seed`` (queued faults go first)."""
        if not 0 <= rate <= 1 or not faults:
            raise ValueError("chaos needs a rate in 0..1 and at least one fault")
        self._chaos = (path_prefix, rate, faults, random.Random(seed))  # noqa: S311 - not crypto

    def calm(self) -> None:
        """End the chaos (queued faults still apply)."""
        self._chaos = None

    def pending(self) -> int:
        return sum(len(q) for _, q in self._queues)

    def _next(self, path: str) -> Fault | None:
        for prefix, queue in self._queues:
            if path.startswith(prefix) and queue:
                return queue.pop(0)
        if self._chaos is not None:
            prefix, rate, faults, rng = self._chaos
            if path.startswith(prefix) and rng.random() < rate:
                return rng.choice(faults)
        return None

    @property
    def middleware(self) -> Middleware:
        @web.middleware
        async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.hits.append((request.path, asyncio.get_running_loop().time()))
            fault = self._next(request.path)
            if fault is None:
                return await handler(request)
            return await _apply(fault, request, handler, self.release)

        return inject


def _body_bytes(response: web.Response) -> bytes:
    body = response.body
    if not isinstance(body, bytes | bytearray):
        raise TypeError(f"a fault needs a buffered body, got {type(body).__name__}")
    return bytes(body)


async def _buffered(handler: Handler, request: web.Request) -> web.Response:
    """The replay handler's answer, which a fault rewrites: always a buffered ``web.Response``."""
    full = await handler(request)
    if not isinstance(full, web.Response):
        raise TypeError(f"a fault needs a buffered response, got {type(full).__name__}")
    return full


async def _apply(  # noqa: PLR0911 - one return per fault kind
    fault: Fault, request: web.Request, handler: Handler, release: asyncio.Event
) -> web.StreamResponse:
    if fault.kind == "status":
        body = orjson.dumps({"error": {"code": "injected", "message": f"injected {fault.status}"}})
        return web.Response(
            status=fault.status, body=body, headers=fault.headers, content_type="application/json"
        )
    if fault.kind == "delay":
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), fault.delay_s)
        return await handler(request)
    if fault.kind == "malformed":
        return web.Response(body=b'{"data": [ {"game_id": ', content_type="application/json")
    if fault.kind == "body":
        return web.Response(body=fault.body, content_type="application/json")
    if fault.kind == "truncated":
        payload = _body_bytes(await _buffered(handler, request))
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload[: len(payload) // 2])
        if request.transport is not None:  # None only once the client has gone already
            request.transport.close()
        return resp
    if fault.kind == "reset":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)  # never sent: the connection is gone
    if fault.kind == "mutate":
        if fault.mutate is None:
            raise ValueError("a 'mutate' fault needs a mutate function")
        full = await _buffered(handler, request)
        data = fault.mutate(orjson.loads(_body_bytes(full)))
        return web.Response(body=orjson.dumps(data), status=full.status, content_type="application/json")
    raise AssertionError(f"unknown fault kind {fault.kind!r}")


# --- a running replay app ----------------------------------------------------------------------


@dataclass
class RunningReplay:
    url: str
    clock: ManualClock
    catalog: ReplayCatalog
    faults: FaultInjector

    def client_config(self, **overrides: Any) -> ScoreApiConfig:
        """A client config for this server: short timeouts, a small retry budget."""
        settings: dict[str, Any] = {
            "base_url": self.url,
            "timeout_s": 5.0,
            "connect_timeout_s": 2.0,
            "max_attempts": 4,
            "retry_budget_s": 10.0,
            "page_size": 500,
        }
        settings.update(overrides)
        return ScoreApiConfig(**settings)


@contextlib.asynccontextmanager
async def running_replay(
    catalog: ReplayCatalog,
    start: dt.datetime,
    *,
    token: str | None = None,
    rate_limit: float | None = None,
) -> AsyncIterator[RunningReplay]:
    """The real replay app on a loopback port, with a manual clock and a fault injector."""
    clock = ManualClock(start)
    faults = FaultInjector()
    app = create_app(
        catalog,
        clock,
        token=Secret(token) if token else None,
        rate_limit=rate_limit,
        middlewares=[faults.middleware],
    )
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield RunningReplay(
            url=f"http://127.0.0.1:{server.port}", clock=clock, catalog=catalog, faults=faults
        )
    finally:
        faults.release.set()
        await server.close()
