"""Crash and resume: a SIGKILLed daemon, restarted, stores exactly what an uninterrupted one does.

Real parts: the replay Score API over the real 2014 season and the TF Serving stand-in run in
this test (the test moves the replay clock); the daemon runs as a real ``scorebeater run``
process on each storage backend. Scenario, per backend:
1. reference: an uninterrupted daemon (in-process) processes the whole regular season;
2. the clock is set to mid-season; a daemon process starts and is SIGKILLed as soon as its
   first batch of games is committed, while the next ones are in flight;
3. the clock is moved past the end of the regular season; the daemon is restarted on the same
   store and runs until final outcomes are stored, then stopped with SIGTERM (exit 0);
4. the store holds the same feature rows, predictions and outcomes as the reference: no game
   lost, none counted twice, every feature row predicted once.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scorebeater.config import (
    LocalStorageConfig,
    StorageConfig,
)
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.daemon_process import (
    Snapshot,
    checkpoint,
    log_tail,
    snapshot,
    start_daemon,
    stop,
    uninterrupted_run,
    wait_for,
)
from scorebeater.testing.daemon_process import write_config as write_config_file
from scorebeater.testing.score_api import RunningReplay, bundled_catalog, running_replay
from tests.integration.daemon_support import BACKENDS, model_base_path, storage_config

pytestmark = pytest.mark.slow

SEASON = 2014
_reference: dict[str, Snapshot] = {}


@dataclass
class Services:
    replay: RunningReplay
    model_url: str
    mid_season: dt.datetime
    season_end: dt.datetime


@pytest.fixture(name="services")
async def _services(tmp_path: Path) -> AsyncIterator[Services]:
    catalog = bundled_catalog()
    season = catalog.seasons[SEASON]
    assert season.last_regular_date is not None
    start = catalog.default_start(SEASON)
    base = tmp_path / "model" / "score_beater"
    shutil.copytree(model_base_path(), base / "1")
    async with (
        running_replay(catalog, start) as replay,
        serve_models(model_name="score_beater", base_path=base, host="127.0.0.1", port=0) as models,
    ):
        yield Services(
            replay=replay,
            model_url=models.url,
            mid_season=start + dt.timedelta(days=45),
            season_end=timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1),
        )


def write_config(path: Path, services: Services, storage: StorageConfig) -> tuple[Path, dict[str, str]]:
    env = write_config_file(
        path, score_api_url=services.replay.url, model_url=services.model_url, storage=storage, season=SEASON
    )
    return path, env


async def reference(services: Services, root: Path) -> Snapshot:
    """What an uninterrupted daemon stores for the whole regular season (computed once)."""
    if "snapshot" not in _reference:
        storage = StorageConfig(backend="local", local=LocalStorageConfig(root=root / "reference"))
        # A replay of its own: the test's replay clock must stay free to start mid-season.
        async with running_replay(services.replay.catalog, services.season_end) as replay:
            _reference["snapshot"] = await uninterrupted_run(
                replay.client_config(), services.model_url, storage, SEASON
            )
    return _reference["snapshot"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
async def test_sigkill_and_restart_store_the_same_results(
    backend: str,
    services: Services,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1. the reference
    want = await reference(services, tmp_path)
    storage = storage_config(backend, request, tmp_path, monkeypatch)
    config, env = write_config(tmp_path / "daemon.toml", services, storage)

    # 2. mid-season: killed once its first batch is committed
    services.replay.clock.set(services.mid_season)
    proc = start_daemon(config, env)
    try:
        await wait_for(
            storage,
            f"features.{SEASON}",
            lambda v: len(v["processed"]) > 0,
            timeout_s=60,
            proc=proc,
            config=config,
        )
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed_at = await checkpoint(storage, f"features.{SEASON}")
    assert killed_at is not None
    assert not killed_at["complete"]

    # 3. the season ends; a restart catches up
    services.replay.clock.set(services.season_end)
    proc = start_daemon(config, env)
    try:
        await wait_for(
            storage,
            f"features.{SEASON}",
            lambda v: bool(v["complete"]),
            timeout_s=120,
            proc=proc,
            config=config,
        )
        await wait_for(
            storage,
            f"validation.{SEASON}",
            lambda v: bool(v.get("final")),
            timeout_s=60,
            proc=proc,
            config=config,
        )
    finally:
        stop(proc)
    assert proc.returncode == 0, log_tail(config)

    # 4. the same results
    got = await snapshot(storage, SEASON)
    assert len(want["features"]) > 10_000
    assert len(want["predictions"]) == len(want["features"])
    assert want["outcomes"]
    assert got["features"] == want["features"]
    assert got["outcomes"] == want["outcomes"]
    # The same keys and feature vectors; probabilities to float32 precision (TensorFlow's CPU
    # kernels may round differently for different batch sizes, and a restart re-batches).
    assert [p[:3] + p[4:] for p in got["predictions"]] == [p[:3] + p[4:] for p in want["predictions"]]
    for g, w in zip(got["predictions"], want["predictions"], strict=True):
        assert g[3] == pytest.approx(w[3], abs=1e-6)
