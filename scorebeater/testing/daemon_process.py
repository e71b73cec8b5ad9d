"""A real ``scorebeater run`` process over a store, and what it stored, for crash and fault runs.

Shared by the restart test and the fault suite (``python -m faults``): write a config pointing
the daemon at a Score API, a model server and a store; start it as a child process (its log
goes next to the config); wait on its checkpoints; stop it with a signal; and read back every
stored row, minus wall-clock fields, so two runs can be compared row by row.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from scorebeater.config import (
    AdminConfig,
    Config,
    ModelConfig,
    SchedulerConfig,
    ScoreApiConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import open_daemon
from scorebeater.storage import open_storage

DSN_ENV = "SCOREBEATER_FAULT_RUN_DSN"
Snapshot = dict[str, list[tuple[Any, ...]]]


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
        return section, {}  # the AWS_* variables come from this process's environment
    if cfg.postgres.dsn is None:
        raise ValueError("a Postgres storage config needs its DSN")
    section = (
        f'[storage]\nbackend = "postgres"\n[storage.postgres]\ndsn_env = "{DSN_ENV}"\n'
        f'schema = "{cfg.postgres.schema}"\n'
    )
    return section, {DSN_ENV: cfg.postgres.dsn.get()}


TEST_LEADERSHIP = "lease_ttl_s = 2.0\npoll_s = 0.25\n"
"""A lease short enough for tests that kill and restart daemons (``[leadership]`` lines)."""


def write_config(
    path: Path,
    *,
    score_api_url: str,
    model_url: str,
    storage: StorageConfig,
    season: int,
    score_api: str = "retry_budget_s = 10.0\n",
    scheduler: str = "",
    leadership: str = TEST_LEADERSHIP,
) -> dict[str, str]:
    """Write the daemon's config to ``path``; returns the extra environment it needs.

    ``score_api``, ``scheduler`` and ``leadership`` are extra TOML lines for those sections
    (``leadership`` defaults to a short lease, so a restart after a kill on S3 waits about 2 s,
    not the default 10; pass ``""`` for the defaults).
    """
    section, env = storage_toml(storage)
    path.write_text(
        f"""
[logging]
format = "json"
level = "info"

[score_api]
base_url = "{score_api_url}"
{score_api}
[model]
name = "score_beater"

[tfserving]
base_url = "{model_url}"

{section}
[scheduler]
seasons = [{season}]
poll_interval_s = 0.2
validation_cron = "0 0 1 1 *"
{scheduler}
[leadership]
{leadership}
[admin]
enabled = false
"""
    )
    return env


def start_daemon(config: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``scorebeater run --config CONFIG`` as a child; its stderr is appended to CONFIG.log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBEATER_")} | extra_env
    with config.with_suffix(".log").open("ab") as stderr:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "-m", "scorebeater", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )


def log_tail(config: Path, chars: int = 3000) -> str:
    """The end of the daemon's log."""
    return config.with_suffix(".log").read_text(errors="replace")[-chars:]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """Send ``sig`` (if still running) and wait; SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def checkpoint(storage: StorageConfig, name: str) -> dict[str, Any] | None:
    """Checkpoint ``name`` as stored, or ``None``."""
    async with open_storage(storage) as store:
        raw = await store.get_checkpoint(name)
    return None if raw is None else orjson.loads(raw)


async def wait_for(
    storage: StorageConfig,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float,
    proc: subprocess.Popen[bytes],
    config: Path,
    poll_s: float = 0.1,
) -> None:
    """Poll checkpoint ``name`` until ``predicate`` holds.

    Raises:
        AssertionError: the daemon exited, or ``timeout_s`` passed (with the log's tail).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await checkpoint(storage, name)
        if value is not None and predicate(value):
            return
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{log_tail(config)}")
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out waiting for checkpoint {name}:\n{log_tail(config)}")


async def snapshot(storage: StorageConfig, season: int) -> Snapshot:
    """Every stored row of ``season``, minus wall-clock fields, sorted: what two runs must share."""
    out: Snapshot = {"features": [], "predictions": [], "outcomes": []}
    async with open_storage(storage) as store:
        async for table in store.read_feature_history(seasons=[season]):
            out["features"].extend(tuple(r.values()) for r in table.to_pylist())
        async for table in store.read_predictions(season=season):
            out["predictions"].extend(
                (r["player_id"], r["as_of_seq"], r["model_version"], r["probability"], r["feature_hash"])
                for r in table.to_pylist()
            )
        async for table in store.read_outcomes(season=season):
            out["outcomes"].extend(
                (r["player_id"], r["beat"], r["resolution"], r["ftm"], r["prev_ftm"], r["resolved_seq"])
                for r in table.to_pylist()
            )
    out["features"].sort(key=repr)
    out["predictions"].sort(key=lambda p: p[:3])
    out["outcomes"].sort(key=repr)
    return out


async def uninterrupted_run(
    score_api: ScoreApiConfig, model_url: str, storage: StorageConfig, season: int
) -> Snapshot:
    """What an uninterrupted daemon (in process) stores for ``season``, everything final at once:
    one feature, prediction and validation run each, then the snapshot."""
    cfg = Config(
        score_api=score_api,
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url),
        storage=storage,
        scheduler=SchedulerConfig(seasons=(season,)),
        admin=AdminConfig(enabled=False),
    )
    async with open_daemon(cfg) as daemon:
        await daemon.runners["features"].run_once()
        await daemon.runners["predictions"].run_once()
        await daemon.runners["validation"].run_once()
    return await snapshot(storage, season)


PROBABILITY_TOLERANCE = 1e-6
"""Probabilities compare to float32 precision: TensorFlow's CPU kernels may round the last bit
differently for different batch sizes, and a restart or a retry re-batches."""


def _keys(rows: list[tuple[Any, ...]], table: str) -> list[tuple[Any, ...]]:
    if table == "features":
        return [r[:3] for r in rows]  # player, season, as-of
    if table == "predictions":
        return [r[:3] for r in rows]  # player, as-of, model version
    return [r[:1] + r[2:3] for r in rows]  # player, resolution


def compare(want: Snapshot, got: Snapshot) -> dict[str, int | bool]:
    """Lost rows (in ``want``, not in ``got``), duplicated rows (a key twice in ``got``), and
    whether ``got`` equals ``want`` (exact, except probabilities within the tolerance)."""
    lost = duplicated = 0
    for table in ("features", "predictions", "outcomes"):
        want_keys, got_keys = _keys(want[table], table), _keys(got[table], table)
        lost += len(set(want_keys) - set(got_keys))
        duplicated += len(got_keys) - len(set(got_keys))
    identical = (
        got["features"] == want["features"]
        and got["outcomes"] == want["outcomes"]
        and [p[:3] + p[4:] for p in got["predictions"]] == [p[:3] + p[4:] for p in want["predictions"]]
        and all(
            abs(g[3] - w[3]) <= PROBABILITY_TOLERANCE
            for g, w in zip(got["predictions"], want["predictions"], strict=True)
        )
    )
    return {"identical": identical, "lost": lost, "duplicated": duplicated}
