"""Upserts into the Postgres tables: binary ``COPY`` first, ``ON CONFLICT`` when keys exist.

Every write is one transaction, together with its checkpoint when one is given, so a failed
batch leaves nothing behind (a cancelled caller's transaction runs to its end:
:mod:`scorebeater.storage.inflight`). Rows go in with binary ``COPY``, chunk by chunk
(``batch_rows`` rows), each chunk first straight into the target table inside a savepoint:
new keys, the common case, cost one ``COPY``. When a chunk hits an existing key the savepoint
is rolled back and that chunk and the rest of the batch go through a temporary staging table
and ``INSERT ... ON CONFLICT DO UPDATE`` (the last occurrence of a key in a batch wins; for
outcomes a ``final`` row wins over an ``early`` one, an ``early`` row never replaces a
stored ``final``, and a replacing row keeps the stored early time where its own is null).
Chunks are encoded by :func:`~scorebeater.storage.postgres.codec.copy_payload`, the next one
in a worker thread while the current one is sent.

SQL is built only from constants (table and column names from the Arrow schemas, the checked
schema name, quoted); every value is a bind parameter. That is what each ``# noqa: S608``
vouches for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import pyarrow as pa
import structlog

from scorebeater.errors import Fenced
from scorebeater.storage.base import (
    CACHE_SCHEMA,
    EARLY_COLUMNS,
    FEATURE_KEY,
    FEATURES_SCHEMA,
    OUTCOME_KEY,
    OUTCOMES_SCHEMA,
    PREDICTION_KEY,
    PREDICTIONS_SCHEMA,
    CheckpointWrite,
    check_checkpoint,
)
from scorebeater.storage.inflight import InFlight
from scorebeater.storage.postgres.codec import copy_columns, copy_payload
from scorebeater.storage.postgres.connection import Connection, Database, discard

log = structlog.get_logger(__name__)

T = TypeVar("T")

WRITER_APPLICATION = "scorebeater-writer"
"""Prefix of a fenced write transaction's ``application_name`` (then the store's lock key and
the leader's nonce: :class:`~scorebeater.leadership.postgres.PostgresElector`)."""
FENCED_IDLE_TIMEOUT_MS = 10_000
"""A fenced write transaction idle this long (its process paused) is ended by the server, so
the row locks it holds cannot hold up the next leader's writes for longer."""
DIRECT_RETRY_EVERY = 16
"""After a unique violation, writes of that table skip the direct COPY this many times."""


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the schema: its Arrow schema, primary key and upsert rules."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    prefer: str = ""
    """SQL ordering placed before the batch position when duplicates in one batch are resolved."""
    keep: str = ""
    """Extra ``ON CONFLICT ... WHERE`` condition: when a stored row may be replaced."""
    not_compared: tuple[str, ...] = ()
    """Columns that alone do not make a stored row "changed" (bookkeeping timestamps)."""
    coalesce: tuple[str, ...] = ()
    """Columns where a replacing row's null keeps the stored value (``COALESCE(new, old)``)."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names in schema order."""
        return tuple(self.schema.names)


FEATURES = Table("features", FEATURES_SCHEMA, FEATURE_KEY)
# Re-storing the same probability for the same key (a refeed with the cache) rewrites nothing:
# ``predicted_at`` keeps the time that prediction was first stored. A version's champion row is
# history (what the daemon served then): its later shadow as challenger never relabels it.
PREDICTIONS = Table(
    "predictions",
    PREDICTIONS_SCHEMA,
    PREDICTION_KEY,
    prefer="(role = 'champion') DESC, ",
    keep=" AND NOT (t.role = 'champion' AND EXCLUDED.role = 'challenger')",
    not_compared=("predicted_at",),
)
CACHE = Table("prediction_cache", CACHE_SCHEMA, ("model_version", "feature_hash"))
OUTCOMES = Table(
    "outcomes",
    OUTCOMES_SCHEMA,
    OUTCOME_KEY,
    prefer="(resolution = 'final') DESC, ",
    keep=" AND NOT (t.resolution = 'final' AND EXCLUDED.resolution = 'early')",
    coalesce=EARLY_COLUMNS,
)


