"""The faults, one function each: each drives a real daemon process to the end of the season.

Every function starts the daemon, injects its fault, lifts it, and returns the recovery time:
seconds from the moment the fault was lifted (the restart, the server back, the disk freed) to
the season being done. Chaos faults stay on for the whole run, so theirs is the whole run.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path

from faults.harness import BACKENDS, Fault, Run, RunFailed
from scorebeater.testing.postgres import restart_postgres
from scorebeater.testing.score_api import Fault as ApiFault

OUTAGE_S = 3.0
"""How long a server stays down or a disk read-only."""

CHAOS = (
    ApiFault("status", status=500),
    ApiFault("status", status=503),
    ApiFault("status", status=429, headers={"Retry-After": "1"}),
    ApiFault("delay", delay_s=2.0),  # past the client's 1 s timeout
    ApiFault("truncated"),
    ApiFault("reset"),
)
"""Score API chaos: 5xx, 429 with Retry-After, timeouts, truncated JSON, connection resets."""


async def _finish(run: Run, lifted_at: float) -> float:
    await run.done()
    return time.monotonic() - lifted_at


async def sigkill(run: Run) -> float:
    """SIGKILL at a random point after the first commit (mid-write, on any backend), then restart."""
    rng = random.Random(run.seed)  # noqa: S311 - not crypto
    run.start()
    await run.first_commit()
    await asyncio.sleep(rng.uniform(0.0, 1.5))
    run.kill()
    run.start()
    return await _finish(run, time.monotonic())


def score_api_chaos(rate: float) -> Fault:
    """A share ``rate`` of Score API requests fail, each with a random kind of failure."""

    async def chaos(run: Run) -> float:
        run.world.replay.faults.chaos(rate, CHAOS, seed=run.seed)
        started = time.monotonic()
        run.start()
        return await _finish(run, started)

    return chaos


async def model_server_down(run: Run) -> float:
    """The model server stops after the first commit and comes back on its port."""
    run.start()
    await run.first_commit()
    await run.world.stop_model_server()
    await asyncio.sleep(OUTAGE_S)
    await run.world.start_model_server()
    return await _finish(run, time.monotonic())


async def postgres_restart(run: Run) -> float:
    """Postgres restarts (every connection dropped) while the daemon writes."""
    if run.world.pg_dsn is None:
        raise RunFailed("no Postgres cluster")
    rng = random.Random(run.seed)  # noqa: S311 - not crypto
    run.start()
    await run.first_commit()
    await asyncio.sleep(rng.uniform(0.0, 1.0))
    await asyncio.to_thread(restart_postgres, run.world.pg_dsn)
    return await _finish(run, time.monotonic())


async def s3_503_burst(run: Run) -> float:
    """Every S3 request gets ``503 SlowDown`` for a while after the first commit."""
    proxy = run.world.s3
    if proxy is None:
        raise RunFailed("no S3 proxy")
    run.start()
    await run.first_commit()
    proxy.failing = True
    try:
        await asyncio.sleep(OUTAGE_S)
    finally:
        proxy.failing = False
    return await _finish(run, time.monotonic())


def _mount(root: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root)], check=True)


MOUNT_FAILURE = 32
"""mount(8)'s exit status for a failed mount call (EBUSY among others)."""


def _remount(root: Path, options: str, *, attempts: int = 100) -> None:
    """Remount ``root`` with ``options``. Linux refuses a read-only remount (EBUSY, exit 32)
    while a file is open for writing, i.e. while the daemon is in the middle of a commit: try
    again shortly, the fault is meant to land between two writes or during a later one."""
    command = ["mount", "-o", f"remount,{options}", str(root)]
    for _ in range(attempts - 1):
        done = subprocess.run(command, check=False, capture_output=True)
        if done.returncode == 0:
            return
        if done.returncode != MOUNT_FAILURE:
            break
        time.sleep(0.05)
    subprocess.run(command, check=True)


def _tmpfs(run: Run, root: Path, size_bytes: int) -> None:
    """Mount a tmpfs of ``size_bytes`` on ``root`` until the run's store has been read."""
    _mount(root, f"size={max(size_bytes, 1 << 20)}")
    run.cleanups.append(lambda: _umount(root))


def _umount(root: Path) -> None:
    subprocess.run(["umount", "-l", str(root)], check=False)


def _store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def disk_full(run: Run) -> float:
    """The store's file system is too small for the season; it is grown after the daemon hits it."""
    root = run.storage.local.root
    needed = _store_bytes(run.world.scratch / "reference" / "store")
    _tmpfs(run, root, needed // 3)
    run.start()
    await run.until(lambda: _log_has(run, "No space left on device"), 120)
    _remount(root, f"size={needed * 4}")
    return await _finish(run, time.monotonic())


async def read_only(run: Run) -> float:
    """The store's file system turns read-only after the first commit, then writable again."""
    root = run.storage.local.root
    needed = _store_bytes(run.world.scratch / "reference" / "store")
    _tmpfs(run, root, needed * 4)
    run.start()
    await run.first_commit()
    _remount(root, "ro")
    await asyncio.sleep(OUTAGE_S)
    _remount(root, "rw")
    return await _finish(run, time.monotonic())


async def _log_has(run: Run, text: str) -> bool:
    log = run.config.with_suffix(".log")
    return log.exists() and text in log.read_text(errors="replace")


FAULTS: dict[str, tuple[Fault, tuple[str, ...]]] = {
    "sigkill": (sigkill, BACKENDS),
    "score-api-chaos-25": (score_api_chaos(0.25), BACKENDS),
    "score-api-chaos-50": (score_api_chaos(0.50), BACKENDS),
    "model-server-down": (model_server_down, BACKENDS),
    "postgres-restart": (postgres_restart, ("postgres",)),
    "s3-503-burst": (s3_503_burst, ("s3",)),
    "disk-full": (disk_full, ("local",)),
    "read-only": (read_only, ("local",)),
}
"""Each fault and the backends it applies to."""

QUICK: tuple[tuple[str, str], ...] = (
    ("sigkill", "local"),
    ("sigkill", "postgres"),
    ("sigkill", "s3"),
    ("score-api-chaos-25", "local"),
    ("model-server-down", "local"),
    ("postgres-restart", "postgres"),
    ("s3-503-burst", "s3"),
    ("disk-full", "local"),
    ("read-only", "local"),
)
"""The short version ``make test`` runs: every fault once (the Score API chaos at 25%: the same
failure kinds as at 50% in a quarter of the time), SIGKILL on every backend."""
