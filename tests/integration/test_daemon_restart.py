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

import signal
from pathlib import Path

import pytest

from scorebeater.config import StorageConfig
from scorebeater.testing.daemon_process import (
    checkpoint,
    log_tail,
    snapshot,
    start_daemon,
    stop,
    wait_for,
)
from scorebeater.testing.daemon_process import write_config as write_config_file
from tests.integration.daemon_support import (
    BACKENDS,
    SEASON,
    Services,
    reference,
    season_services,  # noqa: F401 - the services fixture
    storage_config,
)

pytestmark = pytest.mark.slow


def write_config(path: Path, services: Services, storage: StorageConfig) -> tuple[Path, dict[str, str]]:
    env = write_config_file(
        path, score_api_url=services.replay.url, model_url=services.model_url, storage=storage, season=SEASON
    )
    return path, env


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
