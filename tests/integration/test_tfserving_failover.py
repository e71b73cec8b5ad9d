"""A replayed season scored over two TF Serving stand-ins, one of them SIGKILLed mid-run.

Scenario:
1. Two ``scorebeater serve-model`` processes serve the same two versions (``stable`` -> 1,
   ``canary`` -> 2); the daemon's ``[tfserving] base_url`` lists both, one row per predict
   request so each run sends many, and the shadow stage scores the canary.
2. Day by day over the synthetic league's season, the feature stage stores the day's rows,
   the prediction stage scores them with the champion's client and the shadow stage with the
   challenger's, each spreading its requests over both replicas.
3. On the third day, while the prediction run has requests in flight to replica A, A is
   SIGKILLed: its requests fail without a response, A is ejected, and they are retried on B.
   The challenger's client finds A dead at its next pin and ejects it too.
4. The remaining days run on B alone (A stays ejected for its cool-down).
5. No prediction or shadow run failed, and every stored feature row has its champion and its
   challenger prediction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
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
)
from scorebeater.daemon import open_daemon
from scorebeater.metrics import Metrics
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.savedmodel import cached_models, publish
from scorebeater.testing.score_api import RunningReplay
from tests.integration.league import MODEL_CACHE, SEASON, catalog_fixture, replay_fixture  # noqa: F401 - fixtures

STARTUP_TIMEOUT_S = 60.0
KILL_DAY = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(name="standins")
def _standins(tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Two stand-in processes over copies of versions 1 and 2, not yet known to serve."""
    cache = cached_models(MODEL_CACHE)
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list { config { name: 'score_beater' base_path: '/models/score_beater' "
        "model_platform: 'tensorflow' model_version_policy { all {} } "
        "version_labels { key: 'stable' value: 1 } version_labels { key: 'canary' value: 2 } } }"
    )
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for name in ("a", "b"):
            base = tmp_path / name / "score_beater"
            publish(cache.score(1), base, 1)
            publish(cache.score(2), base, 2)
            port = _free_port()
            log = (tmp_path / f"{name}.log").open("wb")
            command = [
                sys.executable, "-m", "scorebeater", "serve-model", "--model-base-path", str(base),
                "--model-config-file", str(config), "--port", str(port),
                "--file-system-poll-wait-seconds", "60",
            ]  # fmt: skip
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running.append((f"http://127.0.0.1:{port}", process))
        yield running
    finally:
        for _, process in running:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


async def _wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.poll() is None, "serve-model exited during start-up"
            try:
                async with session.get(f"{url}/v1/models/score_beater") as resp:
                    if resp.status == 200 and (await resp.read()).count(b'"AVAILABLE"') == 2:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)  # a separate process importing TensorFlow: polling is the only way
    pytest.fail(f"serve-model at {url} did not serve within {STARTUP_TIMEOUT_S} s")


def _day(catalog: ReplayCatalog, n: int) -> dt.datetime:
    days = sorted({e.game.date for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"})
    return timeline.final_at(days[n - 1]) + dt.timedelta(minutes=1)


async def _keys(tables: AsyncIterator[pa.Table]) -> set[tuple[int, int]]:
    """``(player_id, as_of_seq)`` of every row."""
    return {
        (row["player_id"], row["as_of_seq"])
        for table in [t async for t in tables]
        for row in table.select(["player_id", "as_of_seq"]).to_pylist()
    }


def _requests(metrics: Metrics, url: str) -> float:
    value = metrics.registry.get_sample_value(
        "scorebeater_tfserving_replica_requests_total", {"replica": url}
    )
    return value or 0.0


async def _kill_when_busy(
    metrics: Metrics, url: str, process: subprocess.Popen[bytes], after: float
) -> float:
    """SIGKILL ``process`` once the client has sent ``url`` more than ``after`` requests (the
    counter moves as a request is sent, so one is in flight); returns the count it saw."""
    while (seen := _requests(metrics, url)) <= after:
        await asyncio.sleep(0)  # the requests are sent on this loop: look between them
    process.send_signal(signal.SIGKILL)
    return seen


@pytest.mark.timeout(120)
async def test_killing_one_of_two_standins_mid_run_fails_no_prediction_run(
    standins: list[tuple[str, subprocess.Popen[bytes]]],
    replay: RunningReplay,
    catalog: ReplayCatalog,
    tmp_path: Path,
    metrics: Metrics,
) -> None:
    await asyncio.gather(*(_wait_until_serving(url, process) for url, process in standins))
    (url_a, process_a), (url_b, _) = standins
    cfg = Config(
        score_api=replay.client_config(max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(
            base_url=(url_a, url_b),
            version_label="stable",
            challenger_label="canary",
            max_batch_size=1,
            max_concurrency=2,
            eject_cooldown_s=60.0,
        ),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(enabled=False),
    )
    scored_per_day: list[int] = []
    shadowed_per_day: list[int] = []
    async with open_daemon(cfg, metrics=metrics) as daemon:
        features, predictions = daemon.runners["features"], daemon.runners["predictions"]
        shadow = daemon.runners["shadow"]
        await predictions.run_once()  # the start-up reconcile, on an empty store
        for day in range(1, 7):
            replay.clock.set(_day(catalog, day))
            await features.run_once()
            if day != KILL_DAY:
                result = await predictions.run_once()
            else:
                # Past the pin's status read and a predict or two: A has one in flight.
                killer = asyncio.create_task(
                    _kill_when_busy(metrics, url_a, process_a, _requests(metrics, url_a) + 2)
                )
                result = await predictions.run_once()
                assert killer.done(), "A was not killed during the run: too few requests to it"
                await killer
                assert process_a.wait(timeout=10) == -signal.SIGKILL
            scored_per_day.append(result["diff_rows"])
            shadowed = await shadow.run_once()
            assert shadowed["model_version"] == 2, shadowed
            shadowed_per_day.append(int(shadowed.get("rows", 0)) + int(shadowed.get("recovered_rows", 0)))
        stored = await _keys(daemon.ctx.storage.read_feature_history())
        predicted = await _keys(daemon.ctx.storage.read_predictions())
        challenged = await _keys(daemon.ctx.storage.read_predictions(role="challenger"))

    assert all(rows > 0 for rows in scored_per_day), scored_per_day
    assert all(rows > 0 for rows in shadowed_per_day), shadowed_per_day
    assert predicted == stored
    assert challenged == stored
    sample = metrics.registry.get_sample_value
    assert sample("scorebeater_stage_runs_total", {"stage": "predictions", "outcome": "error"}) == 0
    assert sample("scorebeater_stage_runs_total", {"stage": "predictions", "outcome": "success"}) == 7
    assert sample("scorebeater_stage_runs_total", {"stage": "shadow", "outcome": "error"}) == 0
    # Each client ejected A once: the champion's mid-run, the challenger's at its next pin.
    assert sample("scorebeater_tfserving_replica_ejections_total", {"replica": url_a}) == 2
    assert sample("scorebeater_tfserving_healthy_replicas") == 1
    # The kill failed a request in flight (or the next connection), retried on B.
    assert (sample("scorebeater_tfserving_replica_errors_total", {"replica": url_a}) or 0) >= 1
    assert (sample("scorebeater_tfserving_retries_total") or 0) >= 1
    # Both served before the kill; B served everything after it.
    assert _requests(metrics, url_a) >= 3
    assert _requests(metrics, url_b) > _requests(metrics, url_a)
