"""The internal scheduler: an injectable clock, cron arithmetic, and one runner per stage.

A :class:`StageRunner` owns one :class:`Stage`. It waits for a trigger (an explicit
``trigger()`` from the stages' hand-off or the admin API, an interval, or a cron slot), runs
exactly one iteration under a lock (a stage never overlaps itself, nor any stage that shares
its lock), and on failure logs, counts, backs off and
continues: one stage's failure never stops the others. Triggers that arrive while a run is
in progress coalesce into one follow-up run; cron slots missed while running are skipped and
counted, never queued.

All waiting goes through a :class:`Clock` so tests drive time without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from croniter import croniter

from scorebeater.errors import FatalError
from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)


class Clock(Protocol):
    """Where the daemon reads time and waits. Wall time is tz-aware UTC."""

    def now(self) -> datetime:
        """Current wall time (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def next_cron(expr: str, after: datetime) -> datetime:
    """The first slot of cron ``expr`` strictly after ``after`` (UTC). Pure.

    Raises:
        ValueError: ``expr`` is not a valid cron expression.
    """
    if not croniter.is_valid(expr):
        raise ValueError(f"invalid cron expression {expr!r}")
    nxt: datetime = croniter(expr, after.astimezone(UTC)).get_next(datetime)
    return nxt.astimezone(UTC)


def missed_slots(expr: str, scheduled: datetime, now: datetime) -> int:
    """How many slots of ``expr`` fell strictly between ``scheduled`` and ``now``. Pure."""
    count = 0
    slot = next_cron(expr, scheduled)
    while slot < now and count < 10_000:  # noqa: PLR2004 - a sane upper bound for a count
        count += 1
        slot = next_cron(expr, slot)
    return count


def backoff_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff after ``failures`` consecutive failures (>= 1), capped. Pure."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, initial_s * 2 ** (failures - 1)))


@dataclass(slots=True)
class StageState:
    """A runner's own bookkeeping of its stage's runs (the runner half of ``GET /v1/status``)."""

    name: str
    state: str = "idle"  # idle | running | backing_off | stopped
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_started: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_run_id: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)
    next_scheduled: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "state": self.state,
            "runs": self.runs,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "last_started": iso(self.last_started),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "last_run_id": self.last_run_id,
            "last_result": self.last_result,
            "next_scheduled": iso(self.next_scheduled),
        }


class Stage(Protocol):
    """What a runner runs: one stage of the daemon."""

    name: str

    async def run(self, run_id: str) -> dict[str, Any]:
        """One iteration; gets the run id, returns a small JSON-able summary for status and logs.

        Raises:
            FatalError: the daemon must stop. Any other exception fails this run only.
        """
        ...

    def status(self) -> dict[str, Any]:
        """The stage's own state (watermarks, what it waits for), JSON-able; cheap, no I/O."""
        ...


