"""Commits run to their end when the caller is cancelled (storage.inflight), and the failpoint
switch that the replica test uses to pause a process right before a commit (failpoints).

The real SIGSTOP of the ``stop`` action is exercised by tests/integration/test_replicas.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scorebeater import failpoints
from scorebeater.errors import FatalError, Fenced
from scorebeater.storage.inflight import InFlight


async def test_a_cancelled_caller_stops_waiting_and_the_commit_lands() -> None:
    inflight = InFlight("test")
    started, release = asyncio.Event(), asyncio.Event()
    landed: list[str] = []

    async def commit() -> str:
        started.set()
        await release.wait()
        landed.append("rows")
        return "done"

    caller = asyncio.create_task(inflight.run("write", commit))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert landed == []  # the caller got out at once; the commit is still running
    release.set()
    with capture_logs() as logs:
        await inflight.drain()
    assert landed == ["rows"]
    assert [(e["event"], e["outcome"]) for e in logs if e["event"] == "storage.commit_after_cancel"] == [
        ("storage.commit_after_cancel", "landed")
    ]


async def test_a_later_commit_waits_for_an_abandoned_one() -> None:
    """Order is kept: a checkpoint written by the next commit is never overtaken by an earlier
    commit whose caller was cancelled."""
    inflight = InFlight("test")
    started, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        started.set()
        await release.wait()
        order.append("first")

    async def second() -> None:
        order.append("second")

    caller = asyncio.create_task(inflight.run("write", first))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    later = asyncio.create_task(inflight.run("write", second))
    await asyncio.sleep(0.01)
    assert order == []  # the later commit has not begun
    release.set()
    await later
    assert order == ["first", "second"]


async def test_a_fenced_commit_after_cancel_is_logged_not_raised() -> None:
    inflight = InFlight("test")
    started = asyncio.Event()

    async def commit() -> None:
        started.set()
        await asyncio.sleep(0.01)
        raise Fenced(3, 4)

    caller = asyncio.create_task(inflight.run("write", commit))
    await started.wait()
    caller.cancel()
    with capture_logs() as logs:
        with pytest.raises(asyncio.CancelledError):
            await caller
        await inflight.drain()
    [event] = [e for e in logs if e["event"] == "storage.commit_after_cancel"]
    assert event["outcome"] == "fenced"
    assert "commit rejected by fencing" in event["error"]
    assert (event["term"], event["store_term"]) == (3, 4)


async def test_an_awaited_commit_raises_to_its_caller_and_drain_has_nothing_to_do() -> None:
    inflight = InFlight("test")

    async def commit() -> None:
        raise Fenced(1, 2)

    with pytest.raises(Fenced):
        await inflight.run("write", commit)
    with capture_logs() as logs:
        await inflight.drain()
    assert logs == []


async def test_drain_gives_up_after_its_timeout() -> None:
    inflight = InFlight("test")
    started = asyncio.Event()

    async def commit() -> None:
        started.set()
        await asyncio.sleep(3600)

    caller = asyncio.create_task(inflight.run("write", commit))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    with capture_logs() as logs:
        await inflight.drain(timeout_s=0.05)
    events = {e["event"]: e for e in logs}
    assert events["storage.commits_cancelled"]["commits"] == 1
    assert events["storage.commit_after_cancel"]["outcome"] == "cancelled"


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("storage.comit=stop:/tmp/x", "unknown failpoint 'storage.comit'"),
        ("storage.commit=panic", "must be 'stop:PATH'"),
        ("storage.commit=stop:", "must be 'stop:PATH'"),
    ],
)
def test_a_malformed_failpoint_fails_at_start_up(
    spec: str, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(failpoints.ENV, spec)
    with pytest.raises(FatalError, match=named):
        failpoints.check()


def test_an_armed_failpoint_without_its_trigger_file_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(failpoints.ENV, f"storage.commit=stop:{tmp_path / 'pause'}")
    failpoints.check()
    failpoints.hit("storage.commit")  # no file: no SIGSTOP (this test would hang otherwise)
    monkeypatch.delenv(failpoints.ENV)
    (tmp_path / "pause").touch()
    failpoints.hit("storage.commit")  # disarmed: the file is left alone
    assert (tmp_path / "pause").exists()


async def test_drain_without_a_limit_waits_for_abandoned_commits_only() -> None:
    """The features stage's reload waits for abandoned commits, never cancelling them, and
    never for a commit whose caller is still waiting (another stage's)."""
    inflight = InFlight("test")
    abandoned_started, waited_started = asyncio.Event(), asyncio.Event()
    release_abandoned, release_waited = asyncio.Event(), asyncio.Event()

    async def abandoned() -> None:
        abandoned_started.set()
        await release_abandoned.wait()

    async def waited() -> None:
        waited_started.set()
        await release_waited.wait()

    cancelled = asyncio.create_task(inflight.run("write", abandoned))
    await abandoned_started.wait()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    other = asyncio.create_task(inflight.run("other stage", waited))
    draining = asyncio.create_task(inflight.drain(timeout_s=None))
    await asyncio.sleep(0.05)
    assert not draining.done()
    assert not waited_started.is_set()  # a new commit begins only after the abandoned one
    release_abandoned.set()
    await asyncio.wait_for(draining, 1)  # done although "other stage" still runs
    await waited_started.wait()
    assert not other.done()
    release_waited.set()
    await other
