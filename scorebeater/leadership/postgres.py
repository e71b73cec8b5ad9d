"""Leader election on Postgres: a session advisory lock held on a dedicated connection.

The lock lives as long as the session that took it. That session is a connection of its own
(never one of the storage pool's), opened with ``idle_session_timeout = lease_ttl_s``: a
leader renews (a query on it) every ``min(poll_s, lease_ttl_s / 3)`` seconds, so the server
ends the session, and releases the lock, only when the leader stops renewing: paused
(SIGSTOP), partitioned, or dead (a killed process's socket closes at once). A standby tries
``pg_try_advisory_lock`` every ``poll_s``. On winning it bumps ``leadership.term`` (migration
0005) and uses the new term as its fencing token; the bump waits for a write of the previous
term that is committing (each locks the row ``FOR SHARE`` just before its ``COMMIT``,
:meth:`~scorebeater.storage.postgres.writer.TableWriter.fence`), and any later one fails.
If the dedicated connection dies or the term moves on, leadership is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from typing import TYPE_CHECKING, NoReturn

import asyncpg
import structlog

from scorebeater.errors import LeadershipLost, StorageError, StorageUnavailable
from scorebeater.leadership.base import Holder, Identity, poll_until_leader, renew_interval_s
from scorebeater.storage.base import check_schema_name
from scorebeater.storage.postgres.connection import CONNECT_ERRORS, DRIVER_ERRORS, Redactor, quote_ident
from scorebeater.storage.postgres.writer import WRITER_APPLICATION

if TYPE_CHECKING:
    from scorebeater.config import LeadershipConfig, StorageConfig

log = structlog.get_logger(__name__)

_LOCK_CLASS = b"scorebeater.leadership:"
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, TimeoutError)


def leader_lock_key(schema: str) -> int:
    """The advisory lock key of ``schema``'s leadership (a stable signed 64-bit integer)."""
    digest = hashlib.blake2b(_LOCK_CLASS + schema.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_parts(key: int) -> tuple[int, int]:
    """``pg_locks`` shows a bigint advisory key as ``classid`` (high 32 bits), ``objid`` (low)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


class PostgresElector:
    """The :class:`~scorebeater.leadership.base.Elector` of a Postgres schema (see the module)."""

    def __init__(self, storage: StorageConfig, leadership: LeadershipConfig, identity: Identity) -> None:
        pg = storage.postgres
        if pg.dsn is None:
            raise StorageUnavailable(f"postgres: no DSN: set the environment variable {pg.dsn_env}")
        self._dsn = pg.dsn.get()
        self._redact = Redactor(self._dsn)
        self._schema = check_schema_name(pg.schema)
        self._table = f"{quote_ident(self._schema)}.leadership"
        self._key = leader_lock_key(self._schema)
        self._timeout_s = min(pg.command_timeout_s, leadership.lease_ttl_s)
        self._ttl_s = leadership.lease_ttl_s
        self._poll_s = leadership.poll_s
        self._identity = identity
        self._conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._token: int | None = None
        # The write transactions' application_name while this elector leads (writer.py):
        # a per-schema prefix, so a new leader ends only this store's old writers.
        self._writer_prefix = f"{WRITER_APPLICATION}:{self._key & 0xFFFFFFFFFFFFFFFF:016x}:"
        self._nonce = self._writer_prefix + secrets.token_hex(8)
        self.lost = asyncio.Event()

    @property
    def token(self) -> int | None:
        """The term this replica leads, or ``None``."""
        return self._token

    @property
    def nonce(self) -> str:
        """Written with each term this elector wins; the fenced writes' application_name."""
        return self._nonce

    async def _connection(self) -> asyncpg.Connection[asyncpg.Record]:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._timeout_s,
                command_timeout=self._timeout_s,
                server_settings={
                    "application_name": "scorebeater-leader",
                    # The lease: a session nobody renews for this long is ended by the server.
                    "idle_session_timeout": str(max(1, round(self._ttl_s * 1000))),
                },
            )
        except CONNECT_ERRORS as exc:
            raise self._redact.error("leadership connect", exc) from exc
        self._conn = conn
        return conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), self._timeout_s)
            except _CLOSE_ERRORS:
                conn.terminate()

    async def try_acquire(self) -> int | None:
        """Take the lock and bump the term, or ``None`` if another session holds it.

        Raises:
            StorageUnavailable: the server cannot be reached (the connection is dropped; the
                next attempt reconnects). StorageError: the schema is not migrated.
        """
        if self._token is not None:
            return self._token
        conn = await self._connection()
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key):
                return None
            ident = self._identity
            async with conn.transaction():
                term: int | None = await conn.fetchval(
                    f"UPDATE {self._table} SET term = term + 1, holder = $1, pid = $2, host = $3,"  # noqa: S608
                    " nonce = $4, acquired_at = now() WHERE id = 1 RETURNING term",
                    ident.holder_id,
                    ident.pid,
                    ident.host,
                    self._nonce,
                )
            if term is not None:
                await self._end_old_writers(conn)
        except DRIVER_ERRORS as exc:
            await self._close()  # whatever it held goes with the session
            raise self._redact.error("leadership acquire", exc) from exc
        if term is None:
            await self._close()
            raise StorageError(f"postgres schema {self._schema!r} has no leadership row (migration 0005)")
        self._token = term
        log.info("leadership.acquired", backend="postgres", term=term, holder=ident.holder_id)
        return term

    async def _end_old_writers(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        """End the sessions of this store's earlier leaders that are inside a write.

        A leader paused in the middle of a ``COPY`` keeps its session ``active`` (not idle, so
        no idle timeout ends it) and holds the uncommitted rows' index entries, on which this
        leader's first writes of the same keys would wait until the old process is resumed or
        killed. Its commit would be fenced anyway; ending it now frees the keys. Best effort:
        a failure is logged, and the old transaction then ends by its own timeouts.
        """
        try:
            ended = await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND starts_with(application_name, $1) AND application_name <> $2",
                self._writer_prefix,
                self._nonce,
            )
        except DRIVER_ERRORS as exc:
            error = self._redact(str(exc)) or type(exc).__name__
            log.warning("leadership.old_writers_not_ended", backend="postgres", error=error)
            return
        if ended:
            log.warning("leadership.old_writers_ended", backend="postgres", sessions=ended)

    async def acquire(self) -> int:
        """Try every ``poll_s`` until leader; see the protocol (an unmigrated schema is not
        transient: it raises)."""
        return await poll_until_leader(
            self.try_acquire, poll_s=self._poll_s, backend="postgres", transient=StorageUnavailable
        )

    async def advance(self, past: int) -> int:
        """See the protocol. Here the ``leadership`` row *is* the fence, so the store can
        never be at a newer term than this election handed out: a newer one means another
        replica took over, and this one has lost."""
        token = self._token
        if token is None or token <= past:
            raise LeadershipLost(f"postgres: the store is at term {past}, past this replica's {token}")
        return token

    async def hold(self) -> NoReturn:
        """Renew by using the session; lost when it fails or the term moved on."""
        token = self._token
        if token is None:
            raise LeadershipLost("postgres: hold() called before leadership was acquired")
        conn = await self._connection()
        died = asyncio.Event()
        conn.add_termination_listener(lambda _conn: died.set())
        interval = renew_interval_s(self._ttl_s, self._poll_s)
        reason = ""
        try:
            while not reason:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(died.wait(), interval)
                if died.is_set():
                    reason = "the lock's connection was closed (ended by the server or the network)"
                    break
                try:
                    row = await conn.fetchrow(f"SELECT term, nonce FROM {self._table} WHERE id = 1")  # noqa: S608
                except _CLOSE_ERRORS as exc:
                    reason = f"the lock's connection failed: {self._redact(str(exc)) or type(exc).__name__}"
                    break
                if row is None or row["term"] != token or row["nonce"] != self._nonce:
                    term = None if row is None else row["term"]
                    reason = f"the store moved on to term {term} (or another leader's term {token})"
        finally:
            if reason:
                self._token = None
                self.lost.set()
                await self._close()
        log.error("leadership.lost", backend="postgres", term=token, reason=reason)
        raise LeadershipLost(f"postgres: leadership of term {token} lost: {reason}")

    async def release(self) -> None:
        """Unlock and close the dedicated connection; idempotent, never raises."""
        token, self._token = self._token, None
        conn = self._conn
        if token is not None and conn is not None and not conn.is_closed():
            with contextlib.suppress(*DRIVER_ERRORS, TimeoutError):
                await conn.fetchval("SELECT pg_advisory_unlock($1)", self._key)
            log.info("leadership.released", backend="postgres", term=token)
        await self._close()

    async def holder(self) -> Holder | None:
        """The session holding the lock, described by the ``leadership`` row, or ``None``."""
        return await probe_postgres(self._dsn, self._schema, self._timeout_s)


