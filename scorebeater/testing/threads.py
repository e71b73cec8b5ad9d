"""Servers on an event loop of their own, in a thread: for session-scoped (sync) fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def serving_in_thread(
    open_server: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
    *,
    name: str,
    startup_timeout_s: float = 120.0,
) -> Iterator[Any]:
    """Enter ``open_server()`` on a new event loop in a thread; yield what it yields until exit.

    For session-scoped (sync) fixtures: the server outlives each test's event loop.

    Raises:
        RuntimeError: the server did not start (with its error).
    """
    ready = threading.Event()
    value: list[Any] = []
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        try:
            async with open_server() as served:
                value.append(served)
                ready.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            raise
        finally:
            ready.set()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name=name, daemon=True)
    thread.start()
    ready.wait(timeout=startup_timeout_s)
    if failure or not value:
        thread.join(timeout=5)
        raise RuntimeError(f"{name} did not start: {failure!r}")
    try:
        yield value[0]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(timeout=30)
