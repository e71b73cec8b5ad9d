"""Active/standby replicas: three ``scorebeater run`` processes over one store (Postgres, S3).

Real parts: the replay Score API over the real 2014 season and the TF Serving stand-in run in
this test (the test moves the replay clock); each replica is a real ``scorebeater run``
process with a short lease (``lease_ttl_s = 2``, ``poll_s = 0.25``). Scenario:

1. mid-season, replica A starts and leads; B and C start as standbys;
2. A stops (SIGSTOP) right as it begins a commit, through the ``storage.commit`` failpoint
   (:mod:`scorebeater.failpoints`: a signal sent from outside lands mid-commit only by
   luck); B takes over within ``lease_ttl_s + poll_s`` (plus process slack) and goes on from
   A's checkpoints;
3. A is SIGCONTed: its commit goes on and the store rejects it (fencing); A exits with an
   error, having written nothing more;
4. the season moves on; once B has committed some of it, B is SIGKILLed: C takes over within
   the same bound;
5. the season ends; C catches up and is stopped with SIGTERM (exit 0);
6. the store holds exactly what an uninterrupted single daemon stores (probabilities to
   float32 precision).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from scorebeater import failpoints
from scorebeater.config import StorageConfig
from scorebeater.errors import Fenced
from scorebeater.leadership import probe_holder
from scorebeater.storage import open_storage
from scorebeater.testing.daemon_process import (
    checkpoint,
    compare,
    log_tail,
    snapshot,
    start_daemon,
    stop,
    wait_for,
    write_config,
)
from tests.integration.daemon_support import (
    SEASON,
    Services,
    reference,
    season_services,  # noqa: F401 - the services fixture
)
from tests.services.storage import config_for

pytestmark = pytest.mark.slow

LEASE_TTL_S = 2.0
POLL_S = 0.25
TAKEOVER_SLACK_S = 5.0
"""Beyond ``lease_ttl_s + poll_s``: the standby's own commit of its term and a loaded CI box."""


@dataclass
class Replica:
    name: str
    config: Path
    proc: subprocess.Popen[bytes]

    def log(self) -> str:
        return self.config.with_suffix(".log").read_text(errors="replace")


def start_replica(
    name: str, tmp_path: Path, services: Services, storage: StorageConfig, *, pause_file: Path | None = None
) -> Replica:
    """A ``scorebeater run`` replica; with ``pause_file``, it stops itself at the first commit
    it begins once that file exists."""
    config = tmp_path / f"{name}.toml"
    env = write_config(
        config,
        score_api_url=services.replay.url,
        model_url=services.model_url,
        storage=storage,
        season=SEASON,
        leadership=f'lease_ttl_s = {LEASE_TTL_S}\npoll_s = {POLL_S}\nholder_id = "{name}"\n',
    )
    if pause_file is not None:
        env[failpoints.ENV] = f"storage.commit=stop:{pause_file}"
    return Replica(name, config, start_daemon(config, env))


async def wait_stopped(replica: Replica, *, timeout_s: float) -> float:
    """Wait until the replica's process is stopped (state ``T``); return when (monotonic)."""
    stat = Path(f"/proc/{replica.proc.pid}/stat")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The state is the field after the parenthesised command name.
        if stat.read_text().rpartition(")")[2].split()[0] == "T":
            return time.monotonic()
        if replica.proc.poll() is not None:
            raise AssertionError(f"{replica.name} exited:\n{log_tail(replica.config)}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.name} did not stop within {timeout_s} s:\n{log_tail(replica.config)}")


async def commit_as(storage: StorageConfig, term: int) -> None:
    """A checkpoint commit carrying leadership term ``term`` (the object stores already refuse
    to take the term on, their manifest being at a newer one)."""
    async with open_storage(storage) as stale:
        await stale.set_fencing_token(term)
        await stale.put_checkpoint(f"features.{SEASON}", b"{}")


def leading_term(log: str) -> int:
    """The term a replica's log says it won (its last ``leadership.acquired`` event)."""
    terms = [
        int(orjson.loads(line)["term"])
        for line in log.splitlines()
        if '"leadership.acquired"' in line and line.startswith("{")
    ]
    assert terms, "the replica never led"
    return terms[-1]


