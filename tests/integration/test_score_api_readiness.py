"""Readiness checks an authenticated Score API call, cached: on the real replay server with a token.

``/healthz`` of the Score API is public, so pinging it says nothing about our token: with a
wrong token the daemon looked ready while every feature run failed with 401. Readiness is now
one authenticated ``GET /v1/seasons``, its answer reused for a few seconds so that a probe
every second does not become a Score API request every second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from scorebeater.clients import score_api
from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    Secret,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import open_daemon, serve
from scorebeater.errors import ScoreApiAuthError, ScoreApiError
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.score_api import Fault, RunningReplay, running_replay
from tests.integration.league import catalog_fixture, model_url_fixture  # noqa: F401 - fixtures

SEASON = 2014
TOKEN = "the-right-token"
MID_SEASON = dt.datetime(2013, 11, 4, 12, tzinfo=dt.UTC)


@pytest.fixture(name="replay")
async def _replay(catalog: ReplayCatalog) -> AsyncIterator[RunningReplay]:
    async with running_replay(catalog, MID_SEASON, token=TOKEN) as replay:
        yield replay


def readiness_requests(replay: RunningReplay) -> int:
    return sum(1 for path, _ in replay.faults.hits if path == "/v1/seasons")


# --- the client --------------------------------------------------------------------------------


async def test_a_refused_token_is_not_ready_and_the_failure_is_cached(replay: RunningReplay) -> None:
    cfg = replay.client_config(token=Secret("a-wrong-token"))
    async with ScoreApiClient.open(cfg) as api:
        await api.ping()  # the public /healthz answers whatever the token
        for _ in range(5):
            with pytest.raises(ScoreApiAuthError) as refused:
                await api.check_ready()
            assert refused.value.status == 401
            assert "unauthorized" in str(refused.value)
    assert readiness_requests(replay) == 1


async def test_an_accepted_token_is_ready_and_concurrent_probes_share_one_request(
    replay: RunningReplay,
) -> None:
    async with ScoreApiClient.open(replay.client_config(token=Secret(TOKEN))) as api:
        await asyncio.gather(*(api.check_ready() for _ in range(10)))
        await api.check_ready()
    assert readiness_requests(replay) == 1


async def test_the_answer_is_asked_again_once_the_cache_expires(replay: RunningReplay) -> None:
    """A failure is reused while fresh, even after the server recovers; then asked again."""
    replay.faults.add("/v1/seasons", Fault("status", status=503))
    cfg = replay.client_config(token=Secret(TOKEN))
    async with ScoreApiClient.open(cfg, ready_cache_s=0.2) as api:
        with pytest.raises(ScoreApiError) as unavailable:
            await api.check_ready()
        assert unavailable.value.status == 503
        with pytest.raises(ScoreApiError):
            await api.check_ready()  # cached: the recovered server is not asked
        assert readiness_requests(replay) == 1
        await asyncio.sleep(0.25)
        await api.check_ready()
        assert readiness_requests(replay) == 2
    assert score_api.READY_CACHE_S == 5.0  # the default the daemon uses


async def test_a_hanging_score_api_is_reported_as_a_timeout_and_cached(
    replay: RunningReplay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(score_api, "READY_TIMEOUT_S", 0.2)
    replay.faults.add("/v1/seasons", Fault("delay", delay_s=5.0))
    async with ScoreApiClient.open(replay.client_config(token=Secret(TOKEN))) as api:
        for _ in range(3):
            with pytest.raises(ScoreApiError, match="timed out") as timed_out:
                await api.check_ready()
            assert timed_out.value.transient
    assert readiness_requests(replay) == 1


async def test_an_answer_that_is_not_a_season_list_is_not_ready(replay: RunningReplay) -> None:
    replay.faults.add("/v1/seasons", Fault("body", body=b'{"seasons": []}'))
    async with ScoreApiClient.open(replay.client_config(token=Secret(TOKEN))) as api:
        with pytest.raises(ScoreApiError, match="does not match the contract"):
            await api.check_ready()


# --- the daemon's /readyz ----------------------------------------------------------------------


def daemon_config(replay: RunningReplay, model_url: str, tmp_path: Path, token: str) -> Config:
    return Config(
        score_api=replay.client_config(token=Secret(token), max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


@pytest.mark.parametrize(
    ("token", "status", "score_api_check"),
    [
        ("a-wrong-token", 503, "ScoreApiAuthError: score_api HTTP 401: GET /v1/seasons: unauthorized"),
        (TOKEN, 200, "ok"),
    ],
)
async def test_readyz_reports_a_refused_score_api_token(
    replay: RunningReplay, model_url: str, tmp_path: Path, token: str, status: int, score_api_check: str
) -> None:
    """The daemon as `scorebeater run` serves it, probed every few milliseconds.

    1. the replay server wants TOKEN; the daemon sends ``token``; its stages run;
    2. /readyz answers ``status``: with a wrong token, its score_api check names the 401
       while storage and model are ok;
    3. ten probes in a row cost the Score API one readiness request.
    """
    cfg = daemon_config(replay, model_url, tmp_path, token)
    stop = asyncio.Event()
    async with open_daemon(cfg) as daemon:
        task = asyncio.create_task(serve(daemon, stop))
        try:
            await asyncio.wait_for(daemon.started.wait(), 10)
            async with aiohttp.ClientSession() as http:
                for _ in range(10):
                    async with http.get(f"{daemon.admin_url}/readyz") as resp:
                        body = await resp.json()
                        assert resp.status == status, body
                    assert body["ready"] is (status == 200)
                    checks = body["checks"]
                    assert checks["score_api"].startswith(score_api_check), checks
                    assert (checks["storage"], checks["model"]) == ("ok", "ok")
        finally:
            stop.set()
            await asyncio.wait_for(task, cfg.scheduler.shutdown_grace_s + 5)
    assert readiness_requests(replay) == 1
