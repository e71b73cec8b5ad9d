"""The OpenAPI document is valid, and the replay server's answers match it, endpoint by endpoint."""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from openapi_spec_validator import validate

from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.scoreapi.replay import create_app
from scorebeater.scoreapi.timeline import ManualClock
from scorebeater.testing.score_api import running_replay, synthetic_history

UTC = dt.UTC


@pytest.fixture(name="spec", scope="module")
def _spec() -> dict[str, Any]:
    text = resources.files("scorebeater.scoreapi").joinpath("openapi.yaml").read_text("utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def test_openapi_document_is_valid(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_path_is_served(spec: dict[str, Any]) -> None:
    app = create_app(
        ReplayCatalog.build(synthetic_history()), ManualClock(dt.datetime(2014, 1, 1, tzinfo=UTC))
    )
    served = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert served == documented


def _check(
    spec: dict[str, Any], path: str, status: int, body: Any, content_type: str = "application/json"
) -> None:
    """Validate ``body`` against the schema the document gives for ``path``/GET/``status``."""
    response = spec["paths"][path]["get"]["responses"][str(status)]
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"][content_type]["schema"]
    # The whole document is the root, so "#/components/..." references resolve inside it.
    root = {**spec, **schema}
    jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(body)


async def test_responses_match_the_documented_schemas(spec: dict[str, Any]) -> None:
    """Scenario: at three replay times (before the season, mid-season, after its regular
    season) every endpoint's success and error answers validate against the document."""
    catalog = ReplayCatalog.build(synthetic_history())
    checked: set[tuple[str, int]] = set()
    async with (
        running_replay(
            catalog, dt.datetime(2013, 10, 31, tzinfo=UTC), token="t0ken", rate_limit=50
        ) as replay,
        aiohttp.ClientSession(headers={"Authorization": "Bearer t0ken"}) as session,
    ):

        async def call(template: str, url_path: str, expected: int, **params: Any) -> Any:
            async with session.get(
                replay.url + url_path, params={k: str(v) for k, v in params.items()}
            ) as resp:
                body = await resp.json()
                assert resp.status == expected, (url_path, body)
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", resp.headers["X-Replay-Time"])
            _check(spec, template, expected, body)
            checked.add((template, expected))
            return body

        for _ in ("before", "during", "after"):
            await call("/healthz", "/healthz", 200)
            await call("/v1/seasons", "/v1/seasons", 200)
            await call("/v1/seasons/{season}", "/v1/seasons/2014", 200)
            await call("/v1/seasons/{season}", "/v1/seasons/2012", 200)
            page = await call("/v1/games", "/v1/games", 200, season=2014, limit=5)
            await call("/v1/games", "/v1/games", 200, season=2014, cursor=page["next_cursor"], limit=5)
            await call("/v1/seasons/{season}/player-totals", "/v1/seasons/2013/player-totals", 200, limit=3)
            replay.clock.advance(dt.timedelta(days=4))
        await call("/v1/games/{game_id}/boxscore", "/v1/games/201400001/boxscore", 200)
        await call("/v1/games/{game_id}/boxscore", "/v1/games/201500001/boxscore", 404)
        await call("/v1/seasons/{season}/player-totals", "/v1/seasons/2014/player-totals", 200)
        await call("/v1/seasons/{season}/player-totals", "/v1/seasons/2015/player-totals", 404)
        await call("/v1/seasons/{season}", "/v1/seasons/2016", 404)
        await call("/v1/games", "/v1/games", 400, season=2014, limit=0)
        await call("/v1/seasons/{season}/player-totals", "/v1/seasons/x/player-totals", 400)

        replay.clock.set(dt.datetime(2014, 4, 20, 12, tzinfo=UTC))
        await call("/v1/games/{game_id}/boxscore", "/v1/games/201400014/boxscore", 409)
        replay.clock.set(dt.datetime(2014, 7, 2, tzinfo=UTC))
        season = await call("/v1/seasons/{season}", "/v1/seasons/2015", 200)
        assert season["status"] == "scheduled"
        await call("/v1/seasons/{season}/player-totals", "/v1/seasons/2015/player-totals", 409)

        async with aiohttp.ClientSession() as anonymous, anonymous.get(replay.url + "/v1/seasons") as resp:
            assert resp.status == 401
            _check(spec, "/v1/seasons", 401, await resp.json())

        statuses = []
        for _ in range(80):
            async with session.get(replay.url + "/v1/seasons/2014") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    _check(spec, "/v1/seasons/{season}", 429, await resp.json())
                    assert int(resp.headers["Retry-After"]) >= 1
                    break
        assert 429 in statuses

        async with session.get(replay.url + "/openapi.yaml") as resp:
            assert resp.status == 200
            assert yaml.safe_load(await resp.text())["openapi"] == spec["openapi"]

    assert {status for _, status in checked} == {200, 400, 404, 409}
