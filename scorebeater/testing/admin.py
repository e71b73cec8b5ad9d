"""An admin app's state over storage alone, for tests and benchmarks of the read endpoints."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState
from scorebeater.config import Config
from scorebeater.metrics import Metrics
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff
from scorebeater.storage.base import Storage


def storage_only_state(storage: Storage | None, cfg: Config | None = None) -> AdminState:
    """An :class:`AdminState` whose only live parts are ``storage`` (``None``: routing only)
    and fresh metrics: the Score API client, the model client and the feature stage are
    absent, so only endpoints that read storage (or nothing) may be called."""
    unused = cast("Any", None)
    ctx = StageContext(
        cfg=cfg or Config(),
        storage=cast("Storage", storage),
        scores=unused,
        model=unused,
        metrics=Metrics(CollectorRegistry()),
        clock=SystemClock(),
    )
    return AdminState(
        ctx=ctx, handoff=Handoff(), runners={}, features=unused, token=None, started=asyncio.Event()
    )
