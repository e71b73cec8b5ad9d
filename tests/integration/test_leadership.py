"""Leader election and fencing on the real backends: local files, Postgres 15, moto's S3 server.

Electors: one leader at a time, a standby is refused, takeover after the leader is gone
(released, killed, or silent past its lease), terms grow. Fencing: once a newer term has
claimed a store, a write carrying the older token raises ``Fenced`` and leaves the store as it
was, on every backend.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import asyncpg
import pytest
import structlog

from scorebeater import daemon
from scorebeater.config import (
    AdminConfig,
    Config,
    LeadershipConfig,
    LocalStorageConfig,
    SchedulerConfig,
    ScoreApiConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, once_command, open_daemon, serve
from scorebeater.errors import Fenced, LeadershipHeld, LeadershipLost
from scorebeater.leadership import fence_storage, open_elector, probe_holder
from scorebeater.storage import open_storage
from scorebeater.storage.objects import KEEP_MANIFESTS
from scorebeater.storage.quarantine import QuarantineEntry
from tests.contract.test_storage import features
from tests.services.storage import BACKENDS, config_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

FAST = LeadershipConfig(lease_ttl_s=1.0, poll_s=0.1)


@pytest.fixture(name="backend_config", params=BACKENDS)
def _backend_config(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageConfig:
    return config_for(request.param, request, tmp_path, monkeypatch, batch_rows=64, name="lead")


@contextlib.asynccontextmanager
async def migrated(cfg: StorageConfig) -> AsyncIterator[None]:
    """The store exists (Postgres: schema migrated, with the ``leadership`` row)."""
    async with open_storage(cfg):
        yield


async def test_one_leader_and_terms_grow(backend_config: StorageConfig) -> None:
    async with (
        migrated(backend_config),
        open_elector(backend_config, FAST) as first,
        open_elector(backend_config, FAST) as second,
    ):
        assert await probe_holder(backend_config) is None
        token = await first.try_acquire()
        assert token is not None
        assert first.token == token
        assert await first.try_acquire() == token  # idempotent
        described = await probe_holder(backend_config)
        assert described is not None
        assert f"pid {os.getpid()}" in described
        assert f"term {token}" in described
        if backend_config.backend == "local":
            with pytest.raises(LeadershipHeld, match=f"pid {os.getpid()}"):
                await second.try_acquire()
        else:
            assert await second.try_acquire() is None
        await first.release()
        await first.release()  # idempotent
        assert await probe_holder(backend_config) is None
        assert await asyncio.wait_for(second.acquire(), 5) == token + 1


async def test_postgres_session_end_hands_over(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's session ended by the server (a dead or partitioned leader): the standby
    takes over within a poll and the old leader's ``hold`` raises ``LeadershipLost``."""
    cfg = config_for("postgres", request, tmp_path, monkeypatch, name="lead")
    async with migrated(cfg), open_elector(cfg, FAST) as leader, open_elector(cfg, FAST) as standby:
        token = await leader.acquire()
        holding = asyncio.ensure_future(leader.hold())
        waiting = asyncio.ensure_future(standby.acquire())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert cfg.postgres.dsn is not None
        admin = await asyncpg.connect(cfg.postgres.dsn.get())
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'scorebeater-leader' AND pid <> pg_backend_pid()"
                " AND backend_start = (SELECT min(backend_start) FROM pg_stat_activity"
                " WHERE application_name = 'scorebeater-leader')"
            )
        finally:
            await admin.close()
        assert ended == 1
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(holding, 5)
        assert leader.lost.is_set()
        assert await asyncio.wait_for(waiting, 5) == token + 1


