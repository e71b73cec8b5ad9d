"""The read endpoints' concurrency bound and cursor checks (no storage needed)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any, cast

import orjson
import pytest
from aiohttp import web

from scorebeater.admin import read_api
from scorebeater.bounds import PLAYER_ID
from scorebeater.httpsurface import ApiError


async def test_past_the_bound_a_read_request_gets_a_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(read_api, "READ_QUEUE_S", 0.05)
    routes = read_api.ReadRoutes(state=cast("Any", None))  # the bound needs no state
    release = asyncio.Event()
    running = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal running
        running += 1
        await release.wait()
        return web.Response(text="ok")

    bounded = routes._bounded(slow)
    nobody = cast("web.Request", None)
    held = [asyncio.ensure_future(bounded(nobody)) for _ in range(read_api.MAX_CONCURRENT_READS)]
    await asyncio.sleep(0.01)
    assert running == read_api.MAX_CONCURRENT_READS
    with pytest.raises(ApiError) as caught:
        await bounded(nobody)
    assert caught.value.status == 503
    assert caught.value.code == "busy"
    assert caught.value.headers["Retry-After"] == "1"
    release.set()
    done = await asyncio.gather(*held)
    assert [cast("web.Response", r).text for r in done] == ["ok"] * read_api.MAX_CONCURRENT_READS
    assert cast("web.Response", await bounded(nobody)).text == "ok"


@pytest.mark.parametrize("player_id", [2**64 - 1, PLAYER_ID.hi + 1, -5])
def test_a_cursor_with_an_out_of_range_player_id_is_a_400(player_id: Any) -> None:
    filters = "f"
    forged = read_api.encode_cursor("player", (0.0, 0.0, 1), filters)
    body = orjson.loads(base64.urlsafe_b64decode(forged + "=" * (-len(forged) % 4)))
    body["k"][2] = player_id
    raw = base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()
    with pytest.raises(ApiError) as caught:
        read_api.decode_cursor(raw, "player", filters)
    assert caught.value.status == 400
    assert caught.value.param == "cursor"


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        ("", False),
        ("text/csv", True),
        ("application/json", False),
        ("text/csv, application/json", True),  # equal quality: the first named
        ("application/json, text/csv", False),
        ("text/csv;q=0", False),  # q=0: "not acceptable"
        ("text/csv;q=0.5, application/json", False),
        ("application/json;q=0.2, text/csv", True),
        ("text/*", True),
        ("text/*;q=0.9, */*;q=0.8", True),
        ("*/*", False),
        ("text/csv;q=abc", True),  # a malformed quality counts as absent
        ("TEXT/CSV; Q=0.7, application/json;q=0.6", True),
        ("image/png", False),
    ],
)
def test_accept_picks_csv_only_when_it_is_preferred(accept: str, csv: bool) -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request("GET", "/v1/predictions", headers={"Accept": accept})
    assert read_api._wants_csv(request) is csv


async def test_a_read_response_says_it_varies_by_accept() -> None:
    routes = read_api.ReadRoutes(state=cast("Any", None))

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    response = await routes._bounded(page)(cast("web.Request", None))
    assert response.headers["Vary"] == "Accept"