class TableWriter:
    """Writes conformed Arrow rows into the tables of one :class:`Database`.

    Remembers, per table, that a recent write hit existing keys (see ``_copy_chunks``); safe
    for concurrent use by the tasks of one event loop.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._skip_direct: dict[str, int] = {}
        self.commits = InFlight("postgres")
        """Write transactions running (:meth:`commit`); drained when the storage closes."""
        self.fencing_token: int | None = None
        """The leadership term every write carries (``None``: writes are not fenced)."""
        self.fencing_nonce = ""
        """The leader's own id stored with its term (``leadership.nonce``): a write must match
        both, so a term number reused after a failover that lost the bump fences too. Also the
        fenced transactions' ``application_name`` (:data:`WRITER_APPLICATION` prefix), by which
        a new leader ends an old leader's stuck transaction."""

    @staticmethod
    async def begin_fenced(conn: Connection, token: int | None, nonce: str) -> None:
        """First statement of a fenced write transaction: a writer paused inside it (SIGSTOP,
        a partition) would keep its row locks, and hold up the next leader's writes, forever;
        the server ends it after ``FENCED_IDLE_TIMEOUT_MS`` idle instead."""
        if token is not None:
            await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {FENCED_IDLE_TIMEOUT_MS}")
            if nonce:
                await conn.execute("SELECT set_config('application_name', $1, true)", nonce)

    async def commit(self, op: str, body: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``body(conn)`` in one fenced write transaction and return its result.

        :meth:`begin_fenced` first, :meth:`fence` last, both with the term and nonce in force
        when this is called (a commit that outlives its caller keeps the term it began under);
        the transaction runs to its end even if the caller is cancelled
        (:class:`~scorebeater.storage.inflight.InFlight`).

        Raises:
            Fenced: a newer leadership term began (rolled back: nothing was written).
            StorageError, StorageUnavailable: a database error, the server unreachable.
        """

        token, nonce = self.fencing_token, self.fencing_nonce

        async def transaction() -> T:
            async with self._db.transaction(op) as conn:
                await self.begin_fenced(conn, token, nonce)
                result = await body(conn)
                await self.fence(conn, token, nonce)
                return result

        return await self.commits.run(op, transaction)

    async def fence(self, conn: Connection, token: int | None, nonce: str) -> None:
        """Reject this transaction when the store's leadership term is newer than our token.

        The last statement of each write transaction, just before ``COMMIT``. ``FOR SHARE``
        keeps the term row locked until the transaction ends, so a new leader's term bump (an
        ``UPDATE`` of that row) waits for a commit that passed this check, and a commit that
        comes after the bump fails it: none of the old term can commit after the new one
        began. Last, not first, so the lock is held for a moment, not for the whole write: a
        writer paused mid-write does not hold up the next leader's election.

        Raises:
            Fenced: the stored term is not ``token`` with ``nonce`` (the transaction is rolled
                back: nothing was written).
        """
        if token is None:
            return
        row = await conn.fetchrow(
            f"SELECT term, holder, nonce FROM {self._db.table('leadership')} WHERE id = 1 FOR SHARE"  # noqa: S608
        )
        current = 0 if row is None else int(row["term"])
        # Equality, not "at most": a term that moved backwards (a failover lost the bump) or
        # the same number won by another leader (another nonce) is not ours either.
        other = nonce and row is not None and row["nonce"] != nonce
        if current != token or other:
            raise Fenced(token, current, holder=None if row is None else str(row["holder"]))

    async def write(
        self,
        spec: Table,
        rows: pa.Table,
        checkpoint: CheckpointWrite | None,
        after: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Upsert ``rows`` (and the checkpoint) into ``spec``'s table in one transaction.

        ``after`` runs in the same transaction once the rows are in (when there are rows).
        No rows and no checkpoint: nothing happens.

        Raises:
            StorageError: a bad checkpoint, or a database error. StorageUnavailable: the
                server cannot be reached (the transaction is then rolled back).
        """
        if checkpoint is not None:
            check_checkpoint(*checkpoint)
        if rows.num_rows == 0 and checkpoint is None:
            return

        async def body(conn: Connection) -> None:
            await self._copy_chunks(conn, spec, rows)
            if after is not None and rows.num_rows:
                await after(conn)
            if checkpoint is not None:
                await self.put_checkpoint(conn, *checkpoint)

        await self.commit(f"write {spec.name}", body)

    async def put_checkpoint(self, conn: Connection, name: str, value: bytes) -> None:
        """Upsert a checkpoint inside the caller's transaction (checked by the caller)."""
        await conn.execute(
            f"INSERT INTO {self._db.table('checkpoints')} AS c (name, value) VALUES ($1, $2)"  # noqa: S608
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            name,
            value,
        )

    async def _copy_chunks(self, conn: Connection, spec: Table, rows: pa.Table) -> None:
        batch_rows = self._db.batch_rows
        chunks = [rows.slice(off, batch_rows) for off in range(0, rows.num_rows, batch_rows)]
        columns = copy_columns(spec.schema)
        # After a conflict, the next writes of the table (a refeed, a rerun) likely conflict
        # too: send them straight to staging instead of copying each chunk twice, and try the
        # direct path again every DIRECT_RETRY_EVERY writes.
        skips = self._skip_direct.get(spec.name, 0)
        direct = skips == 0
        if skips:
            self._skip_direct[spec.name] = skips - 1
        staged = False
        pending: asyncio.Future[bytes] | None = None
        try:
            for i, chunk in enumerate(chunks):
                payload = await (pending or asyncio.to_thread(copy_payload, chunk))
                # Encode the next chunk in a thread (Arrow releases the GIL) while this one is sent.
                pending = (
                    asyncio.ensure_future(asyncio.to_thread(copy_payload, chunks[i + 1]))
                    if i + 1 < len(chunks)
                    else None
                )
                if direct:
                    try:
                        async with conn.transaction():  # a savepoint: a conflict undoes this chunk only
                            await conn.copy_to_table(
                                spec.name,
                                source=_once(payload),
                                columns=columns,
                                schema_name=self._db.schema,
                                format="binary",
                            )
                        continue
                    except asyncpg.UniqueViolationError:
                        # Keys already stored (a rerun, an update): this chunk and the rest of
                        # the batch, likely alike, go through staging.
                        direct = False
                        self._skip_direct[spec.name] = DIRECT_RETRY_EVERY
                        log.debug("storage.postgres.copy_conflict", table=spec.name, chunk=i)
                if not staged:
                    target = self._db.table(spec.name)
                    await conn.execute(
                        f"CREATE TEMP TABLE _stage_{spec.name} (LIKE {target}, _ord bigserial) ON COMMIT DROP"
                    )
                    staged = True
                await self._merge(conn, spec, columns, payload)
        finally:
            discard(pending)  # set only when leaving early, through an error

    async def _merge(self, conn: Connection, spec: Table, columns: Sequence[str], payload: bytes) -> None:
        """Upsert one chunk through the staging table (created by the caller in this transaction).

        Duplicate keys within the chunk are resolved first (``spec.prefer``, then the last one
        wins), since one ``INSERT ... ON CONFLICT`` may not touch a row twice. Rows equal to
        the stored ones are left alone, so a rerun rewrites nothing.
        """
        stage = f"_stage_{spec.name}"
        cols = ", ".join(spec.columns)
        keys = ", ".join(spec.key)
        values = [c for c in spec.columns if c not in spec.key]
        new = {c: f"COALESCE(EXCLUDED.{c}, t.{c})" if c in spec.coalesce else f"EXCLUDED.{c}" for c in values}
        assignments = ", ".join(f"{c} = {new[c]}" for c in values)
        compared = [c for c in values if c not in spec.not_compared]
        stored = ", ".join(f"t.{c}" for c in compared)
        incoming = ", ".join(new[c] for c in compared)
        await conn.copy_to_table(stage, source=_once(payload), columns=columns, format="binary")
        await conn.execute(
            f"INSERT INTO {self._db.table(spec.name)} AS t ({cols})"  # noqa: S608
            f" SELECT DISTINCT ON ({keys}) {cols} FROM {stage} ORDER BY {keys}, {spec.prefer}_ord DESC"
            f" ON CONFLICT ({keys}) DO UPDATE SET {assignments}"
            f" WHERE ({stored}) IS DISTINCT FROM ({incoming}){spec.keep}"
        )
        await conn.execute(f"TRUNCATE {stage}")


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    """A COPY source sending ``payload`` as it is (asyncpg would take a bare ``bytes`` for a path)."""
    yield payload
