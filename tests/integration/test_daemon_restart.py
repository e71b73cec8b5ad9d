"""Crash and resume: a SIGKILLed daemon, restarted, stores exactly what an uninterrupted one does.

Scenario (real processes: ``scorebeater run`` with its embedded replay Score API over the real
2014 season at high speed, the embedded TF Serving stand-in, local storage):
1. an uninterrupted run replays the whole regular season and stores features, predictions and
   final outcomes;
2. a second run in a fresh store is SIGKILLed once a few hundred games are committed, then
   restarted on the same store and config, and runs to the end of the season;
3. both stores hold the same feature rows, predictions and outcomes: no game lost, none counted
   twice, every feature row predicted once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from scorebeater.config import LocalStorageConfig, StorageConfig
from scorebeater.storage import open_storage
from tests.integration.daemon_support import model_base_path

pytestmark = pytest.mark.slow

SEASON = 2014
SPEED = 1_500_000.0  # the 2014 regular season (~170 days) in about 10 s


def write_config(root: Path, store: Path, model_base: Path) -> Path:
    path = root / "daemon.toml"
    path.write_text(
        f"""
[logging]
format = "json"
level = "warning"

[score_api.replay]
enabled = true
port = 0
speed = {SPEED}
season = {SEASON}

[model]
base_path = "{model_base}"

[model_server]
enabled = true
port = 0
poll_interval_s = 1.0

[storage]
backend = "local"
[storage.local]
root = "{store}"

[scheduler]
seasons = [{SEASON}]
poll_interval_s = 0.2
validation_cron = "0 0 1 1 *"

[admin]
enabled = false
"""
    )
    return path


def start_daemon(config: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBEATER_")}
    log = config.with_suffix(".log")
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "scorebeater", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )


def log_tail(config: Path) -> str:
    return config.with_suffix(".log").read_text(errors="replace")[-3000:]


async def checkpoint(store: Path, name: str) -> dict[str, Any] | None:
    async with open_storage(StorageConfig(backend="local", local=LocalStorageConfig(root=store))) as storage:
        raw = await storage.get_checkpoint(name)
    return None if raw is None else orjson.loads(raw)


async def wait_for(
    store: Path, name: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
) -> None:
    """Poll checkpoint ``name`` until ``predicate`` holds (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await checkpoint(store, name)
        if value is not None and predicate(value):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for checkpoint {name}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def snapshot(store: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every stored row, minus wall-clock fields, sorted: what must match between the two runs."""
    cfg = StorageConfig(backend="local", local=LocalStorageConfig(root=store))
    out: dict[str, list[tuple[object, ...]]] = {"features": [], "predictions": [], "outcomes": []}
    async with open_storage(cfg) as storage:
        async for table in storage.read_feature_history(seasons=[SEASON]):
            out["features"].extend(tuple(r.values()) for r in table.to_pylist())
        async for table in storage.read_predictions(season=SEASON):
            out["predictions"].extend(
                (r["player_id"], r["as_of_seq"], r["model_version"], r["probability"], r["feature_hash"])
                for r in table.to_pylist()
            )
        async for table in storage.read_outcomes(season=SEASON):
            out["outcomes"].extend(
                (r["player_id"], r["beat"], r["resolution"], r["ftm"], r["prev_ftm"], r["resolved_seq"])
                for r in table.to_pylist()
            )
    out["predictions"].sort(key=lambda p: p[:3])
    return {k: v if k == "predictions" else sorted(v, key=repr) for k, v in out.items()}


def season_done(value: dict[str, Any]) -> bool:
    return bool(value.get("complete"))


def final_outcomes_stored(value: dict[str, Any]) -> bool:
    return bool(value.get("final"))


async def run_to_end(config: Path, store: Path) -> None:
    proc = start_daemon(config)
    try:
        await wait_for(store, f"features.{SEASON}", season_done, 120)
        await wait_for(store, f"validation.{SEASON}", final_outcomes_stored, 60)
        # Predictions follow the last feature commit; give the stage its last run.
        await asyncio.sleep(2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; daemon log:\n{log_tail(config)}") from exc
    finally:
        stop(proc)
    assert proc.returncode == 0, log_tail(config)


@pytest.mark.timeout(400)
async def test_sigkill_and_restart_store_the_same_results(tmp_path: Path) -> None:
    model = tmp_path / "model" / "score_beater"
    shutil.copytree(model_base_path(), model / "1")

    # 1. uninterrupted
    clean_store = tmp_path / "clean"
    await run_to_end(write_config(_mk(tmp_path / "clean-cfg"), clean_store, model), clean_store)

    # 2. killed mid-season, then restarted
    crash_store = tmp_path / "crash"
    config = write_config(_mk(tmp_path / "crash-cfg"), crash_store, model)
    proc = start_daemon(config)
    try:
        await wait_for(crash_store, f"features.{SEASON}", lambda v: len(v["processed"]) >= 300, 120)
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed_at = await checkpoint(crash_store, f"features.{SEASON}")
    assert killed_at is not None
    assert not killed_at["complete"]
    await run_to_end(config, crash_store)

    # 3. the same results
    clean, crashed = await snapshot(clean_store), await snapshot(crash_store)
    assert len(clean["features"]) > 10_000
    assert len(clean["predictions"]) == len(clean["features"])
    assert clean["outcomes"]
    assert crashed["features"] == clean["features"]
    assert crashed["outcomes"] == clean["outcomes"]
    # The same keys and feature vectors; probabilities to float32 precision (TensorFlow's CPU
    # kernels may round differently for different batch sizes, and a restart re-batches).
    assert [p[:3] + p[4:] for p in crashed["predictions"]] == [p[:3] + p[4:] for p in clean["predictions"]]
    for got, want in zip(crashed["predictions"], clean["predictions"], strict=True):
        assert got[3] == pytest.approx(want[3], abs=1e-6)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
