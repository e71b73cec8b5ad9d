"""The daemon end to end on real parts: replay server over the real 2014 season, the TF Serving
stand-in over a SavedModel, the daemon's stages and admin API, for every storage backend.

Scenario:
1. the replay clock passes three weeks of the season; the feature and prediction stages run;
2. every active player with a previous season has a prediction as of his latest game, and his
   stored running FTM equals the sum computed straight from the data files;
3. the admin API serves that prediction, refuses unauthenticated control, accepts a refeed;
4. a new model version is dropped into the model directory: the stand-in loads it and the
   next prediction run pins and records it, without a restart;
5. the clock passes the end of the regular season; the stages catch up, validation stores
   final outcomes for every predicted player, and /metrics shows realized AUC and Brier per
   model version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scorebeater import quality
from scorebeater.config import (
    AdminConfig,
    Config,
    ModelConfig,
    SchedulerConfig,
    Secret,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, open_daemon, serve
from scorebeater.errors import ScoreApiError
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import (
    Fault,
    RunningReplay,
    bundled_catalog,
    bundled_history,
    running_replay,
)
from tests.integration.daemon_support import BACKENDS, model_base_path, storage_config

pytestmark = pytest.mark.slow

SEASON = 2014
ADMIN_TOKEN = "admin-test-token"


def expected_running_ftm(until: dt.datetime) -> dict[int, int]:
    """Each player's regular-season FTM in games final by ``until``, straight from the files."""
    history = bundled_history()
    previous = {t.player_id for t in history.season_totals if t.season == SEASON - 1}
    totals: dict[int, int] = defaultdict(int)
    for pg in history.player_games:
        if pg.season != SEASON or pg.season_type != "regular" or pg.player_id is None:
            continue
        if timeline.final_at(pg.date) <= until and pg.player_id in previous:
            totals[pg.player_id] += pg.ftm
    return dict(totals)


async def latest_predictions(daemon: Daemon) -> dict[int, dict[str, object]]:
    out: dict[int, dict[str, object]] = {}
    async for table in daemon.ctx.storage.read_predictions(season=SEASON, latest_only=True):
        for row in table.to_pylist():
            out[row["player_id"]] = row
    return out


async def latest_features(daemon: Daemon) -> dict[int, dict[str, object]]:
    out: dict[int, dict[str, object]] = {}
    async for table in daemon.ctx.storage.read_latest_features(season=SEASON):
        for row in table.to_pylist():
            out[row["player_id"]] = row
    return out


@pytest.fixture(name="replay")
async def _replay() -> AsyncIterator[RunningReplay]:
    catalog = bundled_catalog()
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        yield replay


@pytest.fixture(name="model_base")
def _model_base(tmp_path: Path) -> Path:
    base = tmp_path / "model" / "score_beater"
    base.mkdir(parents=True)
    shutil.copytree(model_base_path(), base / "1")
    return base


@pytest.fixture(name="model_url")
async def _model_url(model_base: Path) -> AsyncIterator[str]:
    async with serve_models(
        model_name="score_beater", base_path=model_base, host="127.0.0.1", port=0, poll_interval_s=0.2
    ) as server:
        yield server.url