async def wait_log(replica: Replica, event: str, *, timeout_s: float) -> float:
    """Wait until ``event`` is in the replica's log; return when (monotonic)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if event in replica.log():
            return time.monotonic()
        if replica.proc.poll() is not None:
            raise AssertionError(
                f"{replica.name} exited with {replica.proc.returncode}:\n{log_tail(replica.config)}"
            )
        await asyncio.sleep(0.05)
    raise AssertionError(f"{replica.name}: no {event} within {timeout_s} s:\n{log_tail(replica.config)}")


async def next_leader(standbys: list[Replica]) -> tuple[Replica, float]:
    """The first of ``standbys`` to lead (either may win), and when (monotonic)."""
    deadline = time.monotonic() + LEASE_TTL_S + POLL_S + TAKEOVER_SLACK_S
    while time.monotonic() < deadline:
        for replica in standbys:
            if "daemon.leading" in replica.log():
                others = [r for r in standbys if r is not replica]
                assert not any("daemon.leading" in r.log() for r in others), "two leaders at once"
                return replica, time.monotonic()
        await asyncio.sleep(0.05)
    tails = "\n".join(f"{r.name}:\n{log_tail(r.config)}" for r in standbys)
    raise AssertionError(f"no standby took over:\n{tails}")


async def processed(storage: StorageConfig) -> int:
    value = await checkpoint(storage, f"features.{SEASON}")
    return 0 if value is None else len(value["processed"])


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["postgres", "s3"])
async def test_replicas_fail_over_and_store_what_one_daemon_does(
    backend: str,
    services: Services,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = config_for(backend, request, tmp_path, monkeypatch, batch_rows=5_000, name="replicas")
    want = await reference(services, tmp_path)

    # 1. A leads mid-season; B and C stand by.
    services.replay.clock.set(services.mid_season)
    pause_a = tmp_path / "pause-a"
    replicas = [start_replica("a", tmp_path, services, storage, pause_file=pause_a)]
    a = replicas[0]
    try:
        await wait_log(a, "daemon.leading", timeout_s=60)
        b = start_replica("b", tmp_path, services, storage)
        c = start_replica("c", tmp_path, services, storage)
        replicas += [b, c]
        await wait_for(
            storage,
            f"features.{SEASON}",
            lambda v: len(v["processed"]) > 0,
            timeout_s=60,
            proc=a.proc,
            config=a.config,
        )
        await wait_log(b, "daemon.standby", timeout_s=60)
        await wait_log(c, "daemon.standby", timeout_s=60)
        holder = await probe_holder(storage)
        assert holder is not None
        assert f"pid {a.proc.pid}" in holder

        # 2. A stops as it begins its next commit (new games give it one) and stays stopped
        # beyond its lease: a standby (call it B) takes over.
        pause_a.touch()
        services.replay.clock.set(services.mid_season + dt.timedelta(days=2))
        paused = await wait_stopped(a, timeout_s=60)
        b, took_over = await next_leader([b, c])
        c = next(r for r in replicas[1:] if r is not b)
        assert took_over - paused <= LEASE_TTL_S + POLL_S + TAKEOVER_SLACK_S

        # 3. A wakes up inside that commit: the store rejects it (the commit runs to its end
        # even when A's stages are cancelled on noticing the loss), and A exits with an error.
        a.proc.send_signal(signal.SIGCONT)
        assert await asyncio.to_thread(a.proc.wait, 30) == 1
        assert "commit rejected by fencing" in a.log(), log_tail(a.config)
        # Any later commit of A's term is rejected too.
        with pytest.raises(Fenced):
            await commit_as(storage, leading_term(a.log()))

        # 4. The season moves on; B commits some of it and is killed: C takes over.
        before = await processed(storage)
        services.replay.clock.set(services.mid_season + dt.timedelta(days=40))
        await wait_for(
            storage,
            f"features.{SEASON}",
            lambda v: len(v["processed"]) > before,
            timeout_s=60,
            proc=b.proc,
            config=b.config,
        )
        stop(b.proc, signal.SIGKILL)
        killed = time.monotonic()
        winner, took_over = await next_leader([c])
        assert winner is c
        assert took_over - killed <= LEASE_TTL_S + POLL_S + TAKEOVER_SLACK_S

        # 5. The season ends; C catches up.
        services.replay.clock.set(services.season_end)
        await wait_for(
            storage,
            f"features.{SEASON}",
            lambda v: bool(v["complete"]),
            timeout_s=120,
            proc=c.proc,
            config=c.config,
        )
        await wait_for(
            storage,
            f"validation.{SEASON}",
            lambda v: bool(v.get("final")),
            timeout_s=60,
            proc=c.proc,
            config=c.config,
        )
        stop(c.proc)
        assert c.proc.returncode == 0, log_tail(c.config)
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGCONT)
            stop(replica.proc, signal.SIGKILL)

    # 6. What one uninterrupted daemon stores.
    got = await snapshot(storage, SEASON)
    assert len(want["features"]) > 10_000
    assert compare(want, got) == {"identical": True, "lost": 0, "duplicated": 0}
