"""Serving until a signal: the first SIGTERM/SIGINT drains, a second cancels at once."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from scorebeater.errors import Interrupted
from scorebeater.lifecycle import run_until_signal


async def _signal_soon(sig: signal.Signals, *, after_s: float = 0.05) -> None:
    await asyncio.sleep(after_s)
    os.kill(os.getpid(), sig)


async def test_the_first_signal_asks_the_command_to_drain_and_its_result_is_returned() -> None:
    drained = False

    async def main(stop: asyncio.Event) -> int:
        nonlocal drained
        await stop.wait()
        drained = True
        return 7

    sender = asyncio.create_task(_signal_soon(signal.SIGTERM))
    assert await asyncio.wait_for(run_until_signal(main, name="test"), 5) == 7
    await sender
    assert drained


async def test_a_second_signal_cancels_a_slow_drain() -> None:
    cancelled = False

    async def main(stop: asyncio.Event) -> None:
        nonlocal cancelled
        await stop.wait()
        try:
            await asyncio.sleep(3600)  # a drain that would never end
        except asyncio.CancelledError:
            cancelled = True
            raise

    async def twice() -> None:
        await _signal_soon(signal.SIGINT)
        await _signal_soon(signal.SIGTERM)

    sender = asyncio.create_task(twice())
    with pytest.raises(Interrupted, match="second signal"):
        await asyncio.wait_for(run_until_signal(main, name="test"), 5)
    await sender
    assert cancelled


async def test_the_signal_handlers_are_removed_afterwards() -> None:
    async def main(stop: asyncio.Event) -> None:
        del stop

    await run_until_signal(main, name="test")
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM)
    assert not loop.remove_signal_handler(signal.SIGINT)
