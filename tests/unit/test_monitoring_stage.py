"""The monitoring stage on real rows: drift PSI against the training reference and last season,
CBPE estimates, and what happens without a reference.

The rows are the bundled data's point-in-time rows of 2013 and 2014, stored as the daemon
stores feature rows: 2014 is the current season, at half its schedule; 2013 is last season,
stored at half and at nine tenths of its schedule (the stage must take the half). The training
reference is model/score_beater/2's (fitted on 2007-2014).
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from scorebeater import drift, estimation
from scorebeater.config import Config, LocalStorageConfig, ModelConfig, StorageConfig
from scorebeater.data import load_history
from scorebeater.inputs import INPUT_NAMES
from scorebeater.metrics import Metrics
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.monitoring import MonitoringStage
from scorebeater.storage import open_storage
from scorebeater.storage.base import FEATURES_SCHEMA, PREDICTIONS_SCHEMA, Storage, conform, feature_hashes
from scorebeater.training.dataset import TrainingSet, build_training_set

REPO_MODEL = Path(__file__).resolve().parents[2] / "model" / "score_beater"
CURRENT, PREVIOUS = 2014, 2013
POINT = 0.5
SCHEDULE_INPUTS = frozenset({"team_games", "season_games", "prev_season_games"})
"""Schedule facts (see the drift alert): compared, never alerted on."""
T0 = dt.datetime(2013, 11, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Rows:
    rows: TrainingSet
    current: np.ndarray
    """Indices of 2014's players as of half its schedule."""
    previous: np.ndarray
    """Indices of 2013's players as of half and as of nine tenths of its schedule."""


@pytest.fixture(name="league", scope="module")
def _league() -> Rows:
    rows = build_training_set(load_history(None), [PREVIOUS, CURRENT])
    share = drift.progress_share(rows.inputs["team_games"], rows.inputs["season_games"])

    def at(point: float, season: int) -> np.ndarray:
        idx = drift.latest_as_of(rows.season, rows.player_id, rows.as_of_seq, share, point)
        kept: np.ndarray = idx[rows.season[idx] == season]
        return kept

    return Rows(rows, at(POINT, CURRENT), np.concatenate([at(POINT, PREVIOUS), at(0.9, PREVIOUS)]))


def feature_table(rows: TrainingSet, idx: np.ndarray, *, ftm_scale: float = 1.0) -> pa.Table:
    """Rows ``idx`` as stored feature rows; ``ftm_scale`` shifts every FTM (0.5: halved)."""
    n = idx.size
    columns: dict[str, Any] = {
        "player_id": pa.array(rows.player_id[idx], pa.int64()),
        "season": pa.array(rows.season[idx], pa.int32()),
        "as_of_seq": pa.array(rows.as_of_seq[idx], pa.int32()),
        "as_of_game_id": pa.array([f"g{s}" for s in rows.as_of_seq[idx]]),
        "as_of_time": pa.array(
            [T0 + dt.timedelta(hours=int(s)) for s in rows.as_of_seq[idx]], pa.timestamp("us", tz="UTC")
        ),
        "player": pa.array([f"Player {p}" for p in rows.player_id[idx]]),
        "team": pa.array(["AAA"] * n),
    }
    for name in INPUT_NAMES:
        values = rows.inputs[name][idx].astype(np.float32)
        columns[name] = pa.array(np.floor(values * ftm_scale) if name == "ftm" else values)
    table = pa.table({**columns, "feature_hash": pa.array([""] * n)})
    table = table.set_column(
        table.schema.get_field_index("feature_hash"), "feature_hash", pa.array(feature_hashes(table))
    )
    return conform(table, FEATURES_SCHEMA, "test features")


def prediction_table(features: pa.Table, probability: np.ndarray, version: int) -> pa.Table:
    n = features.num_rows
    tg = features.column("team_games").to_numpy()
    sg = features.column("season_games").to_numpy()
    columns: dict[str, Any] = {
        "player_id": features.column("player_id"),
        "season": features.column("season"),
        "as_of_seq": features.column("as_of_seq"),
        "as_of_time": features.column("as_of_time"),
        "model_version": pa.array(np.full(n, version), pa.int64()),
        "probability": pa.array(probability, pa.float64()),
        "feature_hash": features.column("feature_hash"),
        "progress": pa.array(tg / np.maximum(sg, 1), pa.float32()),
        "predicted_at": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
    }
    if "role" in PREDICTIONS_SCHEMA.names:
        columns["role"] = pa.array(["champion"] * n)
    return conform(pa.table(columns), PREDICTIONS_SCHEMA, "test predictions")


def probabilities(features: pa.Table) -> np.ndarray:
    """A stand-in model's output: his pace against last season's total."""
    ftm = features.column("ftm").to_numpy().astype(np.float64)
    prev = features.column("prev_ftm").to_numpy().astype(np.float64)
    share = features.column("team_games").to_numpy() / np.maximum(
        features.column("season_games").to_numpy(), 1
    )
    pace = ftm / np.maximum(share, 0.05)
    p: np.ndarray = 1.0 / (1.0 + np.exp(-(pace - prev) / (prev + 10.0) * 4.0))
    return p


