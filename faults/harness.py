"""The world a faulted run happens in, and one run from start to verdict.

:class:`World` holds, for the whole suite: the replay Score API over the real 2014 season with
its clock past the regular season (every game final, so a daemon has the whole season to do at
once), a fault injector in front of it, the TF Serving stand-in over the published model
(restartable on its port), and the backends: a temp directory, a Postgres 15 cluster, moto's S3
server behind a proxy that can fail. The reference (what an uninterrupted daemon stores) is
computed once, in process, on local storage.

:func:`run_once` gives one run a fresh, empty place in its backend, lets the fault drive a real
``scorebeater run`` process until the season is done (features complete, final outcomes
stored), then compares the store with the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from faults.s3proxy import S3Proxy, s3_proxy
from scorebeater.config import (
    LocalStorageConfig,
    PostgresStorageConfig,
    S3StorageConfig,
    Secret,
    StorageConfig,
)
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.daemon_process import (
    Snapshot,
    checkpoint,
    compare,
    log_tail,
    snapshot,
    start_daemon,
    stop,
    uninterrupted_run,
    write_config,
)
from scorebeater.testing.postgres import run_postgres
from scorebeater.testing.s3 import run_moto
from scorebeater.testing.savedmodel import cached_models
from scorebeater.testing.score_api import RunningReplay, bundled_catalog, running_replay

SEASON = 2014
BACKENDS = ("local", "postgres", "s3")
BUCKET = "scorebeater-faults"
ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 480.0
"""A run that has not finished the season by then counts as not identical (a stall)."""


@dataclass
class World:
    """Everything the runs share. Built by :func:`world`."""

    replay: RunningReplay
    model_base: Path
    model_port: int
    scratch: Path
    pg_dsn: str | None = None
    s3: S3Proxy | None = None
    model_server: contextlib.AbstractAsyncContextManager[object] | None = None
    reference: Snapshot = field(default_factory=dict)

    @property
    def model_url(self) -> str:
        return f"http://127.0.0.1:{self.model_port}"

    async def start_model_server(self) -> None:
        """Start the stand-in on its port (again after :meth:`stop_model_server`)."""
        server = serve_models(
            model_name="score_beater", base_path=self.model_base, host="127.0.0.1", port=self.model_port
        )
        await server.__aenter__()
        self.model_server = server

    async def stop_model_server(self) -> None:
        if self.model_server is not None:
            server, self.model_server = self.model_server, None
            await server.__aexit__(None, None, None)

    def storage(self, backend: str, run_id: str) -> StorageConfig:
        """A fresh, empty place in ``backend`` for one run."""
        if backend == "local":
            root = self.scratch / run_id / "store"
            root.mkdir(parents=True, exist_ok=True)
            return StorageConfig(backend="local", local=LocalStorageConfig(root=root))
        if backend == "postgres":
            if self.pg_dsn is None:
                raise RuntimeError("no Postgres cluster in this world")
            return StorageConfig(
                backend="postgres",
                postgres=PostgresStorageConfig(dsn=Secret(self.pg_dsn), schema=f"faults_{run_id}"),
            )
        if self.s3 is None:
            raise RuntimeError("no S3 server in this world")
        s3 = S3StorageConfig(bucket=BUCKET, prefix=run_id, endpoint_url=self.s3.url, addressing_style="path")
        return StorageConfig(backend="s3", s3=s3)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _model_source() -> Path:
    published = sorted(
        (p for p in (ROOT / "model" / "score_beater").glob("*") if p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    if published:
        return published[-1]
    return cached_models(Path(tempfile.gettempdir()) / "scorebeater-test-models").score(1)


async def _create_bucket(endpoint: str) -> None:
    from aiobotocore.session import get_session  # noqa: PLC0415

    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as client:
        await client.create_bucket(Bucket=BUCKET)


@contextlib.asynccontextmanager
async def world(backends: tuple[str, ...]) -> AsyncIterator[World]:
    """Start the shared services for ``backends``; compute the reference."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "faults-key-id")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "faults-secret")
    catalog = bundled_catalog()
    last = catalog.seasons[SEASON].last_regular_date
    if last is None:
        raise RuntimeError(f"season {SEASON} has no regular-season games")
    season_end = timeline.final_at(last) + dt.timedelta(hours=1)
    scratch = Path(tempfile.mkdtemp(prefix="scorebeater-faults-"))
    base = scratch / "model" / "score_beater"
    shutil.copytree(_model_source(), base / "1")
    async with contextlib.AsyncExitStack() as stack:
        replay = await stack.enter_async_context(running_replay(catalog, season_end))
        w = World(replay=replay, model_base=base, model_port=_free_port(), scratch=scratch)
        await w.start_model_server()
        stack.push_async_callback(w.stop_model_server)
        if "postgres" in backends:
            w.pg_dsn = stack.enter_context(run_postgres())
        if "s3" in backends:
            endpoint = stack.enter_context(run_moto())
            await _create_bucket(endpoint)
            w.s3 = await stack.enter_async_context(s3_proxy(endpoint))
        w.reference = await _reference(w)
        try:
            yield w
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


