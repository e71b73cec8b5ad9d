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

import asyncio
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import open_daemon
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.storage import open_storage
from scorebeater.testing.score_api import RunningReplay, bundled_catalog, running_replay
from tests.integration.daemon_support import BACKENDS, model_base_path, storage_config

pytestmark = pytest.mark.slow

SEASON = 2014
DSN_ENV = "SCOREBEATER_RESTART_TEST_DSN"
Snapshot = dict[str, list[tuple[Any, ...]]]
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


def storage_toml(cfg: StorageConfig) -> tuple[str, dict[str, str]]:
    """The ``[storage]`` section for ``cfg`` and the environment the daemon process needs."""
    if cfg.backend == "local":
        return f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{cfg.local.root}"\n', {}
    if cfg.backend == "s3":
        s3 = cfg.s3
        section = (
            f'[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "{s3.bucket}"\nprefix = "{s3.prefix}"\n'
            f'endpoint_url = "{s3.endpoint_url}"\naddressing_style = "path"\n'
        )
        return section, {}  # the AWS_* variables are already in this process's environment
    assert cfg.postgres.dsn is not None
    section = (
        f'[storage]\nbackend = "postgres"\n[storage.postgres]\ndsn_env = "{DSN_ENV}"\n'
        f'schema = "{cfg.postgres.schema}"\n'
    )
    return section, {DSN_ENV: cfg.postgres.dsn.get()}


def write_config(path: Path, services: Services, storage: StorageConfig) -> tuple[Path, dict[str, str]]:
    section, env = storage_toml(storage)
    path.write_text(
        f"""
[logging]
format = "json"
level = "info"

[score_api]
base_url = "{services.replay.url}"
retry_budget_s = 10.0

[model]
name = "score_beater"

[tfserving]
base_url = "{services.model_url}"

{section}
[scheduler]
seasons = [{SEASON}]
poll_interval_s = 0.2
validation_cron = "0 0 1 1 *"

[admin]
enabled = false
"""
    )
    return path, env


def start_daemon(config: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBEATER_")} | extra_env
    with config.with_suffix(".log").open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "scorebeater", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )


def log_tail(config: Path) -> str:
    return config.with_suffix(".log").read_text(errors="replace")[-3000:]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def checkpoint(storage: StorageConfig, name: str) -> dict[str, Any] | None:
    async with open_storage(storage) as store:
        raw = await store.get_checkpoint(name)
    return None if raw is None else orjson.loads(raw)


async def wait_for(
    storage: StorageConfig,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    config: Path,
) -> None:
    """Poll checkpoint ``name`` until ``predicate`` holds (bounded; fails if the daemon died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await checkpoint(storage, name)
        if value is not None and predicate(value):
            return
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{log_tail(config)}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for checkpoint {name}:\n{log_tail(config)}")


async def snapshot(storage: StorageConfig) -> Snapshot:
    """Every stored row, minus wall-clock fields, sorted: what must match between two runs."""
    out: Snapshot = {"features": [], "predictions": [], "outcomes": []}
    async with open_storage(storage) as store:
        async for table in store.read_feature_history(seasons=[SEASON]):
            out["features"].extend(tuple(r.values()) for r in table.to_pylist())
        async for table in store.read_predictions(season=SEASON):
            out["predictions"].extend(
                (r["player_id"], r["as_of_seq"], r["model_version"], r["probability"], r["feature_hash"])
                for r in table.to_pylist()
            )
        async for table in store.read_outcomes(season=SEASON):
            out["outcomes"].extend(
                (r["player_id"], r["beat"], r["resolution"], r["ftm"], r["prev_ftm"], r["resolved_seq"])
                for r in table.to_pylist()
            )
    out["features"].sort(key=repr)
    out["predictions"].sort(key=lambda p: p[:3])
    out["outcomes"].sort(key=repr)
    return out


async def reference(services: Services, root: Path) -> Snapshot:
    """What an uninterrupted daemon stores for the whole regular season (computed once)."""
    if "snapshot" not in _reference:
        storage = StorageConfig(backend="local", local=LocalStorageConfig(root=root / "reference"))
        # A replay of its own: the test's replay clock must stay free to start mid-season.
        async with running_replay(services.replay.catalog, services.season_end) as replay:
            cfg = Config(
                score_api=replay.client_config(),
                model=ModelConfig(name="score_beater"),
                tfserving=TFServingConfig(base_url=services.model_url),
                storage=storage,
                scheduler=SchedulerConfig(seasons=(SEASON,)),
                admin=AdminConfig(enabled=False),
            )
            async with open_daemon(cfg) as daemon:
                await daemon.runners["features"].run_once()
                await daemon.runners["predictions"].run_once()
                await daemon.runners["validation"].run_once()
        _reference["snapshot"] = await snapshot(storage)
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
        await wait_for(storage, f"features.{SEASON}", lambda v: len(v["processed"]) > 0, 60, proc, config)
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
        await wait_for(storage, f"features.{SEASON}", lambda v: bool(v["complete"]), 120, proc, config)
        await wait_for(storage, f"validation.{SEASON}", lambda v: bool(v.get("final")), 60, proc, config)
    finally:
        stop(proc)
    assert proc.returncode == 0, log_tail(config)

    # 4. the same results
    got = await snapshot(storage)
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
