"""The learning loop end to end on real parts, on local storage and on Postgres.

Real 2013 and 2014 seasons through the replay Score API, the TF Serving stand-in serving the
repository's published models with a ``models.config`` (``stable`` -> 2), the daemon's own
stages driven one run at a time, and the real ``train`` and ``promote`` command handlers:

1. season S = 2013 is replayed to its end: the champion (v2) predicts every game, the
   validation stage stores final outcomes;
2. ``train --from-storage`` fits on every season with final outcomes (2011-2012 from a
   trimmed data directory, 2013 from storage), judges its gate fold on 2013 against the
   champion's stored predictions, and publishes version 3, whose card lists 2013 among its
   fitted seasons with the storage as its source;
3. ``promote --to 3 --label canary`` makes it the challenger; season S+1 = 2014 is replayed
   with the daemon following it: every champion prediction row is also scored by the
   challenger, the champion's predictions go on throughout;
4. at the end of 2014 the challenger's realized metrics on the same labelled rows and its
   flip ratio are on ``/metrics``, beside drift and the estimated (CBPE) metrics;
5. ``promote --to 3`` moves ``stable``; the stand-in follows, and the next prediction run
   pins version 3 as champion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import datetime as dt
import gzip
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pyarrow as pa
import pytest

from scorebeater.config import (
    AdminConfig,
    Config,
    ModelConfig,
    ModelServerConfig,
    SchedulerConfig,
    Secret,
    StorageConfig,
    TFServingConfig,
    parse_config,
)
from scorebeater.daemon import Daemon, open_daemon
from scorebeater.errors import ModelUnavailable
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import RunningReplay, bundled_catalog, running_replay
from tests.integration.daemon_support import BACKENDS, REPO_MODEL, storage_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DATA = Path(__file__).resolve().parents[2] / "scorebeater" / "data"
FILE_SEASONS = (2011, 2012)
SEASON = 2013
NEXT = 2014
ADMIN_TOKEN = "loop-test-token"


def trimmed_data(dest: Path) -> Path:
    """The bundled data with per-game files cut to ``FILE_SEASONS`` (season totals whole): the
    seasons training takes from files; the stored season is the daemon's own."""
    dest.mkdir(parents=True)
    shutil.copy(DATA / "season_totals.csv.gz", dest / "season_totals.csv.gz")
    for name in ("games.csv.gz", "player_games.csv.gz"):
        with gzip.open(DATA / name, "rt", newline="") as src, gzip.open(dest / name, "wt", newline="") as out:
            reader = csv.DictReader(src)
            assert reader.fieldnames is not None
            writer = csv.DictWriter(out, fieldnames=reader.fieldnames)
            writer.writeheader()
            writer.writerows(r for r in reader if int(r["season"]) in FILE_SEASONS)
    return dest


def models_config(path: Path, labels: dict[str, int]) -> Path:
    pairs = "\n".join(f"    version_labels {{ key: '{k}' value: {v} }}" for k, v in labels.items())
    path.write_text(
        "# the daemon's promotions rewrite the labels below\n"
        "model_config_list {\n  config {\n    name: 'score_beater'\n    base_path: '/models/score_beater'\n"
        "    model_platform: 'tensorflow'\n    model_version_policy { all {} }\n"
        f"{pairs}\n  }}\n}}\n"
    )
    return path


def daemon_config(
    replay: RunningReplay,
    season: int,
    model_url: str,
    storage: StorageConfig,
    tmp_path: Path,
    config_file: Path,
) -> Config:
    return Config(
        score_api=replay.client_config(),
        model=ModelConfig(name="score_beater", base_path=tmp_path / "model" / "score_beater"),
        model_server=ModelServerConfig(models_config=config_file),
        tfserving=TFServingConfig(
            base_url=model_url, max_batch_size=512, version_label="stable", challenger_label="canary"
        ),
        storage=storage,
        scheduler=SchedulerConfig(seasons=(season,), poll_interval_s=0.5),
        admin=AdminConfig(host="127.0.0.1", port=0, token=Secret(ADMIN_TOKEN)),
    )


