"""Scheduler: pure time arithmetic, and the runner's failure isolation and coalescing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from scorebeater.errors import FatalError
from scorebeater.metrics import Metrics
from scorebeater.scheduler import FakeClock, StageRunner, backoff_delay, missed_slots, next_cron


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
        "features", flaky, clock=clock, metrics=metrics, interval_s=10.0, backoff_initial_s=5.0
    )
    task = asyncio.create_task(runner.serve())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls == 1
        assert runner.state.state == "backing_off"
        assert runner.state.last_error == "RuntimeError: boom"
        await clock.advance(4.0)  # within the backoff
        assert calls == 1
        await clock.advance(1.0)  # the backoff has passed: retried at once, not a whole interval later
        assert calls == 2
        assert runner.state.consecutive_failures == 0
        assert metrics.stage_runs.labels("features", "error")._value.get() == 1
        assert metrics.stage_runs.labels("features", "success")._value.get() == 1
        runner.stop()
        await asyncio.wait_for(task, 1)
        assert runner.state.state == "stopped"
    finally:
        task.cancel()


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

    runner = StageRunner("predictions", slow, clock=clock, metrics=metrics)
    task = asyncio.create_task(runner.serve(run_immediately=False))
    try:
        runner.trigger()
        for _ in range(5):
            await asyncio.sleep(0)
        assert running == 1
        for _ in range(3):
            runner.trigger()  # three triggers while running make one follow-up run
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert runs == 2
        assert max_running == 1
        runner.stop()
        await asyncio.wait_for(task, 1)
    finally:
        task.cancel()


async def test_fatal_errors_propagate(metrics: Metrics) -> None:
    async def fatal(run_id: str) -> dict[str, object]:
        raise FatalError("config is wrong")

    runner = StageRunner("validation", fatal, clock=FakeClock(), metrics=metrics)
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

    runner = StageRunner("predictions", flaky, clock=clock, metrics=metrics, backoff_initial_s=5.0)
    task = asyncio.create_task(runner.serve(run_immediately=False))
    try:
        runner.trigger()
        for _ in range(10):
            await asyncio.sleep(0)
        assert calls == 1
        await clock.advance(5.0)  # the backoff, and no other trigger
        assert calls == 2
        assert runner.state.state == "idle"
    finally:
        runner.stop()
        await asyncio.wait_for(task, 1)
