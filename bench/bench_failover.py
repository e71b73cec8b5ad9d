"""Failover: how long two ``scorebeater run`` replicas on one store go without a leader.

Scenario, per backend (a throwaway Postgres 15 cluster; moto's S3 server):

1. the replay Score API (2014, mid-season) and the TF Serving stand-in run here; two replicas
   start on one store with the default ``[leadership]`` (``lease_ttl_s`` 10, ``poll_s`` 2);
2. ``--kills`` times: the leader is SIGKILLed; the figure is the time from the kill to the
   standby's ``daemon.leading`` log line; the killed replica is restarted as the new standby.

Bound: ``lease_ttl_s + poll_s`` (12 s). A killed process's Postgres session ends with its
socket, so Postgres usually fails over within one poll; an S3 lease must expire first.

    .venv/bin/python -m bench.bench_failover [--backend postgres,s3] [--kills 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from scorebeater.config import LeadershipConfig, PostgresStorageConfig, S3StorageConfig, Secret, StorageConfig
from scorebeater.logs import configure_logging
from scorebeater.modelserver.app import serve_models
from scorebeater.testing.daemon_process import start_daemon, stop, write_config
from scorebeater.testing.savedmodel import cached_models
from scorebeater.testing.score_api import bundled_catalog, running_replay

SEASON = 2014
REPO_MODEL = Path(__file__).resolve().parents[1] / "model" / "score_beater"
BOUND_S = LeadershipConfig().lease_ttl_s + LeadershipConfig().poll_s
WAIT_S = 60.0


@dataclass
class Replica:
    config: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def leads(self) -> int:
        path = self.config.with_suffix(".log")
        return path.read_text(errors="replace").count('"daemon.leading"') if path.exists() else 0

    def start(self) -> None:
        self.proc = start_daemon(self.config, self.env)


def _model_base(tmp: Path) -> Path:
    versions = sorted(int(p.name) for p in REPO_MODEL.glob("*") if p.name.isdigit())
    source = REPO_MODEL / str(versions[-1]) if versions else cached_models(tmp / "models").score(1)
    base = tmp / "model" / "score_beater"
    base.mkdir(parents=True)
    (base / "1").symlink_to(source.resolve())
    return base


@contextlib.asynccontextmanager
async def _store(backend: str) -> AsyncIterator[StorageConfig]:
    name = f"failover_{uuid.uuid4().hex[:8]}"
    if backend == "postgres":
        from scorebeater.testing.postgres import run_postgres

        with run_postgres() as dsn:
            yield StorageConfig(
                backend="postgres", postgres=PostgresStorageConfig(dsn=Secret(dsn), schema=name)
            )
        return
    from aiobotocore.session import get_session

    from scorebeater.testing.s3 import run_moto

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with run_moto() as endpoint:
        async with get_session().create_client(
            "s3", region_name="us-east-1", endpoint_url=endpoint
        ) as client:
            await client.create_bucket(Bucket="bench")
        yield StorageConfig(
            backend="s3",
            s3=S3StorageConfig(bucket="bench", prefix=name, endpoint_url=endpoint, addressing_style="path"),
        )


async def _wait(predicate: Callable[[], bool], what: str) -> float:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def _leads_more(replica: Replica, than: int) -> Callable[[], bool]:
    return lambda: replica.leads() > than


@contextlib.asynccontextmanager
async def _services(tmp: Path) -> AsyncIterator[tuple[str, str]]:
    catalog = bundled_catalog()
    start = catalog.default_start(SEASON) + dt.timedelta(days=45)
    async with (
        running_replay(catalog, start) as replay,
        serve_models(
            model_name="score_beater", base_path=_model_base(tmp), host="127.0.0.1", port=0
        ) as models,
    ):
        yield replay.url, models.url


async def measure(backend: str, kills: int) -> list[float]:
    """Seconds from each SIGKILL of the leader to the standby leading."""
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp_dir:
        tmp = Path(tmp_dir)
        async with _store(backend) as storage, _services(tmp) as (score_url, model_url):
            replicas = []
            for name in ("a", "b"):
                config = tmp / f"{name}.toml"
                env = write_config(
                    config,
                    score_api_url=score_url,
                    model_url=model_url,
                    storage=storage,
                    season=SEASON,
                    leadership="",  # the defaults: the failover time users get
                )
                replicas.append(Replica(config, env))
            times: list[float] = []
            try:
                replicas[0].start()
                await _wait(lambda: replicas[0].leads() == 1, "the first leader")
                replicas[1].start()
                await asyncio.sleep(3.0)  # the standby is up and polling
                leader, standby = replicas
                for i in range(kills):
                    before = standby.leads()
                    assert leader.proc is not None
                    leader.proc.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    leader.proc.wait()
                    took_over = await _wait(_leads_more(standby, before), "the standby to lead")
                    times.append(took_over - killed)
                    print(f"{backend} kill {i + 1}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
                    leader.start()
                    await asyncio.sleep(3.0)  # the restarted replica is up and polling
                    leader, standby = standby, leader
            finally:
                for replica in replicas:
                    if replica.proc is not None:
                        stop(replica.proc, signal.SIGKILL)
            return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", default="postgres,s3", help="comma-separated: postgres, s3")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 kills per backend")
    args = parser.parse_args(argv)
    configure_logging("console", "warning")  # stderr: stdout carries only the Markdown table
    kills = 3 if args.quick else args.kills
    print("| backend | kills | p50 (s) | max (s) | bound (s) | within |\n|---|---|---|---|---|---|")
    ok = True
    for backend in [b.strip() for b in args.backend.split(",") if b.strip()]:
        times = asyncio.run(measure(backend, kills))
        worst = max(times)
        ok &= worst <= BOUND_S
        print(
            f"| {backend} | {kills} | {statistics.median(times):.2f} | {worst:.2f} | {BOUND_S:g} |"
            f" {'yes' if worst <= BOUND_S else 'NO'} |",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
