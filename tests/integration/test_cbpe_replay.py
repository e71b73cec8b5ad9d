"""On a replayed season, the estimated AUC and accuracy track the realized ones.

The real 2014 season is replayed through the daemon (replay Score API, TF Serving stand-in over
the repository's model version 2, local storage). At four points of the season the feature,
prediction and monitoring stages run, and the monitoring stage's estimates (CBPE, from the
champion's latest probabilities alone) are read from the metrics with each player's latest
prediction at that moment. Once the season is final and validated, each snapshot's realized
AUC and accuracy (its latest predictions against the final outcomes) is compared with the
estimate made at the time.

Tolerance: 0.05 for both. That is about two standard errors of a realized AUC (or accuracy)
over the 300 to 370 players predicted at a time (AUC's standard error there is ~0.02): the estimate
is an expectation, and one season's labels are one draw. Model 2 was fitted on seasons up to
2014 (its card), so this season is in its training rows: the test shows the estimate works
where the model is calibrated; a miscalibrated model would be estimated wrongly
(tests/unit/test_estimation.py).

The same replay shows drift PSI and the estimates on /metrics while the season is played.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from scorebeater import quality
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    MonitoringConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, open_daemon
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import RunningReplay, bundled_catalog, running_replay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SEASON = 2014
VERSION = 2
REPO_MODEL = Path(__file__).resolve().parents[2] / "model" / "score_beater"
CHECKPOINT_DAYS = (30, 70, 110, 150)
"""Days after the replay's start (the day before the first game) at which the estimate is taken."""
AUC_TOLERANCE = 0.05
ACCURACY_TOLERANCE = 0.05


@pytest.fixture(name="replay")
async def _replay() -> AsyncIterator[RunningReplay]:
    catalog = bundled_catalog()
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        yield replay


@pytest.fixture(name="model_base")
def _model_base(tmp_path: Path) -> Path:
    source = REPO_MODEL / str(VERSION)
    # Committed with the repository: a missing model is a failure, never a skip.
    assert (source / "saved_model.pb").is_file(), f"model/score_beater/{VERSION} is missing"
    base = tmp_path / "model" / "score_beater"
    base.mkdir(parents=True)
    shutil.copytree(source, base / str(VERSION))
    return base


@pytest.fixture(name="model_url")
async def _model_url(model_base: Path) -> AsyncIterator[str]:
    async with serve_models(
        model_name="score_beater", base_path=model_base, host="127.0.0.1", port=0, poll_interval_s=60
    ) as server:
        yield server.url


async def _latest(daemon: Daemon) -> dict[int, float]:
    out: dict[int, float] = {}
    async for table in daemon.ctx.storage.read_predictions(season=SEASON, latest_only=True):
        out.update(
            zip(table.column("player_id").to_pylist(), table.column("probability").to_pylist(), strict=True)
        )
    return out


async def test_the_estimate_tracks_the_realized_metrics(
    replay: RunningReplay, model_url: str, model_base: Path, tmp_path: Path
) -> None:
    cfg = Config(
        score_api=replay.client_config(),
        model=ModelConfig(name="score_beater", base_path=model_base),
        tfserving=TFServingConfig(base_url=model_url, max_batch_size=1024),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5),
        admin=AdminConfig(host="127.0.0.1", port=0),
        monitoring=MonitoringConfig(enabled=True, interval_s=3600.0),
    )
    start = replay.clock.now()
    snapshots: list[tuple[int, float, float, dict[int, float]]] = []
    async with open_daemon(cfg) as daemon:
        sample = daemon.ctx.metrics.registry.get_sample_value
        labels = {"model_version": str(VERSION), "bucket": "all"}
        for day in CHECKPOINT_DAYS:
            replay.clock.set(start + dt.timedelta(days=day))
            await daemon.runners["features"].run_once()
            await daemon.runners["predictions"].run_once()
            result = await daemon.runners["monitoring"].run_once()
            assert result["model_version"] == VERSION
            auc, acc = (
                sample("scorebeater_estimated_roc_auc", labels),
                sample("scorebeater_estimated_accuracy", labels),
            )
            assert auc is not None
            assert acc is not None
            latest = await _latest(daemon)
            assert sample("scorebeater_estimated_rows", labels) == len(latest)
            snapshots.append((day, auc, acc, latest))
        # drift and estimates are on /metrics during the replay
        assert daemon.admin_url is not None
        async with aiohttp.ClientSession(base_url=daemon.admin_url) as http, http.get("/metrics") as resp:
            text = await resp.text()
        assert 'scorebeater_drift_psi{input="ftm",reference="training"}' in text
        assert 'scorebeater_drift_psi{input="probability",reference="training"}' in text
        assert "scorebeater_drift_reference_available 1.0" in text
        assert f'scorebeater_estimated_roc_auc{{bucket="all",model_version="{VERSION}"}}' in text

        # the season turns final and is validated
        season = replay.catalog.seasons[SEASON]
        assert season.last_regular_date is not None
        replay.clock.set(timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1))
        await daemon.runners["features"].run_once()
        await daemon.runners["predictions"].run_once()
        await daemon.runners["validation"].run_once()
        beat: dict[int, bool] = {}
        async for table in daemon.ctx.storage.read_outcomes(season=SEASON):
            for row in table.to_pylist():
                if row["resolution"] == "final":
                    beat[row["player_id"]] = row["beat"]
        assert beat

    report = []
    for day, est_auc, est_acc, latest in snapshots:
        players = [p for p in latest if p in beat]
        assert len(players) > 0.95 * len(latest)
        y = np.asarray([beat[p] for p in players])
        p = np.asarray([latest[p] for p in players])
        realized = quality.summary(y, p)
        report.append((day, len(players), est_auc, realized["roc_auc"], est_acc, realized["accuracy"]))
    detail = "\n".join(
        f"day {d:3d}: n={n} AUC est {ea:.3f} realized {ra:.3f}; accuracy est {ec:.3f} realized {rc:.3f}"
        for d, n, ea, ra, ec, rc in report
    )
    for _day, _n, est_auc, real_auc, est_acc, real_acc in report:
        assert abs(est_auc - real_auc) <= AUC_TOLERANCE, detail
        assert abs(est_acc - real_acc) <= ACCURACY_TOLERANCE, detail
    print(detail)
