"""Pluggable storage: ``open_storage(cfg)`` yields a ready backend chosen by the config.

Backends are imported lazily (asyncpg and aiobotocore load only when chosen). ``auto`` picks
S3 when the size estimate (``expected_rows``) reaches ``auto_threshold_rows``, Postgres when a
DSN is configured and the data is smaller, and local files otherwise; the choice is logged.
The daemon measures that estimate at start-up (:func:`scorebeater.storage.sizing.sized_config`:
players x game days x seasons from the Score API, plus the rows already stored, and a store
already holding rows is kept) and passes the resolved backend on, so :func:`choose_backend`
sees ``auto`` only where nothing was measured (``expected_rows`` as configured).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Literal, TypeAlias

import structlog

from scorebeater.storage.base import Storage

if TYPE_CHECKING:
    # Only for annotations: the config imports storage.base (its name checks), so the storage
    # package must not import the config at run time.
    from scorebeater.config import StorageConfig

log = structlog.get_logger(__name__)

BACKENDS: dict[str, str] = {
    "local": "scorebeater.storage.local:open_local",
    "s3": "scorebeater.storage.s3:open_s3",
    "postgres": "scorebeater.storage.postgres:open_postgres",
}

Opener: TypeAlias = "Callable[[StorageConfig], AbstractAsyncContextManager[Storage]]"


def choose_backend(cfg: StorageConfig) -> Literal["local", "s3", "postgres"]:
    """Resolve ``auto`` to a concrete backend name (pure; logged by ``open_storage``)."""
    if cfg.backend != "auto":
        return cfg.backend
    if cfg.expected_rows >= cfg.auto_threshold_rows and cfg.s3.bucket:
        return "s3"
    if cfg.postgres.dsn is not None:
        return "postgres"
    return "local"


def _opener(name: str) -> Opener:
    module, _, attr = BACKENDS[name].partition(":")
    opener: Opener = getattr(importlib.import_module(module), attr)
    return opener


@asynccontextmanager
async def open_storage(cfg: StorageConfig) -> AsyncIterator[Storage]:
    """Open the configured backend, yield it ready for use, and close it on exit.

    Raises:
        StorageUnavailable: the backend cannot be reached at start.
    """
    name = choose_backend(cfg)
    log.info(
        "storage.backend_chosen",
        backend=name,
        configured=cfg.backend,
        expected_rows=cfg.expected_rows,
        auto_threshold_rows=cfg.auto_threshold_rows,
    )
    async with _opener(name)(cfg) as storage:
        yield storage