def daemon_config(replay: RunningReplay, model_url: str, storage: StorageConfig) -> Config:
    return Config(
        score_api=replay.client_config(),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url, max_batch_size=512),
        storage=storage,
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5),
        admin=AdminConfig(host="127.0.0.1", port=0, token=Secret(ADMIN_TOKEN)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
async def test_daemon_over_a_real_season(
    backend: str,
    replay: RunningReplay,
    model_url: str,
    model_base: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = storage_config(backend, request, tmp_path, monkeypatch)
    cfg = daemon_config(replay, model_url, storage)
    start = replay.clock.now()
    async with open_daemon(cfg) as daemon:
        # 1. three weeks in
        slice_end = start + dt.timedelta(days=21)
        replay.clock.set(slice_end)
        features = await daemon.runners["features"].run_once()
        assert features["games"] > 100
        await daemon.runners["predictions"].run_once()

        # 2. every active player with a previous season has a prediction as of his latest game
        expected = expected_running_ftm(slice_end)
        preds = await latest_predictions(daemon)
        feats = await latest_features(daemon)
        assert set(preds) == set(expected)
        for pid, ftm in expected.items():
            assert feats[pid]["ftm"] == ftm
            assert preds[pid]["as_of_seq"] == feats[pid]["as_of_seq"]
            assert 0.0 <= preds[pid]["probability"] <= 1.0  # type: ignore[operator]
            assert preds[pid]["model_version"] == 1

        # 3. the admin API
        assert daemon.admin_url is not None
        some_player = next(iter(expected))
        async with aiohttp.ClientSession(base_url=daemon.admin_url) as http:
            async with http.get(f"/v1/predictions/{some_player}", params={"season": SEASON}) as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["probability"] == pytest.approx(preds[some_player]["probability"])
                assert body["model_version"] == 1
            async with http.get("/v1/predictions/1", params={"season": SEASON}) as resp:
                assert resp.status == 404
            async with http.post("/v1/refeed") as resp:
                assert resp.status == 401
            async with http.post(
                "/v1/refeed", json={"clear_cache": False}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as resp:
                assert resp.status == 202
            async with http.get("/v1/status") as resp:
                status = await resp.json()
                assert status["stages"]["features"]["runs"] == 1
                assert status["stages"]["features"]["watermark"][str(SEASON)]["games_processed"] > 100
        refeed = await daemon.runners["refeed"].run_once()  # the one the POST asked for
        assert refeed["rows"] == len(expected)
        assert refeed["cache_cleared"] == 0
        hits = daemon.ctx.metrics.registry.get_sample_value("scorebeater_prediction_cache_hits_total")
        assert hits is not None
        assert hits >= len(expected)  # every refeed row was cached by the diff run

        # 4. a new model version is published (atomically) and picked up without a restart
        shutil.copytree(model_base / "1", model_base / ".tmp-2")
        (model_base / ".tmp-2").rename(model_base / "2")
        for _ in range(100):
            if await daemon.ctx.model.pin_version(None) == 2:
                break
            await asyncio.sleep(0.1)
        replay.clock.set(slice_end + dt.timedelta(days=3))
        await daemon.runners["features"].run_once()
        result = await daemon.runners["predictions"].run_once()
        assert result["model_version"] == 2
        assert result["diff_rows"] > 0

        # 5. the season turns final
        season = replay.catalog.seasons[SEASON]
        assert season.last_regular_date is not None
        replay.clock.set(timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1))
        await daemon.runners["features"].run_once()
        await daemon.runners["predictions"].run_once()
        result = await daemon.runners["validation"].run_once()
        assert result["final_outcomes"] == len(await latest_features(daemon))
        outcomes = []
        async for table in daemon.ctx.storage.read_outcomes(season=SEASON):
            outcomes.extend(table.to_pylist())
        assert outcomes
        assert {o["resolution"] for o in outcomes} == {"final"}
        # The final rows keep when a player was known to have beaten his mark (the early rows
        # the same run stored first): never for a player who did not beat it.
        early = [o for o in outcomes if o["resolved_early_seq"] is not None]
        assert early
        assert all(o["beat"] and o["resolved_early_seq"] <= o["resolved_seq"] for o in early)
        assert all(o["resolved_early_at"] is not None for o in early)
        async with aiohttp.ClientSession(base_url=daemon.admin_url) as http, http.get("/metrics") as resp:
            text = await resp.text()
        for version in ("1", "2"):
            assert f'scorebeater_eval_roc_auc{{bucket="all",model_version="{version}"}}' in text
            assert f'scorebeater_eval_brier_score{{bucket="all",model_version="{version}"}}' in text
        # The exported figures are the metrics of the stored predictions against the outcomes.
        beat = {o["player_id"]: o["beat"] for o in outcomes}
        rows: list[dict[str, Any]] = []
        async for table in daemon.ctx.storage.read_predictions(season=SEASON):
            rows.extend(r for r in table.to_pylist() if r["model_version"] == 1)
        want = quality.summary([beat[r["player_id"]] for r in rows], [r["probability"] for r in rows])
        labels = {"model_version": "1", "bucket": "all"}
        sample = daemon.ctx.metrics.registry.get_sample_value
        assert sample("scorebeater_eval_roc_auc", labels) == pytest.approx(want["roc_auc"])
        assert sample("scorebeater_eval_brier_score", labels) == pytest.approx(want["brier"])
        assert sample("scorebeater_eval_rows", labels) == len(rows)


async def test_serve_runs_the_stages_concurrently_and_drains_on_stop(
    replay: RunningReplay,
    model_url: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop as `scorebeater run` drives it: stages on their own triggers, then a clean drain.

    1. the replay is a week into the season; `serve` starts every stage;
    2. without any manual run, the feature stage polls and the prediction stage follows it;
    3. `stop` is set: no stage starts again, `serve` returns within the grace period.
    """
    storage = storage_config("local", request, tmp_path, monkeypatch)
    cfg = daemon_config(replay, model_url, storage)
    replay.clock.set(replay.clock.now() + dt.timedelta(days=7))
    stop = asyncio.Event()
    async with open_daemon(cfg) as daemon:
        task = asyncio.create_task(serve(daemon, stop))
        try:
            await asyncio.wait_for(daemon.started.wait(), 10)
            for _ in range(200):
                if daemon.runners["predictions"].state.runs and not daemon.handoff.pending_rows:
                    preds = await latest_predictions(daemon)
                    if preds:
                        break
                await asyncio.sleep(0.05)
            assert await latest_predictions(daemon)
            assert daemon.runners["features"].state.runs >= 1
        finally:
            stop.set()
            await asyncio.wait_for(task, cfg.scheduler.shutdown_grace_s + 5)
    assert {runner.state.state for runner in daemon.runners.values()} == {"stopped"}


async def test_an_outage_while_loading_previous_seasons_loses_no_game(
    replay: RunningReplay,
    model_url: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Score API outage on last season's totals fails the run; it never marks games done.

    1. the previous season's totals answer 503 for longer than the client retries;
    2. the feature run fails and stores nothing (no game is recorded as processed);
    3. the outage ends: the next run processes every game, with rows for the players.
    """
    storage = storage_config("local", request, tmp_path, monkeypatch)
    cfg = daemon_config(replay, model_url, storage)
    cfg = dataclasses.replace(
        cfg, score_api=dataclasses.replace(cfg.score_api, max_attempts=2, retry_budget_s=2.0)
    )
    replay.clock.set(replay.clock.now() + dt.timedelta(days=3))
    replay.faults.add(f"/v1/seasons/{SEASON - 1}/player-totals", *[Fault("status", status=503)] * 2)
    async with open_daemon(cfg) as daemon:
        with pytest.raises(ScoreApiError):
            await daemon.runners["features"].run_once()
        assert await daemon.ctx.storage.get_checkpoint(f"features.{SEASON}") is None
        result = await daemon.runners["features"].run_once()
        assert result["games"] > 0
        assert result["rows"] > 0
        assert len(await latest_features(daemon)) > 50
