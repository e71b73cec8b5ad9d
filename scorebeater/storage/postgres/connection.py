"""Access to one schema through an asyncpg pool, with driver errors translated.

Driver errors become :class:`StorageUnavailable` (cannot reach, authenticate, or keep a
connection; server shutting down; timeouts; read-only server) or :class:`StorageError`, both
chained, with the DSN and its password scrubbed from the message (:class:`Redactor`).
Reads stream from a server-side cursor inside a read-only ``REPEATABLE READ`` transaction
(one consistent snapshot for the whole iteration), ``batch_rows`` rows at a time, each chunk
turned into Arrow in a worker thread while the next one is fetched.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import pyarrow as pa

from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.storage.base import check_schema_name
from scorebeater.storage.postgres.codec import to_arrow

Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
"""A connection borrowed from the pool."""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    *_UNAVAILABLE,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
"""What asyncpg raises for a failed operation (translated by :meth:`Redactor.error`)."""
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, ValueError)
"""asyncpg raises ValueError-based errors for a DSN it cannot parse."""


class Redactor:
    """Scrubs a DSN and its password out of driver messages."""

    def __init__(self, dsn: str) -> None:
        secrets = {dsn}
        try:
            parts = urlsplit(dsn)
            passwords = [parts.netloc.rpartition("@")[0].partition(":")[2]]
            # ?password=... works too
            passwords += [
                v for k, _, v in (p.partition("=") for p in parts.query.split("&")) if k == "password"
            ]
        except ValueError:
            passwords = []
        for raw in filter(None, passwords):
            plain = unquote(raw)
            secrets |= {raw, plain, quote(plain, safe="")}
        # Longest first, so the whole DSN goes before the password inside it.
        self._secrets = sorted((s for s in secrets if s), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` with every spelling of the DSN and its password replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def error(self, op: str, exc: BaseException) -> StorageError:
        """The storage error to raise (``from exc``) for a driver error during ``op``."""
        detail = self(str(exc)) or "no detail"
        cls = StorageUnavailable if self.is_unavailable(exc) else StorageError
        return cls(f"postgres {op} failed: {type(exc).__name__}: {detail}")

    @staticmethod
    def is_unavailable(exc: BaseException) -> bool:
        """Whether ``exc`` means the server cannot be used now (rather than a bad request)."""
        if isinstance(exc, _UNAVAILABLE):
            return True
        # The pool or connection has been closed under us (shutdown, lost server).
        return isinstance(exc, asyncpg.InterfaceError) and ("closed" in str(exc) or "closing" in str(exc))


def quote_ident(ident: str) -> str:
    """``ident`` as a quoted SQL identifier."""
    return '"' + ident.replace('"', '""') + '"'


def dsn_summary(dsn: str) -> dict[str, Any]:
    """What may be logged about a DSN: host, port and database, never user info."""
    try:
        parts = urlsplit(dsn)
        return {"host": parts.hostname, "port": parts.port, "database": parts.path.lstrip("/") or None}
    except ValueError:
        return {}


class Database:
    """One schema reached through an asyncpg pool (which the caller owns and closes).

    Every context manager and stream here raises ``StorageUnavailable`` or ``StorageError``
    (translated by the :class:`Redactor`) instead of a driver error.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        schema: str,
        batch_rows: int,
        timeout_s: float,
        redactor: Redactor,
    ) -> None:
        self.schema = check_schema_name(schema)
        self.batch_rows = batch_rows
        self._pool = pool
        self._q = quote_ident(self.schema)
        self._timeout_s = timeout_s
        self._redact = redactor

    def table(self, name: str) -> str:
        """The schema-qualified, quoted SQL name of table ``name`` (a constant of ours)."""
        return f"{self._q}.{name}"

    @asynccontextmanager
    async def connection(self, op: str) -> AsyncIterator[Connection]:
        """A pooled connection (waiting at most ``timeout_s`` for one); ``op`` names errors."""
        try:
            async with self._pool.acquire(timeout=self._timeout_s) as conn:
                yield conn
        except DRIVER_ERRORS as exc:
            raise self._redact.error(op, exc) from exc

    @asynccontextmanager
    async def transaction(self, op: str) -> AsyncIterator[Connection]:
        """A pooled connection inside a transaction, committed on a normal exit."""
        async with self.connection(op) as conn, conn.transaction():
            yield conn

    async def stream(
        self, op: str, query: str, *args: object, schema: pa.Schema
    ) -> AsyncGenerator[pa.Table, None]:
        """The rows of ``query`` (columns in ``schema`` order) as Arrow tables of at most
        ``batch_rows`` rows, from one consistent snapshot."""
        async with self.connection(op) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(query, *args)
            rows = await cursor.fetch(self.batch_rows)
            while rows:
                # Convert this chunk in a thread while the next one is fetched; the event loop
                # stays free meanwhile.
                table = asyncio.ensure_future(asyncio.to_thread(to_arrow, rows, schema))
                try:
                    rows = await cursor.fetch(self.batch_rows)
                except BaseException:
                    discard(table)
                    raise
                yield await table


def discard(future: asyncio.Future[Any] | None) -> None:
    """Cancel work we no longer need, and never leave its error unretrieved."""
    if future is None:
        return
    future.cancel()
    if future.done() and not future.cancelled():
        future.exception()