def _describe(exc: BaseException) -> str:
    """One line naming the real cause: an exception group is unwrapped to its first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class StageRunner:
    """Runs one stage's iterations on triggers, an interval and/or a cron schedule."""

    def __init__(
        self,
        stage: Stage,
        *,
        clock: Clock,
        metrics: Metrics,
        interval_s: float | None = None,
        cron: str = "",
        run_at_start: bool = False,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        lock: asyncio.Lock | None = None,
    ) -> None:
        """``lock`` is shared by runners whose stages must never run at the same time."""
        self.name = stage.name
        self._stage = stage
        self._clock = clock
        self._metrics = metrics
        self._interval_s = interval_s
        self._cron = cron
        self._run_at_start = run_at_start
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._triggered = asyncio.Event()
        self._stopped = asyncio.Event()
        self._lock = lock or asyncio.Lock()
        self.state = StageState(self.name)
        self.completed = asyncio.Condition()
        """Notified after every iteration (success or failure); tests and the admin API wait on it."""

    def trigger(self) -> None:
        """Ask for a run as soon as possible; several triggers before it starts make one run."""
        self._triggered.set()

    def stop(self) -> None:
        """Stop starting new runs and cut a backoff wait short; an in-flight run continues
        (the daemon bounds it)."""
        self._stopped.set()
        self._triggered.set()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was called (read through a property: it changes across awaits)."""
        return self._stopped.is_set()

    def status(self) -> dict[str, Any]:
        """This runner's state with its stage's own under ``watermark`` (``GET /v1/status``)."""
        return {**self.state.as_dict(), "watermark": self._stage.status()}

    async def run_once(self) -> dict[str, Any]:
        """Run exactly one iteration now (waiting for an in-flight one first).

        Errors propagate to the caller after being logged and counted; ``FatalError``
        always propagates.
        """
        async with self._lock:
            return await self._iteration()

    async def _iteration(self) -> dict[str, Any]:
        run_id = uuid.uuid4().hex[:12]
        st = self.state
        st.state, st.last_started, st.last_run_id = "running", self._clock.now(), run_id
        self._metrics.stage_in_progress.labels(self.name).set(1)
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(stage=self.name, run_id=run_id):
            log.debug("stage.run_started")
            try:
                result = await self._stage.run(run_id)
            except Exception as exc:
                elapsed = time.perf_counter() - started
                st.runs += 1
                st.failures += 1
                st.consecutive_failures += 1
                st.last_error, st.last_error_at = _describe(exc), self._clock.now()
                st.state = "backing_off"
                self._metrics.stage_runs.labels(self.name, "error").inc()
                self._metrics.stage_duration.labels(self.name).observe(elapsed)
                log.exception("stage.run_failed", duration_s=round(elapsed, 4))
                raise
            finally:
                self._metrics.stage_in_progress.labels(self.name).set(0)
                async with self.completed:
                    self.completed.notify_all()
            elapsed = time.perf_counter() - started
            st.runs += 1
            st.consecutive_failures = 0
            st.last_success, st.last_result, st.state = self._clock.now(), result, "idle"
            self._metrics.stage_runs.labels(self.name, "success").inc()
            self._metrics.stage_duration.labels(self.name).observe(elapsed)
            self._metrics.stage_last_success.labels(self.name).set(time.time())
            # An idle poll every second would drown the log: idle runs are debug events.
            busy = any(v for k, v in result.items() if isinstance(v, int) and k != "model_version")
            (log.info if busy else log.debug)("stage.run_completed", duration_s=round(elapsed, 4), **result)
            return result

    def _next_deadline(self, after: datetime) -> datetime | None:
        deadlines = []
        if self._interval_s is not None:
            deadlines.append(after + timedelta(seconds=self._interval_s))
        if self._cron:
            deadlines.append(next_cron(self._cron, after))
        return min(deadlines) if deadlines else None

    async def _first(self, *waits: Awaitable[object]) -> None:
        """Wait until the first of ``waits`` completes; cancel the others."""
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _wait(self, deadline: datetime | None) -> None:
        """Wait until triggered or ``deadline`` passes."""
        if deadline is None:
            await self._triggered.wait()
            return
        delay = (deadline - self._clock.now()).total_seconds()
        if delay <= 0:
            return
        await self._first(self._clock.sleep(delay), self._triggered.wait())

    async def serve(self) -> None:
        """The stage's loop; returns after ``stop()`` once no run is in flight.

        Only ``FatalError`` escapes; every other failure is logged, counted and backed off.
        """
        deadline: datetime | None = (
            self._clock.now() if self._run_at_start else self._next_deadline(self._clock.now())
        )
        try:
            while not self._stopped.is_set():
                self.state.next_scheduled = deadline
                await self._wait(deadline)
                if self.stopping:  # stop() wakes the wait
                    break
                self._triggered.clear()
                scheduled = deadline
                try:
                    async with self._lock:
                        await self._iteration()
                except FatalError:
                    raise
                except Exception:  # noqa: BLE001 - logged and counted in _iteration; the loop must go on
                    delay = backoff_delay(
                        self.state.consecutive_failures, self._backoff_initial_s, self._backoff_max_s
                    )
                    log.warning("stage.backing_off", stage=self.name, delay_s=delay)
                    # A trigger (e.g. an admin request) does not cut the backoff short; stop() does.
                    await self._first(self._clock.sleep(delay), self._stopped.wait())
                    # Retry after the backoff: a trigger-driven stage (predictions) would otherwise
                    # sit on the work it failed to finish until something else woke it.
                    self._triggered.set()
                now = self._clock.now()
                if self._cron and scheduled is not None:
                    missed = missed_slots(self._cron, scheduled, now)
                    if missed:
                        self._metrics.stage_missed_runs.labels(self.name).inc(missed)
                        log.warning("stage.slots_missed", stage=self.name, missed=missed)
                deadline = self._next_deadline(now)
        finally:
            # Also when cancelled mid-run at shutdown: the runner is done either way.
            self.state.state = "stopped"
