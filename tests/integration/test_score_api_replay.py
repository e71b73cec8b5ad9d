"""The replay server over real HTTP on loopback: time, polling, leaks, auth, limits, errors."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.scoreapi.replay import create_app
from scorebeater.scoreapi.timeline import ManualClock
from scorebeater.testing.score_api import (
    RunningReplay,
    bundled_catalog,
    bundled_history,
    running_replay,
    synthetic_history,
)
from tests.services.rawhttp import raw_request

if TYPE_CHECKING:
    from collections.abc import Mapping

UTC = dt.UTC


async def get(session: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any, Mapping[str, str]]:
    async with session.get(url, params={k: str(v) for k, v in params.items()}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_games_turn_final_as_the_replay_clock_passes_them() -> None:
    """Scenario: replay 2014 from its default start; advance the clock past the first game
    days; the feed shows exactly the games of the passed dates as final, with scores."""
    catalog = bundled_catalog()
    start = catalog.default_start(2014)
    by_date = Counter(g.date for g in bundled_history().games if g.season == 2014)
    first, second = sorted(by_date)[:2]
    async with running_replay(catalog, start) as replay, aiohttp.ClientSession() as session:
        url = f"{replay.url}/v1/games"
        status, body, headers = await get(session, url, season=2014, status="final")
        assert (status, body["data"]) == (200, [])
        assert headers["X-Replay-Time"] == "2013-10-28T00:00:00Z"

        replay.clock.set(dt.datetime.combine(first, dt.time(23, 30), tzinfo=UTC))
        _, body, _ = await get(session, url, season=2014, status="in_progress")
        assert len(body["data"]) == by_date[first]
        assert all(g["home_pts"] is None for g in body["data"])

        replay.clock.set(dt.datetime.combine(first + dt.timedelta(days=1), dt.time(1, 30), tzinfo=UTC))
        _, body, _ = await get(session, url, season=2014, status="final")
        assert len(body["data"]) == by_date[first]
        assert all(g["home_pts"] is not None and g["final_at"] == g["updated_at"] for g in body["data"])

        replay.clock.set(dt.datetime.combine(second + dt.timedelta(days=1), dt.time(2), tzinfo=UTC))
        _, body, _ = await get(session, url, season=2014, status="final")
        assert len(body["data"]) == by_date[first] + by_date[second]
        _, season, _ = await get(session, f"{replay.url}/v1/seasons/2014")
        assert season["status"] == "in_progress"
        assert season["games"]["final"] == by_date[first] + by_date[second]
        assert season["scheduled_games_per_team"] == 82


async def test_polling_with_cursor_across_clock_advances_misses_and_repeats_nothing() -> None:
    """Scenario: a poller keeps the last next_cursor; the clock advances between polls *and*
    between pages of one poll; every status change of every 2014 game is seen exactly once,
    in order, and at the end every game has been seen final exactly once."""
    catalog = bundled_catalog()
    season_games = {e.game.game_id for e in catalog.seasons[2014].games}
    async with (
        running_replay(catalog, dt.datetime(2013, 10, 20, tzinfo=UTC)) as replay,
        aiohttp.ClientSession() as session,
    ):
        seen: list[tuple[str, str, str]] = []
        cursor: str | None = None
        steps = [dt.timedelta(hours=h) for h in (5, 19, 26, 49, 71, 3, 97)]
        i = 0
        while replay.clock.now() < dt.datetime(2014, 7, 1, tzinfo=UTC):
            more = True
            while more:
                params: dict[str, Any] = {"season": 2014, "limit": 97}
                if cursor is not None:
                    params["cursor"] = cursor
                status, body, _ = await get(session, f"{replay.url}/v1/games", **params)
                assert status == 200, body
                seen.extend((g["game_id"], g["status"], g["updated_at"]) for g in body["data"])
                cursor, more = body["next_cursor"], body["has_more"]
                # Time moves on even while a poll is paging.
                replay.clock.advance(dt.timedelta(minutes=37))
            replay.clock.advance(steps[i % len(steps)])
            i += 1

    assert len(seen) == len(set(seen)), "a (game, status, updated_at) was delivered twice"
    order = {"scheduled": 0, "in_progress": 1, "final": 2}
    per_game: dict[str, list[str]] = {}
    for game_id, state, _ in seen:
        per_game.setdefault(game_id, []).append(state)
    assert set(per_game) == season_games
    for game_id, statuses in per_game.items():
        ranks = [order[s] for s in statuses]
        assert ranks == sorted(set(ranks)), f"{game_id}: {statuses}"
        assert statuses[-1] == "final"
    assert sum(1 for _, s, _ in seen if s == "final") == len(season_games)


async def test_no_later_season_leaks() -> None:
    """Scenario: the data holds 2013-2015; the replay of 2014 shows nothing of 2015 and no
    2014 totals before its regular season is final."""
    catalog = ReplayCatalog.build(synthetic_history())
    async with (
        running_replay(catalog, catalog.default_start(2014)) as replay,
        aiohttp.ClientSession() as session,
    ):
        _, body, _ = await get(session, f"{replay.url}/v1/seasons")
        assert [s["season"] for s in body["data"]] == [2011, 2012, 2013, 2014]
        for path, params in [
            ("/v1/seasons/2015", {}),
            ("/v1/games", {"season": 2015}),
            ("/v1/seasons/2015/player-totals", {}),
            ("/v1/games/201500001/boxscore", {}),
        ]:
            status, body, _ = await get(session, replay.url + path, **params)
            assert status == 404, (path, body)
        status, body, _ = await get(session, f"{replay.url}/v1/seasons/2014/player-totals")
        assert (status, body["error"]["code"]) == (409, "season_not_final")
        status, body, _ = await get(session, f"{replay.url}/v1/games/201400001/boxscore")
        assert (status, body["error"]["code"]) == (409, "game_not_final")
        status, body, _ = await get(session, f"{replay.url}/v1/seasons/2013/player-totals")
        assert status == 200
        assert body["data"]
        # Playoff games of 2014 are not even listed before the regular season ends.
        _, body, _ = await get(session, f"{replay.url}/v1/games", season=2014)
        assert {g["season_type"] for g in body["data"]} == {"regular"}

        replay.clock.set(dt.datetime(2013, 11, 7, 1, 30, tzinfo=UTC))
        status, body, _ = await get(session, f"{replay.url}/v1/seasons/2014/player-totals")
        assert status == 200
        assert len(body["data"]) == 8
        _, season, _ = await get(session, f"{replay.url}/v1/seasons/2014")
        assert (season["status"], season["totals_available"]) == ("regular_season_final", True)


async def test_bearer_token_is_required_on_v1_only() -> None:
    catalog = ReplayCatalog.build(synthetic_history())
    start = catalog.default_start(2014)
    async with running_replay(catalog, start, token="s3cret") as replay, aiohttp.ClientSession() as session:
        status, _, _ = await get(session, f"{replay.url}/healthz")
        assert status == 200
        status, body, headers = await get(session, f"{replay.url}/v1/seasons")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        async with session.get(f"{replay.url}/v1/seasons", headers={"Authorization": "Bearer nope"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["message"] == "invalid bearer token"
        async with session.get(
            f"{replay.url}/v1/seasons", headers={"Authorization": "Bearer s3cret"}
        ) as resp:
            assert resp.status == 200


async def test_rate_limit_answers_429_with_retry_after() -> None:
    catalog = ReplayCatalog.build(synthetic_history())
    async with (
        running_replay(catalog, catalog.default_start(2014), rate_limit=2.0) as replay,
        aiohttp.ClientSession() as session,
    ):
        statuses = [(await get(session, f"{replay.url}/v1/seasons/2014"))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        status, body, headers = await get(session, f"{replay.url}/v1/seasons/2014")
        assert (status, body["error"]["code"]) == (429, "rate_limited")
        assert int(headers["Retry-After"]) >= 1
        status, _, _ = await get(session, f"{replay.url}/healthz")
        assert status == 200


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "param"),
    [
        ("/v1/games", {}, 400, "missing_parameter", "season"),
        ("/v1/games", {"season": "x"}, 400, "invalid_parameter", "season"),
        ("/v1/games", {"season": 2014, "limit": 0}, 400, "invalid_parameter", "limit"),
        ("/v1/games", {"season": 2014, "limit": 1001}, 400, "invalid_parameter", "limit"),
        ("/v1/games", {"season": 2014, "status": "done"}, 400, "invalid_parameter", "status"),
        (
            "/v1/games",
            {"season": 2014, "updated_since": "2013-11-01T00:00:00"},
            400,
            "invalid_parameter",
            "updated_since",
        ),
        ("/v1/games", {"season": 2014, "updated_since": "soon"}, 400, "invalid_parameter", "updated_since"),
        ("/v1/games", {"season": 2014, "cursor": "!!!"}, 400, "invalid_cursor", "cursor"),
        ("/v1/seasons/2014/player-totals", {"cursor": "e30"}, 400, "invalid_cursor", "cursor"),
        ("/v1/seasons/abc", {}, 400, "invalid_parameter", "season"),
        ("/v1/games", {"season": "\u0662\u0660\u0661\u0664"}, 400, "invalid_parameter", "season"),
        ("/v1/games", {"season": "2014\n"}, 400, "invalid_parameter", "season"),
        ("/v1/games", {"season": " 2014"}, 400, "invalid_parameter", "season"),
        ("/v1/games", {"season": "9223372036854775808"}, 400, "invalid_parameter", "season"),
        ("/v1/games", {"season": 2014, "limit": "1" * 5000}, 400, "invalid_parameter", "limit"),
        ("/v1/games", {"season": 2014, "limit": "\u0665"}, 400, "invalid_parameter", "limit"),
        ("/v1/seasons/9223372036854775808", {}, 400, "invalid_parameter", "season"),
        ("/v1/seasons/\u0662\u0660\u0661\u0664/player-totals", {}, 400, "invalid_parameter", "season"),
        ("/v1/games/999/boxscore", {}, 404, "game_not_found", None),
        ("/v1/seasons/1900", {}, 404, "season_not_found", None),
        ("/v2/nothing", {}, 404, "not_found", None),
    ],
)
async def test_errors_are_json_with_status_code_and_param(
    path: str, params: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    catalog = ReplayCatalog.build(synthetic_history())
    async with (
        running_replay(catalog, catalog.default_start(2014)) as replay,
        aiohttp.ClientSession() as session,
    ):
        got, body, headers = await get(session, replay.url + path, **params)
        assert (got, body["error"]["code"], body["error"].get("param")) == (status, code, param)
        assert "X-Replay-Time" in headers


async def test_a_cursor_cannot_be_reused_with_other_filters() -> None:
    catalog = ReplayCatalog.build(synthetic_history())
    async with (
        running_replay(catalog, dt.datetime(2013, 11, 4, tzinfo=UTC)) as replay,
        aiohttp.ClientSession() as session,
    ):
        _, body, _ = await get(session, f"{replay.url}/v1/games", season=2014, limit=2)
        cursor = body["next_cursor"]
        status, body, _ = await get(
            session, f"{replay.url}/v1/games", season=2014, status="final", cursor=cursor
        )
        assert (status, body["error"]["code"]) == (400, "invalid_cursor")
        status, body, _ = await get(session, f"{replay.url}/v1/games", season=2013, cursor=cursor)
        assert status == 400
        async with session.post(f"{replay.url}/v1/games") as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_full_season_of_box_scores_is_fast(replay_2014_final: RunningReplay) -> None:
    """1,228 sequential box-score GETs over one keep-alive connection take seconds at most."""
    ids = [
        e.game.game_id
        for e in replay_2014_final.catalog.seasons[2014].games
        if e.game.season_type == "regular"
    ]
    loop_start = dt.datetime.now(UTC)
    async with aiohttp.ClientSession() as session:
        for game_id in ids:
            async with session.get(f"{replay_2014_final.url}/v1/games/{game_id}/boxscore") as resp:
                assert resp.status == 200
                await resp.read()
    elapsed = (dt.datetime.now(UTC) - loop_start).total_seconds()
    assert elapsed < 20, elapsed


@pytest.fixture(name="replay_2014_final")
async def _replay_2014_final() -> Any:
    catalog = bundled_catalog()
    async with running_replay(catalog, dt.datetime(2014, 4, 20, tzinfo=UTC)) as replay:
        yield replay


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer s3cr\xc3\xa9t",  # UTF-8
        b"Authorization: Bearer \xff\xfe",  # not even UTF-8
        b"Authorization: B\xc3\xa9arer s3cret",
    ],
)
async def test_a_non_ascii_authorization_header_is_a_401(header: bytes) -> None:
    catalog = ReplayCatalog.build(synthetic_history())
    async with running_replay(catalog, catalog.default_start(2014), token="s3cret") as replay:
        reply = await raw_request(replay.url, "GET", b"/v1/seasons", headers=[header])
    assert reply.status == 401
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json["error"]["code"] == "unauthorized"
    assert "x-replay-time" in reply.headers


async def test_an_unexpected_exception_is_logged_and_answered_500_json() -> None:
    """Scenario: a middleware inside the error contract fails with an exception nothing expects;
    the client gets the contract's Error body (with X-Replay-Time), the log gets the traceback."""

    @web.middleware
    async def broken(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/seasons":
            raise RuntimeError("injected")
        response: web.StreamResponse = await handler(request)
        return response

    catalog = ReplayCatalog.build(synthetic_history())
    app = create_app(catalog, ManualClock(catalog.default_start(2014)), middlewares=[broken])
    async with TestServer(app, host="127.0.0.1", port=0) as server, aiohttp.ClientSession() as session:
        with capture_logs() as logs:
            status, body, headers = await get(session, f"http://127.0.0.1:{server.port}/v1/seasons")
        assert (status, body) == (500, {"error": {"code": "internal", "message": "internal error"}})
        assert "X-Replay-Time" in headers
        status, _, _ = await get(session, f"http://127.0.0.1:{server.port}/v1/seasons/2014")
        assert status == 200
    failed = [e for e in logs if e["event"] == "http.request_failed"]
    assert [(e["surface"], e["path"]) for e in failed] == [("replay", "/v1/seasons")]