async def probe_postgres(dsn: str, schema: str, timeout_s: float) -> Holder | None:
    """The live leader of ``schema`` (its lock is held by some session), or ``None``.

    Raises:
        StorageUnavailable, StorageError: the server cannot be reached or refuses us.
    """
    redact = Redactor(dsn)
    table = f"{quote_ident(check_schema_name(schema))}.leadership"
    classid, objid = _lock_parts(leader_lock_key(schema))
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s, command_timeout=timeout_s)
    except CONNECT_ERRORS as exc:
        raise redact.error("leadership probe", exc) from exc
    try:
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::int8 = $1 AND objid::int8 = $2 AND objsubid = 1",
            classid,
            objid,
        )
        if not held:
            return None
        row = await conn.fetchrow(f"SELECT term, holder, pid, host FROM {table} WHERE id = 1")  # noqa: S608
    except asyncpg.UndefinedTableError:
        return None  # never migrated: nobody can lead it
    except DRIVER_ERRORS as exc:
        raise redact.error("leadership probe", exc) from exc
    finally:
        with contextlib.suppress(*DRIVER_ERRORS, TimeoutError):
            await conn.close()
    if row is None:
        return None
    return Holder(Identity(str(row["holder"]), int(row["pid"]), str(row["host"])), int(row["term"]))