async def test_postgres_fences_a_reused_term_and_ends_an_old_leaders_stuck_write(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A term number that another leader won too (as after a failover that lost the bump) or
    that moved backwards fences the writer; a new leader ends an old leader's transaction that
    is stuck holding row locks (paused mid-write), so its own writes of the same keys go on."""
    cfg = config_for("postgres", request, tmp_path, monkeypatch, name="lead")
    assert cfg.postgres.dsn is not None
    table = f'"{cfg.postgres.schema}"'
    async with migrated(cfg), open_storage(cfg) as old, open_elector(cfg, FAST) as first:
        old_term = await first.acquire()
        await old.set_fencing_token(old_term, nonce=first.nonce)
        await old.put_checkpoint("features.2024", b"old")
        admin = await asyncpg.connect(cfg.postgres.dsn.get())
        try:
            # The same number, another leader's nonce: not ours.
            await admin.execute(f"UPDATE {table}.leadership SET nonce = 'someone-else' WHERE id = 1")  # noqa: S608 - the test's own schema
            with pytest.raises(Fenced):
                await old.put_checkpoint("features.2024", b"stale")
            # Back to ours, but the number moved backwards: not ours either.
            await admin.execute(
                f"UPDATE {table}.leadership SET nonce = $1, term = term - 1 WHERE id = 1",  # noqa: S608
                first.nonce,
            )
            with pytest.raises(Fenced):
                await old.put_checkpoint("features.2024", b"stale")
            await admin.execute(f"UPDATE {table}.leadership SET term = term + 1 WHERE id = 1")  # noqa: S608 - the test's own schema
            await old.put_checkpoint("features.2024", b"ours again")

            # The old leader, paused inside a write: its transaction holds the checkpoint row.
            stuck = await asyncpg.connect(cfg.postgres.dsn.get())
            await stuck.execute("BEGIN")
            await stuck.execute("SELECT set_config('application_name', $1, true)", first.nonce)
            await stuck.execute(f"UPDATE {table}.checkpoints SET value = 'x' WHERE name = 'features.2024'")  # noqa: S608 - the test's own schema
            await first.release()
            async with open_storage(cfg) as new, open_elector(cfg, FAST) as second:
                new_term = await asyncio.wait_for(second.acquire(), 5)
                await new.set_fencing_token(new_term, nonce=second.nonce)
                # Without ending the stuck session this would wait for the old process.
                await asyncio.wait_for(new.put_checkpoint("features.2024", b"new"), 5)
                assert await new.get_checkpoint("features.2024") == b"new"
            assert stuck.is_closed() or not await _alive(stuck)
        finally:
            await admin.close()


async def _alive(conn: asyncpg.Connection[asyncpg.Record]) -> bool:
    try:
        await asyncio.wait_for(conn.fetchval("SELECT 1"), 2)
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError):
        return False
    finally:
        conn.terminate()
    return True


@pytest.mark.parametrize("backend", ["postgres", "s3"])
async def test_silent_leader_loses_its_lease(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leader that stops renewing (paused) is replaced after ``lease_ttl_s``; when it wakes,
    its renewal finds the lease gone."""
    cfg = config_for(backend, request, tmp_path, monkeypatch, name="lead")
    async with migrated(cfg), open_elector(cfg, FAST) as leader, open_elector(cfg, FAST) as standby:
        token = await leader.acquire()  # and never renews: as if SIGSTOPped
        started = time.monotonic()
        assert await asyncio.wait_for(standby.acquire(), 10) == token + 1
        elapsed = time.monotonic() - started
        assert FAST.lease_ttl_s * 0.9 <= elapsed <= FAST.lease_ttl_s + FAST.poll_s + 1.5
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(leader.hold(), 10)


async def _never_started(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("the embedded servers were started")


async def test_local_holder_killed_frees_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flock`` dies with its process: a SIGKILLed holder never blocks the next one."""
    cfg = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    script = (
        "import asyncio, pathlib, sys\n"
        "from scorebeater.config import LeadershipConfig, LocalStorageConfig, StorageConfig\n"
        "from scorebeater.leadership import open_elector\n"
        "async def main():\n"
        "    root = pathlib.Path(sys.argv[1])\n"
        "    cfg = StorageConfig(backend='local', local=LocalStorageConfig(root=root))\n"
        "    async with open_elector(cfg, LeadershipConfig()) as e:\n"
        "        print('TERM', await e.try_acquire(), flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "store")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"TERM"):  # its log goes to stdout too
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, "the holder exited"
        assert line.split() == [b"TERM", b"1"]
        described = await probe_holder(cfg)
        assert described is not None
        assert f"pid {proc.pid}" in described
        async with open_elector(cfg, FAST) as elector:
            with pytest.raises(LeadershipHeld, match=f"stop pid {proc.pid} first"):
                await elector.try_acquire()
        # A daemon refuses before it starts its embedded servers, whose ports would clash
        # first beside a running daemon and hide the reason.
        monkeypatch.setattr(daemon, "_embedded_services", _never_started)
        with pytest.raises(LeadershipHeld, match=f"stop pid {proc.pid} first"):
            async with open_daemon(Config(storage=cfg), elect=True):
                pass
        proc.kill()
        proc.wait(10)
        assert await probe_holder(cfg) is None
        async with open_elector(cfg, FAST) as elector:
            assert await elector.try_acquire() == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_a_local_holder_whose_lock_file_was_deleted_loses_the_lead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting ``.lock`` by hand lets another process lock a new file: the old holder notices
    (its file is no longer the one at the path) and gives up instead of leading beside it."""
    monkeypatch.setattr("scorebeater.leadership.local.HOLD_CHECK_S", 0.05)
    cfg = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    async with open_elector(cfg, FAST) as first, open_elector(cfg, FAST) as second:
        assert await first.try_acquire() == 1
        holding = asyncio.create_task(first.hold())
        await asyncio.sleep(0.1)
        assert not holding.done()
        (tmp_path / "store" / ".lock").unlink()
        assert await second.try_acquire() == 1  # a new file: its terms restart (fence_storage)
        with pytest.raises(LeadershipLost, match="deleted or replaced"):
            await asyncio.wait_for(holding, 5)
        assert first.lost.is_set()
        with pytest.raises(LeadershipLost):
            await first.advance(5)


async def test_fenced_commit_is_rejected_and_changes_nothing(backend_config: StorageConfig) -> None:
    """The old leader's token after a newer term has claimed the store: every kind of write
    is rejected with ``Fenced`` and the store keeps the new leader's state."""
    async with (
        open_storage(backend_config) as old,
        open_storage(backend_config) as new,
        open_elector(backend_config, FAST) as first,
        open_elector(backend_config, FAST) as second,
    ):
        old_term = await asyncio.wait_for(first.acquire(), 10)
        await old.set_fencing_token(old_term)
        await old.write_features(features([(1, 2024, 1)]), checkpoint=("features.2024", b"old"))
        await first.release()  # as if its lease had run out: it still believes it leads
        new_term = await asyncio.wait_for(second.acquire(), 10)
        assert new_term == old_term + 1
        await new.set_fencing_token(new_term)
        await new.write_features(features([(2, 2024, 1)]), checkpoint=("features.2024", b"new"))
        with pytest.raises(Fenced) as caught:
            await old.write_features(features([(3, 2024, 1)]), checkpoint=("features.2024", b"stale"))
        assert (caught.value.token, caught.value.current) == (old_term, new_term)
        with pytest.raises(Fenced):
            await old.put_checkpoint("features.2024", b"stale")
        with pytest.raises(Fenced):
            await old.cache.put(1, {"a" * 64: 0.5})
        await new.cache.put(1, {"b" * 64: 0.25})
        with pytest.raises(Fenced):
            await old.cache.clear()
        with pytest.raises(Fenced):
            await old.quarantine.put([QUARANTINED])
        assert await new.quarantine.entries() == []
        assert await new.cache.get(1, ["b" * 64]) == {"b" * 64: 0.25}
        # The store is the new leader's.
        assert await new.get_checkpoint("features.2024") == b"new"
        tables = [t async for t in new.read_feature_history()]
        assert sorted(p for t in tables for p in t["player_id"].to_pylist()) == [1, 2]
        assert await new.cache.get(1, ["a" * 64]) == {}
        # The new leader goes on writing; unfenced readers see it.
        await new.put_checkpoint("features.2024", b"newer")
        assert await old.get_checkpoint("features.2024") == b"newer"


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_a_leader_whose_term_is_behind_the_store_moves_it_past(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest records term 5 but the election restarts at 1 (the S3 lease object or
    the lock file was deleted by hand): the new leader moves its term to 6 once instead of
    being fenced (and restarted) until the terms catch up."""
    cfg = config_for(backend, request, tmp_path, monkeypatch, batch_rows=64, name="behind")
    async with open_storage(cfg) as earlier:
        await earlier.set_fencing_token(5)
    async with (
        open_storage(cfg) as storage,
        open_storage(cfg) as stale,
        open_elector(cfg, FAST) as first,
        open_elector(cfg, FAST) as second,
    ):
        assert await asyncio.wait_for(first.acquire(), 10) == 1
        assert await fence_storage(storage, first, 1) == 6
        assert first.token == 6
        assert "term 6" in str(await probe_holder(cfg))
        await storage.put_checkpoint("features.2024", b"term 6")
        with pytest.raises(Fenced):
            await stale.set_fencing_token(5)
        await first.release()
        assert await asyncio.wait_for(second.acquire(), 10) == 7  # the next term goes on from there


async def test_a_long_paused_leader_is_fenced_after_its_base_manifest_was_pruned(
    backend_config: StorageConfig,
) -> None:
    """The successor commits more generations than the object stores keep, so the paused
    leader's next generation name is free again (pruned): its commit must still be fenced, and
    the store keep the successor's state."""
    async with (
        open_storage(backend_config) as old,
        open_storage(backend_config) as new,
        open_elector(backend_config, FAST) as first,
        open_elector(backend_config, FAST) as second,
    ):
        old_term = await asyncio.wait_for(first.acquire(), 10)
        await old.set_fencing_token(old_term)
        await old.put_checkpoint("features.2024", b"old")
        await first.release()
        new_term = await asyncio.wait_for(second.acquire(), 10)
        await new.set_fencing_token(new_term)
        for i in range(KEEP_MANIFESTS + 3):
            await new.put_checkpoint("features.2024", f"new-{i}".encode())
        with pytest.raises(Fenced):
            await old.put_checkpoint("features.2024", b"stale")
        with pytest.raises(Fenced):
            await old.write_features(features([(3, 2024, 1)]), checkpoint=("features.2024", b"stale"))
        assert await new.get_checkpoint("features.2024") == f"new-{KEEP_MANIFESTS + 2}".encode()
        assert [t async for t in new.read_feature_history()] == []


QUARANTINED = QuarantineEntry(
    kind="box_score",
    key="201400001",
    season=2014,
    reason="unknown_game",
    detail="asked for one game, got another",
    payload=b'{"game_id": "other"}',
    first_seen=dt.datetime(2014, 11, 2, 2, 30, tzinfo=dt.UTC),
    last_seen=dt.datetime(2014, 11, 2, 2, 30, tzinfo=dt.UTC),
    state="open",
)


# --- the daemon's roles ------------------------------------------------------------------------


def daemon_config(storage: StorageConfig) -> Config:
    """A daemon whose upstreams do not answer (its stages fail and back off): only the roles
    matter here, and the admin API on a free port."""
    return Config(
        score_api=ScoreApiConfig(base_url="http://127.0.0.1:9", max_attempts=1, retry_budget_s=1.0),
        tfserving=TFServingConfig(base_url="http://127.0.0.1:9", max_attempts=1, retry_budget_s=1.0),
        storage=storage,
        # Each failing stage logs its traceback once, then backs off past the test's end.
        scheduler=SchedulerConfig(
            seasons=(2014,), shutdown_grace_s=2.0, backoff_initial_s=300.0, backoff_max_s=300.0
        ),
        admin=AdminConfig(host="127.0.0.1", port=0),
        # A longer lease than FAST: the failing stages' tracebacks take the loop a while to log.
        leadership=LeadershipConfig(lease_ttl_s=5.0, poll_s=0.1),
    )


async def readyz(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, Any]:
    async with http.get(f"{daemon.admin_url}/readyz") as resp:
        body: dict[str, dict[str, Any]] = await resp.json()
    return body["leadership"]


async def leader_gauge(http: aiohttp.ClientSession, daemon: Daemon) -> str:
    async with http.get(f"{daemon.admin_url}/metrics") as resp:
        text = await resp.text()
    return next(line for line in text.splitlines() if line.startswith("scorebeater_leader{"))


async def wait_role(daemon: Daemon, role: str) -> None:
    assert daemon.leadership is not None
    async with asyncio.timeout(10):
        while daemon.leadership.role != role:
            await asyncio.sleep(0.02)


async def test_daemon_roles_readyz_metric_and_once(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two daemons on one Postgres store: one leads, the other stands by and says so on
    /readyz and /metrics; `once` refuses beside them; the standby leads once the leader stops."""
    # Plain tracebacks: the console's rich ones of the failing stages can stall the shared
    # event loop for seconds on a loaded machine, longer than the lease.
    structlog.configure(
        processors=[structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    cfg = daemon_config(config_for("postgres", request, tmp_path, monkeypatch, name="lead"))
    first_stop, second_stop = asyncio.Event(), asyncio.Event()
    async with (
        open_daemon(cfg, elect=True) as first,
        open_daemon(cfg, elect=True) as second,
        aiohttp.ClientSession() as http,
    ):
        first_task = asyncio.create_task(serve(first, first_stop))
        await wait_role(first, "leader")
        second_task = asyncio.create_task(serve(second, second_stop))
        try:
            await asyncio.wait_for(second.started.wait(), 10)
            assert await readyz(http, first) == {"role": "leader", "term": 1, "backend": "postgres"}
            assert await readyz(http, second) == {"role": "standby", "term": None, "backend": "postgres"}
            assert await leader_gauge(http, first) == 'scorebeater_leader{backend="postgres"} 1.0'
            assert await leader_gauge(http, second) == 'scorebeater_leader{backend="postgres"} 0.0'
            args = argparse.Namespace(cfg=cfg, data=None, config=None, stage="validation")
            with pytest.raises(LeadershipHeld, match="a daemon leads this store"):
                await once_command(args)
            first_stop.set()
            await asyncio.wait_for(first_task, 10)
            await wait_role(second, "leader")
            assert await readyz(http, second) == {"role": "leader", "term": 2, "backend": "postgres"}
            assert await leader_gauge(http, second) == 'scorebeater_leader{backend="postgres"} 1.0'
            # The old leader's storage still carries term 1: its commits are refused.
            with pytest.raises(Fenced, match="term 1, the store is at term 2"):
                await first.ctx.storage.put_checkpoint("features.2014", b"stale")
        finally:
            first_stop.set()
            second_stop.set()
            await asyncio.wait_for(asyncio.gather(first_task, second_task, return_exceptions=True), 20)


async def test_second_daemon_on_a_local_root_refuses_naming_the_holder(tmp_path: Path) -> None:
    cfg = daemon_config(StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")))
    cfg = dataclasses.replace(cfg, admin=AdminConfig(enabled=False))
    async with open_daemon(cfg, elect=True) as first:
        assert first.elector is not None
        assert first.elector.token == 1
        with pytest.raises(LeadershipHeld, match=f"stop pid {os.getpid()} first"):
            async with open_daemon(cfg, elect=True):
                pass
