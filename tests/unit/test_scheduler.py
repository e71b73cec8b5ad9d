"""Scheduler: pure time arithmetic, and the runner's failure isolation and coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from scorebeater.errors import FatalError
from scorebeater.metrics import Metrics
from scorebeater.scheduler import StageRunner, backoff_delay, missed_slots, next_cron
from scorebeater.testing.clock import FakeClock


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("*/15 * * * *", "2014-01-01T00:00:00", "2014-01-01T00:15:00"),
        ("*/15 * * * *", "2014-01-01T00:14:59", "2014-01-01T00:15:00"),
        ("0 4 * * *", "2014-01-01T04:00:00", "2014-01-02T04:00:00"),
        ("0 4 * * *", "2014-01-01T03:59:00", "2014-01-01T04:00:00"),
    ],
)
def test_next_cron(expr: str, after: str, expected: str) -> None:
    assert next_cron(expr, _t(after)) == _t(expected)


def test_next_cron_rejects_bad_expressions() -> None:
    with pytest.raises(ValueError, match="invalid cron"):
        next_cron("soon", _t("2014-01-01T00:00:00"))


def test_missed_slots() -> None:
    assert missed_slots("* * * * *", _t("2014-01-01T00:00:00"), _t("2014-01-01T00:00:30")) == 0
    assert missed_slots("* * * * *", _t("2014-01-01T00:00:00"), _t("2014-01-01T00:03:30")) == 3


@pytest.mark.parametrize(("failures", "expected"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0)])
def test_backoff_delay(failures: int, expected: float) -> None:
    assert backoff_delay(failures, 1.0, 60.0) == expected


class FnStage:
    """A stage made of one function, for the runner's own tests."""

    def __init__(self, name: str, fn: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        self.name = name
        self._fn = fn
        self.watermark: dict[str, Any] = {}

    async def run(self, run_id: str) -> dict[str, Any]:
        return await self._fn(run_id)

    def status(self) -> dict[str, Any]:
        return self.watermark


def _runs(metrics: Metrics, stage: str, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(
        "scorebeater_stage_runs_total", {"stage": stage, "outcome": outcome}
    )


async def _settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_a_failing_stage_backs_off_and_continues(metrics: Metrics) -> None:
    clock = FakeClock()
    calls = 0

    async def flaky(run_id: str) -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return {"n": calls}

    runner = StageRunner(
        FnStage("features", flaky),
        clock=clock,
        metrics=metrics,
        interval_s=10.0,
        run_at_start=True,
        backoff_initial_s=5.0,
    )
    task = asyncio.create_task(runner.serve())
    try:
        await _settle(5)
        assert calls == 1
        assert runner.state.state == "backing_off"
        assert runner.state.last_error == "RuntimeError: boom"
        await clock.advance(4.0)  # within the backoff
        assert calls == 1
        await clock.advance(1.0)  # the backoff has passed: retried at once, not a whole interval later
        assert calls == 2
        assert runner.state.consecutive_failures == 0
        assert _runs(metrics, "features", "error") == 1
        assert _runs(metrics, "features", "success") == 1
        runner.stop()
        await asyncio.wait_for(task, 1)
        assert runner.state.state == "stopped"
    finally:
        task.cancel()


async def test_stop_cuts_a_backoff_short(metrics: Metrics) -> None:
    """A stage waiting out a long backoff stops at once: no run was in flight to wait for."""
    clock = FakeClock()

    async def failing(run_id: str) -> dict[str, object]:
        raise RuntimeError("storage is read-only")

    runner = StageRunner(
        FnStage("features", failing), clock=clock, metrics=metrics, run_at_start=True, backoff_initial_s=300.0
    )
    task = asyncio.create_task(runner.serve())
    await _settle()
    assert runner.state.state == "backing_off"
    runner.stop()
    # The fake clock never moves: only stop() can end the 300 s wait.
    await asyncio.wait_for(task, 1)
    assert runner.state.state == "stopped"
    assert runner.state.runs == 1


async def test_a_failure_inside_a_task_group_is_reported_by_its_cause(metrics: Metrics) -> None:
    """Status names the real error, not ``ExceptionGroup: unhandled errors in a TaskGroup``."""

    async def write() -> None:
        raise OSError(30, "Read-only file system")

    async def grouped(run_id: str) -> dict[str, object]:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(write())
        return {}

    runner = StageRunner(FnStage("predictions", grouped), clock=FakeClock(), metrics=metrics)
    with pytest.raises(ExceptionGroup):
        await runner.run_once()
    assert runner.status()["last_error"] == "OSError: [Errno 30] Read-only file system"


async def test_status_is_the_runner_state_with_the_stage_watermark(metrics: Metrics) -> None:
    async def noop(run_id: str) -> dict[str, object]:
        return {"rows": 3}

    stage = FnStage("features", noop)
    stage.watermark = {"2014": {"games_processed": 7}}
    runner = StageRunner(stage, clock=FakeClock(), metrics=metrics)
    await runner.run_once()
    status = runner.status()
    assert status["runs"] == 1
    assert status["last_result"] == {"rows": 3}
    assert status["watermark"] == {"2014": {"games_processed": 7}}


async def test_triggers_coalesce_and_runs_never_overlap(metrics: Metrics) -> None:
    clock = FakeClock()
    running = 0
    max_running = 0
    runs = 0
    gate = asyncio.Event()

    async def slow(run_id: str) -> dict[str, object]:
        nonlocal running, max_running, runs
        running += 1
        max_running = max(max_running, running)
        await gate.wait()
        running -= 1
        runs += 1
        return {}

    runner = StageRunner(FnStage("predictions", slow), clock=clock, metrics=metrics)
    task = asyncio.create_task(runner.serve())
    try:
        runner.trigger()
        await _settle(5)
        assert running == 1
        for _ in range(3):
            runner.trigger()  # three triggers while running make one follow-up run
        gate.set()
        await _settle()
        assert runs == 2
        assert max_running == 1
        runner.stop()
        await asyncio.wait_for(task, 1)
    finally:
        task.cancel()


async def test_runners_sharing_a_lock_never_overlap(metrics: Metrics) -> None:
    """The prediction and refeed stages share one lock: a refeed waits for a diff run."""
    clock = FakeClock()
    running: list[str] = []
    overlaps = 0
    gate = asyncio.Event()

    def stage(name: str) -> FnStage:
        async def run(run_id: str) -> dict[str, object]:
            nonlocal overlaps
            overlaps += bool(running)
            running.append(name)
            await gate.wait()
            running.remove(name)
            return {}

        return FnStage(name, run)

    lock = asyncio.Lock()
    a = StageRunner(stage("predictions"), clock=clock, metrics=metrics, lock=lock)
    b = StageRunner(stage("refeed"), clock=clock, metrics=metrics, lock=lock)
    tasks = [asyncio.create_task(a.serve()), asyncio.create_task(b.serve())]
    try:
        a.trigger()
        b.trigger()
        await _settle()
        assert running == ["predictions"]  # the refeed waits for the lock
        gate.set()
        await _settle()
        assert a.state.runs == b.state.runs == 1
        assert overlaps == 0
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 1)


async def test_fatal_errors_propagate(metrics: Metrics) -> None:
    async def fatal(run_id: str) -> dict[str, object]:
        raise FatalError("config is wrong")

    runner = StageRunner(FnStage("validation", fatal), clock=FakeClock(), metrics=metrics, run_at_start=True)
    with pytest.raises(FatalError):
        await asyncio.wait_for(runner.serve(), 1)


async def test_a_failed_trigger_only_stage_is_retried_after_its_backoff(metrics: Metrics) -> None:
    clock = FakeClock()
    calls = 0

    async def flaky(run_id: str) -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model server not ready")
        return {}

    runner = StageRunner(FnStage("predictions", flaky), clock=clock, metrics=metrics, backoff_initial_s=5.0)
    task = asyncio.create_task(runner.serve())
    try:
        runner.trigger()
        await _settle(10)
        assert calls == 1
        await clock.advance(5.0)  # the backoff, and no other trigger
        assert calls == 2
        assert runner.state.state == "idle"
    finally:
        runner.stop()
        await asyncio.wait_for(task, 1)