async def _reference(w: World) -> Snapshot:
    storage = w.storage("local", "reference")
    return await uninterrupted_run(w.replay.client_config(), w.model_url, storage, SEASON)


MAX_RESTARTS = 5
"""Restarts after a lost leadership a run allows before it counts as failed."""


@dataclass
class Run:
    """One run's handles, for the fault that drives it."""

    world: World
    backend: str
    storage: StorageConfig
    config: Path
    env: dict[str, str]
    seed: int
    proc: subprocess.Popen[bytes] | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    """Undone after the run's store was read (e.g. unmounting a file system under it)."""
    restarts: int = 0
    """Times the daemon was restarted after it lost leadership (see :meth:`_supervise`)."""

    def start(self) -> None:
        self.proc = start_daemon(self.config, self.env)

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, 9)

    async def first_commit(self, timeout_s: float = 60) -> None:
        """Wait until the daemon has committed at least one batch of games."""
        await self.until(lambda: self._processed(minimum=1), timeout_s)

    async def done(self, timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Wait until the season is done: every game processed and final outcomes stored."""
        await self.until(self._season_done, timeout_s)

    async def until(self, predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await predicate():
                return
            if self.proc is not None and self.proc.poll() is not None:
                self._supervise()
            await asyncio.sleep(0.2)
        raise RunFailed(f"not done after {timeout_s:.0f} s:\n{log_tail(self.config)}")

    def _supervise(self) -> None:
        """Restart a daemon that exited because it lost leadership, as its supervisor would
        (compose's ``restart: unless-stopped``, a Kubernetes Deployment): a store outage longer
        than the lease (a Postgres restart, an S3 503 burst) ends the leader's term, and a
        fresh process resumes from the checkpoints. Any other exit fails the run."""
        assert self.proc is not None  # noqa: S101 - called only for an exited process
        code = self.proc.returncode
        # The daemon's last words (its one-line error) say why it exited.
        lost = "leadership of term" in log_tail(self.config, chars=600)
        if code != 1 or not lost or self.restarts >= MAX_RESTARTS:
            raise RunFailed(f"daemon exited with {code}:\n{log_tail(self.config)}")
        self.restarts += 1
        self.start()

    async def _processed(self, minimum: int) -> bool:
        value = await _quiet_checkpoint(self.storage, f"features.{SEASON}")
        processed = value.get("processed") if value is not None else None
        return isinstance(processed, list) and len(processed) >= minimum

    async def _season_done(self) -> bool:
        features = await _quiet_checkpoint(self.storage, f"features.{SEASON}")
        final = await _quiet_checkpoint(self.storage, f"validation.{SEASON}")
        return bool(features and features.get("complete") and final and final.get("final"))


async def _quiet_checkpoint(storage: StorageConfig, name: str) -> dict[str, object] | None:
    """The checkpoint, or ``None`` while the store itself is faulted (a restart, a full disk)."""
    try:
        return await checkpoint(storage, name)
    except Exception:  # noqa: BLE001 - the fault may be the storage itself; ask again later
        return None


class RunFailed(Exception):
    """The daemon died or stalled."""


@dataclass
class Outcome:
    fault: str
    backend: str
    seed: int
    identical: bool
    lost: int
    duplicated: int
    recovery_s: float | None
    error: str = ""


Fault = Callable[[Run], Awaitable[float]]
"""Drives one run to the end of the season; returns the recovery time in seconds."""


async def run_once(w: World, name: str, fault: Fault, backend: str, seed: int) -> Outcome:
    """One faulted run in a fresh place of ``backend``, compared with the reference."""
    run_id = f"{name.replace('-', '_')}_{backend}_{seed}_{uuid.uuid4().hex[:6]}"
    storage = w.storage(backend, run_id)
    config = w.scratch / run_id / "daemon.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    env = write_config(
        config,
        score_api_url=w.replay.url,
        model_url=w.model_url,
        storage=storage,
        season=SEASON,
        score_api="timeout_s = 1.0\nconnect_timeout_s = 1.0\nmax_attempts = 4\nretry_budget_s = 10.0\n",
        scheduler="backoff_initial_s = 0.2\nbackoff_max_s = 2.0\nshutdown_grace_s = 10.0\n",
    )
    run = Run(world=w, backend=backend, storage=storage, config=config, env=env, seed=seed)
    recovery: float | None = None
    error = ""
    try:
        recovery = await fault(run)
    except RunFailed as exc:
        error = str(exc)  # with the daemon log's tail
    finally:
        w.replay.faults.calm()
        if run.proc is not None:
            stop(run.proc)
    try:
        if recovery is None:
            return Outcome(
                name, backend, seed, identical=False, lost=-1, duplicated=-1, recovery_s=None, error=error
            )
        verdict = compare(w.reference, await snapshot(storage, SEASON))
    finally:
        for cleanup in reversed(run.cleanups):
            cleanup()
    return Outcome(
        name,
        backend,
        seed,
        identical=bool(verdict["identical"]),
        lost=int(verdict["lost"]),
        duplicated=int(verdict["duplicated"]),
        recovery_s=recovery,
    )
