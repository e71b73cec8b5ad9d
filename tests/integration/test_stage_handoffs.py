"""Each stage's hand-off rules, on a small synthetic league: fast scenarios on real parts.

The replay Score API serves a four-team league (six game days a season), the TF Serving
stand-in serves a small model, storage is local files, and each test drives the stages one run
at a time through their runners (no timing), reading what passes between them from the
daemon's :class:`~scorebeater.stages.handoff.Handoff`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
    TrainingConfig,
)
from scorebeater.daemon import open_daemon, serve
from scorebeater.errors import ScoreApiAuthError, StorageUnavailable
from scorebeater.scheduler import StageRunner
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.stages.features import FeaturesStage
from scorebeater.stages.retrain import RetrainStage
from scorebeater.storage.base import Storage
from scorebeater.testing.clock import FakeClock
from scorebeater.testing.score_api import Fault, RunningReplay
from tests.integration.league import catalog_fixture, model_url_fixture, replay_fixture  # noqa: F401 - fixtures

SEASON = 2014


@pytest.fixture(name="cfg")
def _cfg(replay: RunningReplay, model_url: str, tmp_path: Path) -> Config:
    return Config(
        score_api=replay.client_config(max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


def _day(catalog: ReplayCatalog, n: int) -> dt.datetime:
    """Just after the ``n``-th (1-based) regular-season game day of the season is final."""
    days = sorted({e.game.date for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"})
    return timeline.final_at(days[n - 1]) + dt.timedelta(minutes=1)


def _season_over(catalog: ReplayCatalog) -> dt.datetime:
    last = catalog.seasons[SEASON].last_regular_date
    assert last is not None
    return timeline.final_at(last) + dt.timedelta(hours=1)


async def _keys(tables: AsyncIterator[pa.Table]) -> set[tuple[int, int]]:
    return {
        (row["player_id"], row["as_of_seq"])
        for table in [t async for t in tables]
        for row in table.select(["player_id", "as_of_seq"]).to_pylist()
    }


class LostCommitReply:
    """Storage whose next feature write commits, then fails as if the reply was lost."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.lose_next = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def write_features(self, table: pa.Table, **kwargs: Any) -> None:
        await self._inner.write_features(table, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise StorageUnavailable("connection reset after COMMIT (injected)")


async def test_committed_rows_are_handed_to_the_prediction_stage_and_predicted_once(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    async with open_daemon(cfg) as daemon:
        replay.clock.set(_day(catalog, 2))
        await daemon.runners["predictions"].run_once()  # the start-up reconcile: nothing stored yet
        features = await daemon.runners["features"].run_once()
        assert features["rows"] > 0
        assert daemon.handoff.pending_rows == features["rows"]
        result = await daemon.runners["predictions"].run_once()
        assert result["diff_rows"] == features["rows"]
        assert "recovered_rows" not in result  # reconciled once, at start
        assert daemon.handoff.pending_rows == 0
        stored = await _keys(daemon.ctx.storage.read_feature_history())
        assert await _keys(daemon.ctx.storage.read_predictions()) == stored


async def test_a_feature_write_whose_reply_is_lost_is_reconciled_by_the_prediction_stage(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    """The write committed but the run failed: nothing was handed over, yet every row is predicted."""
    async with open_daemon(cfg) as daemon:
        await daemon.runners["predictions"].run_once()  # the start-up reconcile, on an empty store
        assert daemon.handoff.status()["reconcile_due"] is False
        lossy = LostCommitReply(daemon.ctx.storage)
        stage = FeaturesStage(dataclasses.replace(daemon.ctx, storage=lossy), daemon.handoff)  # type: ignore[arg-type]
        runner = StageRunner(stage, clock=daemon.ctx.clock, metrics=daemon.ctx.metrics)
        replay.clock.set(_day(catalog, 2))
        with pytest.raises(StorageUnavailable):
            await runner.run_once()
        assert daemon.handoff.pending_rows == 0
        assert daemon.handoff.status()["reconcile_due"] is True
        stored = await _keys(daemon.ctx.storage.read_feature_history())
        assert stored, "the lost-reply write committed"
        result = await daemon.runners["predictions"].run_once()
        assert result["recovered_rows"] == len(stored)
        assert await _keys(daemon.ctx.storage.read_predictions()) == stored
        # The next feature run reloads from storage and does not process those games again.
        again = await runner.run_once()
        assert again["games"] == 0


async def test_validation_waits_for_the_features_and_the_last_predictions_of_a_final_season(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    async with open_daemon(cfg) as daemon:
        replay.clock.set(_day(catalog, 3))
        await daemon.runners["features"].run_once()
        await daemon.runners["predictions"].run_once()
        assert (await daemon.runners["validation"].run_once())["final_outcomes"] == 0  # not final yet

        replay.clock.set(_season_over(catalog))
        await daemon.runners["features"].run_once()
        assert daemon.handoff.status()["seasons_awaiting_predictions"] == [SEASON]
        # The season is complete, but its last rows have no prediction yet: not validated.
        assert (await daemon.runners["validation"].run_once())["final_outcomes"] == 0
        await daemon.runners["predictions"].run_once()
        assert daemon.handoff.status()["seasons_awaiting_predictions"] == []
        result = await daemon.runners["validation"].run_once()
        assert result["final_outcomes"] > 0
        assert daemon.validation.status() == {str(SEASON): {"final_outcomes_stored": True}}


async def _serve_until_validation_ran(cfg: Config) -> dict[str, Any]:
    """Serve a daemon whose validation cron is never due until its validation stage has run once."""
    cfg = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, validation_cron="0 0 1 1 *"))
    stop = asyncio.Event()
    async with open_daemon(cfg, clock=FakeClock()) as daemon:
        validation = daemon.runners["validation"]
        task = asyncio.create_task(serve(daemon, stop))
        try:
            async with validation.completed:
                await asyncio.wait_for(validation.completed.wait_for(lambda: validation.state.runs > 0), 30)
            return validation.state.last_result
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_a_final_season_wakes_the_prediction_then_the_validation_stage(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    """Under ``serve``: no cron is due, yet outcomes are stored once the season's predictions are."""
    replay.clock.set(_season_over(catalog))
    result = await _serve_until_validation_ran(cfg)
    assert result["final_outcomes"] > 0


async def test_a_season_completed_just_before_a_restart_is_still_validated(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    """The season's last feature commit marked it complete, then the process died before its last
    predictions: the next process must still predict and validate it (found by the fault suite:
    with no cron due, the season waited forever)."""
    replay.clock.set(_season_over(catalog))
    async with open_daemon(cfg) as first:
        await first.runners["features"].run_once()  # complete; no prediction run follows
    result = await _serve_until_validation_ran(cfg)
    assert result["final_outcomes"] > 0


async def test_a_refused_box_score_cancels_the_other_fetches(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    """One box score answers 401: the run fails at once; the others, held by the server, are dropped."""
    replay.clock.set(_day(catalog, 6))
    games = [e.game.game_id for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"]
    replay.faults.add(f"/v1/games/{games[0]}/boxscore", Fault("status", status=401))
    for game_id in games[1:]:
        replay.faults.add(f"/v1/games/{game_id}/boxscore", Fault("delay", delay_s=30.0))
    async with open_daemon(cfg) as daemon:
        started = time.monotonic()
        with pytest.raises(ScoreApiAuthError):
            await daemon.runners["features"].run_once()
        assert time.monotonic() - started < 10
        assert await daemon.ctx.storage.get_checkpoint(f"features.{SEASON}") is None


async def test_a_late_result_never_moves_the_as_of_time_back(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    """A game whose result arrives after later games were processed is stamped no earlier than them."""

    def backdate_first_game(page: dict[str, Any]) -> dict[str, Any]:
        earliest = timeline.rfc3339(timeline.epoch(timeline.final_at(dt.date(SEASON - 2, 1, 1))))
        page["data"][0]["final_at"] = earliest
        return page

    async with open_daemon(cfg) as daemon:
        replay.clock.set(_day(catalog, 2))
        await daemon.runners["features"].run_once()
        replay.clock.set(_day(catalog, 4))
        replay.faults.add("/v1/games", Fault("mutate", mutate=backdate_first_game))
        await daemon.runners["features"].run_once()
        rows = sorted(
            (row["as_of_seq"], row["as_of_time"])
            for table in [t async for t in daemon.ctx.storage.read_feature_history()]
            for row in table.select(["as_of_seq", "as_of_time"]).to_pylist()
        )
        times = [t for _, t in rows]
        assert times == sorted(times), "as-of time must not decrease with as-of order"


async def test_stopping_the_daemon_stops_the_refeed_schedule_and_terminates_a_training_child(
    cfg: Config, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(
        cfg,
        scheduler=dataclasses.replace(cfg.scheduler, refeed_cron="* * * * *"),
        training=TrainingConfig(retrain_on_season_final=True),
    )
    stop = asyncio.Event()
    async with open_daemon(cfg, clock=FakeClock()) as daemon:
        # In place of `scorebeater train`: a child that would outlive the daemon if nobody stopped it.
        sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
        stage = RetrainStage(daemon.handoff, config_path=None, command=sleeper)
        daemon.runners["retrain"] = StageRunner(stage, clock=daemon.ctx.clock, metrics=daemon.ctx.metrics)
        task = asyncio.create_task(serve(daemon, stop))
        await asyncio.wait_for(daemon.started.wait(), 10)
        daemon.handoff.final_labels_stored(SEASON)
        pid: object = None
        for _ in range(200):
            pid = stage.status()["child_pid"]
            if pid is not None:
                break
            await asyncio.sleep(0.05)
        assert isinstance(pid, int)
        stop.set()
        await asyncio.wait_for(task, cfg.scheduler.shutdown_grace_s + 10)
    stages = (
        *("features", "predictions", "refeed", "validation", "retrain"),
        *("promotion", "shadow", "monitoring"),
    )
    assert {name: r.state.state for name, r in daemon.runners.items()} == dict.fromkeys(stages, "stopped")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_refused_token_fails_validation_instead_of_looking_like_a_season_not_final(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    async with open_daemon(cfg) as daemon:
        replay.clock.set(_season_over(catalog))
        await daemon.runners["features"].run_once()
        await daemon.runners["predictions"].run_once()
        replay.faults.add(f"/v1/seasons/{SEASON}/player-totals", Fault("status", status=401))
        with pytest.raises(ScoreApiAuthError):
            await daemon.runners["validation"].run_once()
        assert daemon.runners["validation"].status()["last_error"].startswith("ScoreApiAuthError")
        # The token works again: the season's outcomes are stored.
        assert (await daemon.runners["validation"].run_once())["final_outcomes"] > 0
