"""Commits in flight: once begun, a commit runs to a definite end even if its caller is cancelled.

A stage cancelled mid-commit (leadership lost, the shutdown grace ran out) would otherwise
abandon the commit wherever it stood: a manifest generation whose creation was sent but never
acknowledged, a transaction whose ``COMMIT`` may or may not have reached the server. Nothing
is lost either way (the next commit sorts it out), but the log could not say what happened.
Here each commit runs as its own task: a cancelled caller stops waiting at once, the commit
goes on (each step is bounded by the backend's timeouts) and its outcome is logged, landed,
rejected by fencing or failed; the storage's close waits for it (:meth:`InFlight.drain`).

Order is kept: a commit begins only after every abandoned one has ended, so a later commit of
the same process (a stage's next run, a retry) can never be overtaken by an earlier one: a
checkpoint never goes backwards. (Commits whose callers wait may run concurrently, as before.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

from scorebeater import failpoints
from scorebeater.errors import Fenced

log = structlog.get_logger(__name__)

T = TypeVar("T")

DRAIN_TIMEOUT_S = 5.0
"""How long a storage's close waits for abandoned commits before cancelling them: a commit is
a few statements or one manifest write, and the whole shutdown must fit a supervisor's
termination grace (Kubernetes: 30 s, of which ``shutdown_grace_s`` takes 20). Waiting for an
abandoned commit before a new one (:meth:`InFlight.run`, :meth:`InFlight.drain` without a
timeout) has no limit of its own: each commit's statements and requests have the backend's."""


class InFlight:
    """The commits of one storage that are running; safe for the tasks of one event loop."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._abandoned: set[asyncio.Task[Any]] = set()
        """Commits whose callers were cancelled (this also keeps the tasks referenced)."""

    async def run(self, op: str, commit: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``commit()`` to its end and return its result.

        If the caller is cancelled, it gets ``CancelledError`` at once while the commit goes
        on; its outcome is then logged (``storage.commit_after_cancel``).

        Raises:
            Whatever the commit raises.
        """
        while self._abandoned:
            await asyncio.wait(set(self._abandoned))
        failpoints.hit("storage.commit")
        task = asyncio.create_task(commit(), name=f"commit:{op}")
        task.add_done_callback(self._finished)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                self._log_outcome(task)  # ended in the same loop turn: nobody else reports it
            else:
                self._abandoned.add(task)
            raise

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if task not in self._abandoned:
            return  # its caller awaits it and sees the outcome
        self._abandoned.discard(task)
        self._log_outcome(task)

    def _log_outcome(self, task: asyncio.Task[Any]) -> None:
        name = task.get_name()
        if task.cancelled():
            log.warning("storage.commit_after_cancel", where=self._where, op=name, outcome="cancelled")
            return
        error = task.exception()
        if error is None:
            log.info("storage.commit_after_cancel", where=self._where, op=name, outcome="landed")
        elif isinstance(error, Fenced):
            log.error(
                "storage.commit_after_cancel",
                where=self._where,
                op=name,
                outcome="fenced",
                error=str(error),
                term=error.token,
                store_term=error.current,
            )
        else:
            log.error(
                "storage.commit_after_cancel",
                where=self._where,
                op=name,
                outcome="failed",
                error=str(error) or type(error).__name__,
            )

    async def drain(self, timeout_s: float | None = DRAIN_TIMEOUT_S) -> None:
        """Wait for the abandoned commits (those whose callers were cancelled; commits whose
        callers still wait are theirs to wait for): at most ``timeout_s``, then cancel the
        rest; ``None``: without a limit, never cancelling. Never raises their errors (the
        log has them)."""
        if not self._abandoned:
            return
        pending = set(self._abandoned)
        log.info("storage.commits_draining", where=self._where, commits=len(pending))
        if timeout_s is None:
            while self._abandoned:
                await asyncio.wait(set(self._abandoned))
            return
        _done, still = await asyncio.wait(pending, timeout=timeout_s)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)
            log.warning("storage.commits_cancelled", where=self._where, commits=len(still))