def model_base(tmp_path: Path, *, with_reference: bool = True) -> Path:
    """A model directory whose version 2 holds only the repository's v2 reference (the stage
    reads nothing else there)."""
    source = REPO_MODEL / "2" / "assets.extra" / drift.REFERENCE_FILE
    assert source.is_file(), "model/score_beater/2 has no drift reference"
    extra = tmp_path / "model" / "2" / "assets.extra"
    extra.mkdir(parents=True)
    if with_reference:
        shutil.copy(source, extra / drift.REFERENCE_FILE)
    return tmp_path / "model"


@dataclass
class Setup:
    stage: MonitoringStage
    metrics: Metrics
    storage: Storage
    current: pa.Table
    probability: np.ndarray

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def _seasons() -> list[int]:
    return [PREVIOUS, CURRENT]


@pytest.fixture(name="open_setup")
async def _open_setup(tmp_path: Path, league: Rows) -> AsyncIterator[Callable[..., Any]]:
    storages: list[Any] = []

    async def make(
        *, ftm_scale: float = 1.0, with_reference: bool = True, with_previous: bool = True
    ) -> Setup:
        base = model_base(tmp_path / f"m{len(storages)}", with_reference=with_reference)
        cm = open_storage(
            StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / f"store{len(storages)}"))
        )
        storage = await cm.__aenter__()
        storages.append(cm)
        current = feature_table(league.rows, league.current, ftm_scale=ftm_scale)
        await storage.write_features(current)
        if with_previous:
            await storage.write_features(feature_table(league.rows, league.previous))
        probability = probabilities(current)
        await storage.write_predictions(prediction_table(current, probability, 2))
        metrics = Metrics(CollectorRegistry())
        ctx = StageContext(
            cfg=Config(model=ModelConfig(base_path=base)),
            storage=storage,
            scores=cast("Any", None),  # the stage calls neither client
            model=cast("Any", None),
            metrics=metrics,
            clock=SystemClock(),
        )
        stage = MonitoringStage(ctx, seasons=_seasons, champion_version=lambda: 2)
        return Setup(stage, metrics, storage, current, probability)

    yield make
    for cm in storages:
        await cm.__aexit__(None, None, None)


async def test_an_unshifted_season_does_not_drift(open_setup: Callable[..., Any]) -> None:
    s: Setup = await open_setup()
    result: dict[str, Any] = await s.stage.run("r1")
    assert result["season"] == CURRENT
    assert result["progress"] == pytest.approx(POINT, abs=0.02)
    assert s.gauge("scorebeater_drift_reference_available") == 1
    training = result["training"]["psi"]
    last = result["last_season"]["psi"]
    assert set(training) == {*INPUT_NAMES, "probability"}
    assert set(last) == set(INPUT_NAMES)
    # only last season's rows as of half its schedule are compared (the 0.9 rows are left out)
    assert result["last_season"]["rows"] == s.gauge("scorebeater_drift_rows", reference="last_season")
    assert 300 < result["last_season"]["rows"] < 400
    assert training["ftm"] < 0.1
    assert last["ftm"] < 0.1
    for name in ("ftm", "fta", "games_with_fta", "prev_ftm", "experience"):
        assert s.gauge("scorebeater_drift_psi", input=name, reference="training") == pytest.approx(
            training[name], abs=1e-4
        )


async def test_halved_ftm_drifts_past_the_alert_threshold(open_setup: Callable[..., Any]) -> None:
    """Every FTM of the current season halved: the ftm PSI passes 0.2 against both references."""
    s: Setup = await open_setup(ftm_scale=0.5)
    await s.stage.run("r1")
    for reference in ("training", "last_season"):
        psi = s.gauge("scorebeater_drift_psi", input="ftm", reference=reference)
        assert psi is not None
        assert psi > drift.PSI_ALERT, (reference, psi)
    # the inputs that were not shifted stay where the unshifted season has them
    assert s.gauge("scorebeater_drift_psi", input="fta", reference="training") < 0.1  # type: ignore[operator]


async def test_estimates_come_from_the_latest_champion_predictions(open_setup: Callable[..., Any]) -> None:
    s: Setup = await open_setup()
    result: dict[str, Any] = await s.stage.run("r1")
    want = estimation.estimate_by_bucket(
        s.probability, s.current.column("team_games").to_numpy() / s.current.column("season_games").to_numpy()
    )
    assert set(result["estimated"]["2"]) == set(want)
    for bucket, scores in want.items():
        labels = {"model_version": "2", "bucket": bucket}
        assert s.gauge("scorebeater_estimated_roc_auc", **labels) == pytest.approx(scores["roc_auc"])
        assert s.gauge("scorebeater_estimated_accuracy", **labels) == pytest.approx(scores["accuracy"])
        assert s.gauge("scorebeater_estimated_rows", **labels) == scores["n"]


async def test_without_a_reference_or_last_season(open_setup: Callable[..., Any]) -> None:
    s: Setup = await open_setup(with_reference=False, with_previous=False)
    with capture_logs() as logs:
        await s.stage.run("r1")
        await s.stage.run("r2")
    assert s.gauge("scorebeater_drift_reference_available") == 0
    assert s.gauge("scorebeater_drift_psi", input="ftm", reference="training") is None
    assert s.gauge("scorebeater_drift_psi", input="ftm", reference="last_season") is None
    assert s.gauge("scorebeater_drift_rows", reference="training") == 0
    assert s.gauge("scorebeater_drift_rows", reference="last_season") == 0
    assert [e["event"] for e in logs].count("monitoring.reference_missing") == 1  # warned once
    # the estimates need no reference
    assert s.gauge("scorebeater_estimated_rows", model_version="2", bucket="all") == s.current.num_rows
