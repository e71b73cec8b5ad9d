"""A clock tests move by hand, for the :class:`scorebeater.scheduler.Clock` protocol."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class FakeClock:
    """A clock tests move by hand: ``sleep`` returns once ``advance`` has passed its deadline.

    Time starts at ``start`` (default 2014-01-01 00:00 UTC) and moves only through
    :meth:`advance`; nothing ever waits in real time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2014, 1, 1, tzinfo=UTC)
        self._changed = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        async with self._changed:
            await self._changed.wait_for(lambda: self._now >= deadline)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose deadline has passed."""
        async with self._changed:
            self._now += timedelta(seconds=seconds)
            self._changed.notify_all()
        # Let woken tasks run (re-acquire the condition, start their next wait) before the
        # caller continues.
        for _ in range(50):
            await asyncio.sleep(0)
