"""Serving until a signal: the one shutdown rule of every long-running command.

``run``, ``replay-api`` and ``serve-model`` all stop the same way: the first SIGTERM or
SIGINT sets a stop event, and the command drains as it defines (the daemon lets in-flight
stage runs finish within ``shutdown_grace_s``; the servers close their listeners). A second
signal, of either kind, cancels the command at once: every write is atomic, so a cancelled
run leaves nothing half-written (a commit already begun ends, or is cancelled after
:data:`~scorebeater.storage.inflight.DRAIN_TIMEOUT_S`, as the storage closes). The command
then ends with :class:`Interrupted`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from scorebeater.errors import Interrupted

log = structlog.get_logger(__name__)

T = TypeVar("T")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signal(main: Callable[[asyncio.Event], Awaitable[T]], *, name: str) -> T:
    """Run ``main(stop)``; the first SIGTERM/SIGINT sets ``stop``, a second cancels ``main``.

    Must run in the main thread's event loop (signal handlers). Returns what ``main`` returns.

    Raises:
        Interrupted: a second signal cancelled ``main`` before it returned.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    task = asyncio.ensure_future(main(stop))
    received = 0

    def on_signal(signum: int) -> None:
        nonlocal received
        received += 1
        sig = signal.Signals(signum).name
        if received == 1:
            log.info("lifecycle.stopping", command=name, signal=sig)
            stop.set()
        else:
            log.warning("lifecycle.cancelling", command=name, signal=sig)
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if received > 1 and not _outer_cancelled():
            raise Interrupted(f"{name}: cancelled by a second signal") from None
        raise
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _outer_cancelled() -> bool:
    """Whether the task running :func:`run_until_signal` is itself being cancelled."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0
