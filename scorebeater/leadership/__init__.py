"""Active/standby replicas: leader election and fencing tokens per storage backend.

:func:`open_elector` yields the :class:`~scorebeater.leadership.base.Elector` of the configured
backend (its module imported lazily, like the storage backends'); :func:`probe_holder` says who
leads a store, for commands that must not run beside a leading daemon. See
:mod:`scorebeater.leadership.base` for the contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog

from scorebeater.errors import StorageUnavailable
from scorebeater.leadership.base import Elector, Holder, Identity, LeadershipState, Role, fence_storage
from scorebeater.storage import choose_backend

if TYPE_CHECKING:
    from scorebeater.config import LeadershipConfig, StorageConfig

log = structlog.get_logger(__name__)

__all__ = [
    "Elector",
    "Holder",
    "Identity",
    "LeadershipState",
    "Role",
    "fence_storage",
    "open_elector",
    "probe_holder",
]


def _elector(storage: StorageConfig, leadership: LeadershipConfig, identity: Identity) -> Elector:
    backend = choose_backend(storage)
    if backend == "postgres":
        from scorebeater.leadership.postgres import PostgresElector  # noqa: PLC0415 - asyncpg is an extra

        return PostgresElector(storage, leadership, identity)
    if backend == "s3":
        from scorebeater.leadership.s3 import S3Elector  # noqa: PLC0415 - aiobotocore is an extra

        return S3Elector(storage, leadership, identity)
    from scorebeater.leadership.local import LocalElector  # noqa: PLC0415

    return LocalElector(storage.local.root, identity)


@asynccontextmanager
async def open_elector(storage: StorageConfig, leadership: LeadershipConfig) -> AsyncIterator[Elector]:
    """The elector of ``storage``'s backend for this process, not yet leader; on exit it
    releases leadership (if held) and closes its connections.

    Raises:
        StorageUnavailable: the backend's settings are incomplete (no DSN).
    """
    elector = _elector(storage, leadership, Identity.of_this_process(leadership.holder_id))
    try:
        yield elector
    finally:
        await elector.release()


async def probe_holder(storage: StorageConfig) -> str | None:
    """Who leads ``storage`` now (``pid 123 on host h, term 7``), or ``None`` when nobody does.

    For commands that must refuse to run beside a leading daemon (``storage migrate``). Takes
    nothing and changes nothing (a local probe holds a shared lock for an instant).

    Raises:
        StorageUnavailable: the store cannot be reached. StorageError: it refuses us.
    """
    backend = choose_backend(storage)
    holder: Holder | None
    if backend == "postgres":
        from scorebeater.leadership.postgres import probe_postgres  # noqa: PLC0415

        pg = storage.postgres
        if pg.dsn is None:
            raise StorageUnavailable(f"postgres: no DSN: set the environment variable {pg.dsn_env}")
        holder = await probe_postgres(pg.dsn.get(), pg.schema, pg.command_timeout_s)
    elif backend == "s3":
        from scorebeater.leadership.s3 import probe_s3  # noqa: PLC0415

        holder = await probe_s3(storage)
    else:
        from scorebeater.leadership.local import probe_root  # noqa: PLC0415

        holder = await asyncio.to_thread(probe_root, storage.local.root)
    return None if holder is None else holder.describe()