def training_config(base: Config, tmp_path: Path) -> Config:
    """``base`` with a small, fast recipe (the loop is under test, not the model's quality) and
    a gate that lets a deliberately small model through: the test checks what the gate judged."""
    small = parse_config(
        {
            "training": {
                "epochs": 2,
                "batch_size": 1024,
                "hidden_units": [8],
                "learning_rate": 0.01,
                "long_history_from": 2009,
                "report_dir": str(tmp_path / "reports"),
                "gate": {
                    "max_auc_drop": 1.0,
                    "max_brier_increase": 1.0,
                    "max_log_loss_increase": 10.0,
                    "max_ece": 1.0,
                },
            }
        },
        env={},
    )
    return dataclasses.replace(base, training=small.training)


@pytest.fixture(name="model_base")
def _model_base(tmp_path: Path) -> Path:
    base = tmp_path / "model" / "score_beater"
    base.mkdir(parents=True)
    for version in ("1", "2"):
        shutil.copytree(REPO_MODEL / version, base / version)
    return base


@pytest.fixture(name="config_file")
def _config_file(tmp_path: Path) -> Path:
    return models_config(tmp_path / "models.config", {"stable": 2})


@pytest.fixture(name="model_url")
async def _model_url(model_base: Path, config_file: Path) -> AsyncIterator[str]:
    async with serve_models(
        model_name="score_beater",
        base_path=model_base,
        host="127.0.0.1",
        port=0,
        poll_interval_s=0.2,
        models_config=config_file,
    ) as server:
        yield server.url


async def replay_to_season_end(daemon: Daemon, replay: RunningReplay, season: int) -> None:
    """Three weeks in (one run of each stage), then past the last regular-season game."""
    catalog = replay.catalog.seasons[season]
    assert catalog.last_regular_date is not None
    for until in (
        replay.clock.now() + dt.timedelta(days=21),
        timeline.final_at(catalog.last_regular_date) + dt.timedelta(hours=1),
    ):
        replay.clock.set(until)
        await daemon.runners["features"].run_once()
        await daemon.runners["predictions"].run_once()
        await daemon.runners["shadow"].run_once()
    result = await daemon.runners["validation"].run_once()
    assert result["final_outcomes"] > 300


async def stored(daemon: Daemon, season: int, role: str | None) -> pa.Table:
    parts = [t async for t in daemon.ctx.storage.read_predictions(season=season, role=role)]
    assert parts
    return pa.concat_tables(parts)


async def feature_keys(daemon: Daemon, season: int) -> set[tuple[int, int]]:
    keys: set[tuple[int, int]] = set()
    async for table in daemon.ctx.storage.read_feature_history(seasons=[season]):
        keys.update(
            zip(table.column("player_id").to_pylist(), table.column("as_of_seq").to_pylist(), strict=True)
        )
    return keys


def row_keys(table: pa.Table) -> set[tuple[int, int]]:
    return set(zip(table.column("player_id").to_pylist(), table.column("as_of_seq").to_pylist(), strict=True))


async def wait_until_available(model_url: str, version: int) -> None:
    """TF Serving refuses a label on a version that is not AVAILABLE yet: wait for its load."""
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            async with http.get(f"{model_url}/v1/models/score_beater") as resp:
                states = {int(s["version"]): s["state"] for s in (await resp.json())["model_version_status"]}
            if states.get(version) == "AVAILABLE":
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"version {version} never became AVAILABLE")


async def wait_for_label(daemon: Daemon, label: str, version: int) -> None:
    for _ in range(100):
        with contextlib.suppress(ModelUnavailable):  # not assigned until the server re-reads the file
            if await daemon.ctx.model.pin_version(label) == version:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the model server never assigned {label} -> {version}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("local", "postgres")])
async def test_stored_truth_trains_a_challenger_that_is_proven_live_and_promoted(
    backend: str,
    model_url: str,
    model_base: Path,
    config_file: Path,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from scorebeater.promotion.promoter import promote_command
    from scorebeater.training.pipeline import train_command

    storage = storage_config(backend, request, tmp_path, monkeypatch)
    catalog = bundled_catalog()

    # 1. season S through the daemon, to its final outcomes
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        cfg = daemon_config(replay, SEASON, model_url, storage, tmp_path, config_file)
        async with open_daemon(cfg) as daemon:
            await replay_to_season_end(daemon, replay, SEASON)
            champion_rows = await stored(daemon, SEASON, "champion")
            assert set(champion_rows.column("model_version").to_pylist()) == {2}
            assert row_keys(champion_rows) == await feature_keys(daemon, SEASON)

    # 2. retrain from storage: the stored season is fitted on, and judged first
    train_cfg = training_config(cfg, tmp_path)
    args = argparse.Namespace(
        cfg=train_cfg, from_storage=True, data=trimmed_data(tmp_path / "data"), force=False
    )
    assert await train_command(args) == 0
    card = json.loads((model_base / "3" / "assets.extra" / "model_card.json").read_text())
    assert SEASON in card["training_seasons"]
    assert set(FILE_SEASONS) <= set(card["training_seasons"])
    by_season = {s["season"]: s for s in card["seasons"]}
    assert by_season[SEASON]["source"] == "storage"
    assert by_season[SEASON]["rows"] > 0
    assert by_season[2012]["source"] == "files"
    gate = json.loads((model_base / "3" / "assets.extra" / "blessing.json").read_text())
    assert gate["eval_seasons"] == [SEASON]
    assert gate["champion"]["source"] == "stored_predictions"
    assert (model_base / "3" / "assets.extra" / "reference.json").is_file()

    # 3. version 3 becomes the challenger
    await wait_until_available(model_url, 3)
    promote = argparse.Namespace(cfg=cfg, to=3, label="canary", by="test", reason="shadow it")
    assert await promote_command(promote) == 0
    assert "version_labels { key: 'canary' value: 3 }" in config_file.read_text()
    capsys.readouterr()

    async with running_replay(catalog, catalog.default_start(NEXT)) as replay:
        cfg = daemon_config(replay, NEXT, model_url, storage, tmp_path, config_file)
        async with open_daemon(cfg) as daemon:
            await wait_for_label(daemon, "canary", 3)
            await replay_to_season_end(daemon, replay, NEXT)
            champion = await stored(daemon, NEXT, "champion")
            challenger = await stored(daemon, NEXT, "challenger")
            assert set(champion.column("model_version").to_pylist()) == {2}
            assert set(challenger.column("model_version").to_pylist()) == {3}
            # The champion predicted every feature row of the season; the shadow the same rows.
            assert row_keys(champion) == await feature_keys(daemon, NEXT)
            assert row_keys(challenger) == row_keys(champion)
            await daemon.runners["monitoring"].run_once()

            # 4. the comparison, drift and estimates on /metrics
            assert daemon.admin_url is not None
            async with aiohttp.ClientSession(base_url=daemon.admin_url) as http:
                async with http.get("/metrics") as resp:
                    text = await resp.text()
                for needle in (
                    'scorebeater_shadow_eval_roc_auc{bucket="all",model_version="3",role="challenger"}',
                    'scorebeater_shadow_eval_roc_auc{bucket="all",model_version="2",role="champion"}',
                    'scorebeater_shadow_flip_ratio{model_version="3",role="challenger",rows="labelled"}',
                    'scorebeater_drift_psi{input="ftm",reference="training"}',
                    'scorebeater_estimated_roc_auc{bucket="all",model_version="2"}',
                ):
                    assert needle in text, needle
                sample = daemon.ctx.metrics.registry.get_sample_value
                rows = sample(
                    "scorebeater_shadow_eval_rows",
                    {"model_version": "3", "role": "challenger", "bucket": "all"},
                )
                assert rows == sample(
                    "scorebeater_shadow_eval_rows",
                    {"model_version": "2", "role": "champion", "bucket": "all"},
                )
                assert rows is not None
                assert rows > 1000
                async with http.get("/v1/models") as resp:
                    assert resp.status == 200
                    models = await resp.json()
                assert json.dumps(models)  # served as JSON
                # 5. promote: `stable` moves, and the champion becomes version 3
                promote = argparse.Namespace(cfg=cfg, to=3, label=None, by="test", reason="it won")
                assert await promote_command(promote) == 0
                assert "version_labels { key: 'stable' value: 3 }" in config_file.read_text()
                await wait_for_label(daemon, "stable", 3)
                replay.clock.set(replay.clock.now() + dt.timedelta(days=1))
                result = await daemon.runners["predictions"].run_once()
                assert result["model_version"] == 3
                async with http.get("/v1/models") as resp:
                    after = await resp.json()
                assert json.dumps(after).count('"to_version": 3') >= 2  # both promotions recorded
