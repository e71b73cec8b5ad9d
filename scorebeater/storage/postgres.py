"""PostgreSQL backend: an asyncpg pool over a schema this module creates and migrates.

Layout: one schema (``storage.postgres.schema``) holding a table per kind of data, with the
primary keys of :mod:`scorebeater.storage.base`, plus ``latest_features`` (which as-of row is
each player-season's latest, kept in the same transaction as feature writes) and
``schema_migrations``. The DDL lives in versioned files under ``migrations/``, applied in
order on open, in one transaction, under an advisory lock, so two processes never migrate at
once and a half-applied version never exists.

Writes: every write is one transaction, together with its checkpoint when one is given, so a
failed or cancelled batch leaves nothing behind. Rows go in with binary ``COPY``, chunk by
chunk (``storage.batch_rows`` rows), each chunk first straight into the target table inside a
savepoint: new keys, the common case, cost one ``COPY``. When a chunk hits an existing key
the savepoint is rolled back and that chunk and the rest of the batch go through a
temporary staging table and ``INSERT ... ON CONFLICT DO UPDATE`` (the last occurrence of a
key in a batch wins; for outcomes a ``final`` row wins over an ``early`` one, and an ``early``
row never replaces a stored ``final``). Chunks are encoded straight from Arrow into the binary
``COPY`` format by :func:`copy_payload` (vectorised, no Python object per value), the next
one in a worker thread while the current one is sent.

Reads stream from a server-side cursor inside a read-only ``REPEATABLE READ`` transaction
(one consistent snapshot for the whole iteration), ``batch_rows`` rows at a time, each chunk
turned column by column into an Arrow table (in a worker thread, while the next chunk is
fetched). Timestamps are read as integer microseconds (a ``tuple``-format codec on
``timestamptz``), which avoids a Python ``datetime`` per value.

SQL is static text built from constants (table and column names from the Arrow schemas, the
schema name after :func:`check_schema_name`, quoted); every value is a bind parameter. That
is what each ``# noqa: S608`` below vouches for.
Driver errors become :class:`StorageUnavailable` (cannot reach, authenticate, or keep a
connection; server shutting down; timeouts; read-only server) or :class:`StorageError`, both
chained, with the DSN and password scrubbed from the message.
"""

from __future__ import annotations

import asyncio
import hashlib
import operator
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from itertools import chain
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote, unquote, urlsplit

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.storage.base import (
    CACHE_SCHEMA,
    FEATURE_KEY,
    FEATURES_SCHEMA,
    OUTCOME_KEY,
    OUTCOMES_SCHEMA,
    PREDICTION_KEY,
    PREDICTIONS_SCHEMA,
    RESOLUTIONS,
    TRAINING_SCHEMA,
    CheckpointWrite,
    check_checkpoint_name,
    conform,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        AsyncIterator,
        Awaitable,
        Callable,
        Collection,
        Mapping,
        Sequence,
    )

    from scorebeater.config import StorageConfig

log = structlog.get_logger(__name__)

Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800_000_000
"""Postgres counts timestamps in microseconds from 2000-01-01 UTC; Arrow from 1970-01-01."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_LOCK_CLASS = b"scorebeater.storage.postgres.migrate:"
_CLOSE_TIMEOUT_S = 10.0

PG_TYPES = {
    pa.int64(): "int8",
    pa.int32(): "int4",
    pa.float32(): "float4",
    pa.float64(): "float8",
    pa.bool_(): "bool",
    pa.string(): "text",
    pa.timestamp("us", tz="UTC"): "timestamptz",
}
"""How each Arrow type of the schemas is stored (the migrations follow it; a test checks)."""


def check_schema_name(name: str) -> str:
    """Return ``name`` if it is safe as an unquoted-looking Postgres schema name.

    Lower-case ASCII letters, digits and ``_``, not starting with a digit, at most 63
    characters (Postgres's limit), and not ``pg_*`` (reserved for the system).

    Raises:
        StorageError: naming the bad value.
    """
    if not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_"):
        raise StorageError(
            f"invalid Postgres schema name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters, not pg_*"
        )
    return name


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


# --- migrations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned DDL file: ``NNNN_name.sql`` under ``scorebeater/storage/migrations``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> tuple[Migration, ...]:
    """The packaged migrations in version order.

    Raises:
        StorageError: a file is misnamed, or versions are not 1, 2, 3, ... without gaps.
    """
    found: list[Migration] = []
    for entry in resources.files("scorebeater.storage").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match is None:
            raise StorageError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=operator.attrgetter("version"))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise StorageError(f"migration versions must run 1, 2, 3, ... without gaps, found {versions}")
    return tuple(found)


def migration_lock_key(schema: str) -> int:
    """A stable 64-bit advisory lock key per schema (the same in every process)."""
    digest = hashlib.blake2b(_LOCK_CLASS + schema.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def migrate(conn: asyncpg.Connection[asyncpg.Record] | Connection, schema: str) -> list[int]:
    """Bring ``schema`` to the newest packaged migration; return the versions applied now.

    Creates the schema and ``schema_migrations`` when missing. Runs in one transaction
    holding a transaction-level advisory lock on the schema, so concurrent callers queue and
    the later ones find nothing to do. Idempotent.

    Raises:
        StorageError: the database has a version this code does not know (newer code
            migrated it), or an applied migration's file has changed since.
    """
    migrations = load_migrations()
    q = _quote(check_schema_name(schema))
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", migration_lock_key(schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q}.schema_migrations ("
            " version int4 PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {
            row["version"]: row["checksum"]
            for row in await conn.fetch(f"SELECT version, checksum FROM {q}.schema_migrations")  # noqa: S608
        }
        known = {m.version: m for m in migrations}
        unknown = sorted(set(applied) - set(known))
        if unknown:
            raise StorageError(
                f"schema {schema!r} has migration(s) {unknown} that this version of scorebeater does not "
                f"know (it knows up to {len(migrations)}): upgrade scorebeater or use another schema"
            )
        for version, checksum in applied.items():
            if known[version].checksum != checksum:
                raise StorageError(
                    f"migration {version:04d}_{known[version].name} changed after it was applied to "
                    f"schema {schema!r}: add a new migration instead of editing an applied one"
                )
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            # SET LOCAL ends with the transaction, so the pool's connections keep their path.
            await conn.execute(f"SET LOCAL search_path TO {q}")
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {q}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",  # noqa: S608
                migration.version,
                migration.name,
                migration.checksum,
            )
            done.append(migration.version)
    return done


# --- tables, rows and Arrow --------------------------------------------------------------------


DIRECT_RETRY_EVERY = 16
"""After a unique violation, writes of that table skip the direct COPY this many times."""


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    prefer: str = ""
    """SQL ordering placed before the batch position when duplicates in one batch are resolved."""
    keep: str = ""
    """Extra ``ON CONFLICT ... WHERE`` condition: when a stored row may be replaced."""
    not_compared: tuple[str, ...] = ()
    """Columns that alone do not make a stored row "changed" (bookkeeping timestamps)."""

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)


_FEATURES = _Table("features", FEATURES_SCHEMA, FEATURE_KEY)
# Re-storing the same probability for the same key (a refeed with the cache) rewrites nothing:
# ``predicted_at`` keeps the time that prediction was first stored.
_PREDICTIONS = _Table("predictions", PREDICTIONS_SCHEMA, PREDICTION_KEY, not_compared=("predicted_at",))
_CACHE = _Table("prediction_cache", CACHE_SCHEMA, ("model_version", "feature_hash"))
_OUTCOMES = _Table(
    "outcomes",
    OUTCOMES_SCHEMA,
    OUTCOME_KEY,
    prefer="(resolution = 'final') DESC, ",
    keep=" AND NOT (t.resolution = 'final' AND EXCLUDED.resolution = 'early')",
)


_BINARY_FORMATS: dict[pa.DataType, str] = {
    pa.int64(): ">i8",
    pa.int32(): ">i4",
    pa.float32(): ">f4",
    pa.float64(): ">f8",
    pa.bool_(): "u1",
    pa.timestamp("us", tz="UTC"): ">i8",
}
"""Fixed-width Arrow types and their big-endian layout in Postgres's binary COPY format."""
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"  # a field count of -1
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())


def copy_columns(schema: pa.Schema) -> tuple[str, ...]:
    """The column order of :func:`copy_payload`'s rows: fixed-width columns, then text ones."""
    fixed = [f.name for f in schema if f.type in _BINARY_FORMATS]
    return (*fixed, *(f.name for f in schema if f.type not in _BINARY_FORMATS))


def copy_payload(table: pa.Table) -> bytes:
    """Encode ``table`` as a complete binary ``COPY`` stream, columns in :func:`copy_columns` order.

    Vectorised, with no Python object per value: the fixed-width columns (each a 4-byte length
    and a big-endian value) of every row go into one numpy structured array, and Arrow's
    ``binary_join_element_wise`` appends each row's text fields (length, then UTF-8 bytes),
    so the joined array's data buffer is the row stream itself. Timestamps become microseconds
    since 2000-01-01, bools one byte. The table must be one of the schemas here, without nulls.
    """
    n = table.num_rows
    fixed = [f for f in table.schema if f.type in _BINARY_FORMATS]
    text = [f for f in table.schema if f.type not in _BINARY_FORMATS]
    layout = [("fields", ">i2")]
    for i, f in enumerate(fixed):
        layout += [(f"len{i}", ">i4"), (f"val{i}", _BINARY_FORMATS[f.type])]
    rows = np.empty(n, dtype=np.dtype(layout))
    rows["fields"] = table.num_columns
    for i, f in enumerate(fixed):
        column = table.column(f.name)
        rows[f"len{i}"] = np.dtype(_BINARY_FORMATS[f.type]).itemsize
        if pa.types.is_timestamp(f.type):
            rows[f"val{i}"] = column.cast(pa.int64()).to_numpy() - _PG_EPOCH_US
        else:
            rows[f"val{i}"] = column.to_numpy()
    parts = [_fixed_binary(rows.view(np.uint8), rows.dtype.itemsize, n)]
    for f in text:
        column = table.column(f.name).combine_chunks()
        lengths = pc.binary_length(column).to_numpy(zero_copy_only=False).astype(">i4")
        parts += [_fixed_binary(lengths.view(np.uint8), 4, n), column.cast(pa.large_binary())]
    joined = pc.binary_join_element_wise(*parts, _NO_SEPARATOR)
    _, offsets_buffer, data = joined.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=n + 1, offset=joined.offset * 8)
    return b"".join((_COPY_HEADER, data[int(offsets[0]) : int(offsets[-1])].to_pybytes(), _COPY_TRAILER))


def _fixed_binary(data: np.ndarray[Any, np.dtype[np.uint8]], width: int, n: int) -> pa.Array:
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])
    return array.cast(pa.large_binary())


def _to_arrow(rows: Sequence[asyncpg.Record], schema: pa.Schema) -> pa.Table:
    """Turn fetched records (columns in ``schema`` order) into an Arrow table, column by column.

    The records are flattened into one list in C and each column is a strided slice of it,
    several times faster than indexing every record.
    """
    n = len(rows)
    width = len(schema)
    flat = list(chain.from_iterable(rows))
    arrays = []
    for i, field in enumerate(schema):
        values = flat[i::width]
        if pa.types.is_timestamp(field.type):
            micros = np.fromiter(values, dtype=np.int64, count=n) + _PG_EPOCH_US
            arrays.append(pa.array(micros, type=field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _encode_timestamptz(value: Any) -> tuple[int]:
    if isinstance(value, tuple):
        return value  # already (microseconds since 2000-01-01,), as _python_columns builds it
    if isinstance(value, datetime) and value.tzinfo is not None:
        return ((value - _PG_EPOCH) // timedelta(microseconds=1),)
    raise StorageError(f"timestamptz value must be a tz-aware datetime, got {value!r}")


async def init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=operator.itemgetter(0),
        format="tuple",
    )


# --- errors ------------------------------------------------------------------------------------

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
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    *_UNAVAILABLE,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_DRIVER_ERRORS, ValueError)
"""asyncpg raises ValueError-based errors for a DSN it cannot parse."""


class _Redactor:
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
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def error(self, op: str, exc: BaseException) -> StorageError:
        detail = self(str(exc)) or "no detail"
        cls = StorageUnavailable if self.is_unavailable(exc) else StorageError
        return cls(f"postgres {op} failed: {type(exc).__name__}: {detail}")

    @staticmethod
    def is_unavailable(exc: BaseException) -> bool:
        if isinstance(exc, _UNAVAILABLE):
            return True
        # The pool or connection has been closed under us (shutdown, lost server).
        return isinstance(exc, asyncpg.InterfaceError) and ("closed" in str(exc) or "closing" in str(exc))


def _dsn_summary(dsn: str) -> dict[str, Any]:
    """What may be logged about a DSN: host, port and database, never user info."""
    try:
        parts = urlsplit(dsn)
        return {"host": parts.hostname, "port": parts.port, "database": parts.path.lstrip("/") or None}
    except ValueError:
        return {}


# --- the backend -------------------------------------------------------------------------------


class PostgresStorage:
    """The :class:`~scorebeater.storage.base.Storage` protocol over an asyncpg pool.

    Get one from :func:`open_postgres`; it is ready (schema migrated) when yielded.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        schema: str,
        batch_rows: int,
        timeout_s: float,
        redactor: _Redactor,
    ) -> None:
        self._pool = pool
        self._schema = check_schema_name(schema)
        self._q = _quote(self._schema)
        self._batch_rows = batch_rows
        self._skip_direct: dict[str, int] = {}
        self._timeout_s = timeout_s
        self._redact = redactor

    # -- plumbing

    def _t(self, table: str) -> str:
        return f"{self._q}.{table}"

    @asynccontextmanager
    async def _connection(self, op: str) -> AsyncIterator[Connection]:
        try:
            async with self._pool.acquire(timeout=self._timeout_s) as conn:
                yield conn
        except _DRIVER_ERRORS as exc:
            raise self._redact.error(op, exc) from exc

    @asynccontextmanager
    async def _transaction(self, op: str) -> AsyncIterator[Connection]:
        async with self._connection(op) as conn, conn.transaction():
            yield conn

    async def _stream(
        self, op: str, query: str, *args: object, schema: pa.Schema
    ) -> AsyncGenerator[pa.Table, None]:
        async with self._connection(op) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(query, *args)
            rows = await cursor.fetch(self._batch_rows)
            while rows:
                # Convert this chunk in a thread while the next one is fetched; the event loop
                # stays free meanwhile.
                table = asyncio.ensure_future(asyncio.to_thread(_to_arrow, rows, schema))
                try:
                    rows = await cursor.fetch(self._batch_rows)
                except BaseException:
                    _discard(table)
                    raise
                yield await table

    # -- writes

    async def _write(
        self,
        spec: _Table,
        rows: pa.Table,
        checkpoint: CheckpointWrite | None,
        after: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        """Write conformed ``rows`` (and the checkpoint) into ``spec``'s table in one transaction."""
        if checkpoint is not None:
            _check_checkpoint(*checkpoint)
        if rows.num_rows == 0 and checkpoint is None:
            return
        async with self._transaction(f"write {spec.name}") as conn:
            await self._copy_chunks(conn, spec, rows)
            if after is not None and rows.num_rows:
                await after(conn)
            if checkpoint is not None:
                await self._put_checkpoint(conn, *checkpoint)

    async def _copy_chunks(self, conn: Connection, spec: _Table, rows: pa.Table) -> None:
        chunks = [rows.slice(off, self._batch_rows) for off in range(0, rows.num_rows, self._batch_rows)]
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
                                schema_name=self._schema,
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
                    await conn.execute(
                        f"CREATE TEMP TABLE _stage_{spec.name} (LIKE {self._t(spec.name)}, _ord bigserial)"
                        " ON COMMIT DROP"
                    )
                    staged = True
                await self._merge(conn, spec, columns, payload)
        finally:
            _discard(pending)  # set only when leaving early, through an error

    async def _merge(self, conn: Connection, spec: _Table, columns: Sequence[str], payload: bytes) -> None:
        """Upsert one chunk through the staging table (created by the caller in this transaction).

        Duplicate keys within the chunk are resolved first (``spec.prefer``, then the last one
        wins), since one ``INSERT ... ON CONFLICT`` may not touch a row twice. Rows equal to
        the stored ones are left alone, so a rerun rewrites nothing.
        """
        stage = f"_stage_{spec.name}"
        cols = ", ".join(spec.columns)
        keys = ", ".join(spec.key)
        values = [c for c in spec.columns if c not in spec.key]
        assignments = ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
        compared = [c for c in values if c not in spec.not_compared]
        stored = ", ".join(f"t.{c}" for c in compared)
        incoming = ", ".join(f"EXCLUDED.{c}" for c in compared)
        await conn.copy_to_table(stage, source=_once(payload), columns=columns, format="binary")
        await conn.execute(
            f"INSERT INTO {self._t(spec.name)} AS t ({cols})"  # noqa: S608
            f" SELECT DISTINCT ON ({keys}) {cols} FROM {stage} ORDER BY {keys}, {spec.prefer}_ord DESC"
            f" ON CONFLICT ({keys}) DO UPDATE SET {assignments}"
            f" WHERE ({stored}) IS DISTINCT FROM ({incoming}){spec.keep}"
        )
        await conn.execute(f"TRUNCATE {stage}")

    async def _put_checkpoint(self, conn: Connection, name: str, value: bytes) -> None:
        await conn.execute(
            f"INSERT INTO {self._t('checkpoints')} AS c (name, value) VALUES ($1, $2)"  # noqa: S608
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            name,
            value,
        )

    async def _update_latest(self, conn: Connection, rows: pa.Table) -> None:
        latest = (
            rows.select(["player_id", "season", "as_of_seq"])
            .group_by(["player_id", "season"])
            .aggregate([("as_of_seq", "max")])
        )
        for off in range(0, latest.num_rows, self._batch_rows):
            part = latest.slice(off, self._batch_rows)
            await conn.execute(
                f"INSERT INTO {self._t('latest_features')} AS l (player_id, season, as_of_seq)"  # noqa: S608
                " SELECT * FROM unnest($1::int8[], $2::int4[], $3::int4[])"
                " ON CONFLICT (season, player_id) DO UPDATE SET as_of_seq = EXCLUDED.as_of_seq"
                " WHERE l.as_of_seq < EXCLUDED.as_of_seq",
                *(part.column(i).to_numpy().tolist() for i in range(3)),
            )

    # -- the Storage protocol

    async def ping(self) -> None:
        """Check the server answers and accepts writes (not a read-only standby).

        Raises:
            StorageUnavailable: unreachable, or read-only.
        """
        async with self._connection("ping") as conn:
            read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')")
        if read_only != "off":
            raise StorageUnavailable("postgres ping failed: the server is read-only (a standby?)")

    async def write_features(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert feature rows by ``(player_id, season, as_of_seq)``; see the Storage protocol.

        One transaction: the rows, the latest-row pointers and the checkpoint commit together.
        Idempotent; within one batch the last row of a key wins.

        Raises:
            StorageError: the table does not fit ``FEATURES_SCHEMA``, a bad checkpoint, or a
                database error. StorageUnavailable: the server cannot be reached.
        """
        rows = conform(rows, FEATURES_SCHEMA, "features")

        async def after(conn: Connection) -> None:
            await self._update_latest(conn, rows)

        await self._write(_FEATURES, rows, checkpoint, after)

    async def read_latest_features(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's latest feature row per season, streamed in ``batch_rows`` tables."""
        where, args = _filters(("l.season = ", season), ("l.player_id = ANY", _int_list(player_ids)))
        cols = ", ".join(f"f.{c}" for c in FEATURES_SCHEMA.names)
        query = (
            f"SELECT {cols} FROM {self._t('latest_features')} l JOIN {self._t('features')} f"  # noqa: S608
            f" USING (player_id, season, as_of_seq){where}"
        )
        async for batch in self._stream("read latest features", query, *args, schema=FEATURES_SCHEMA):
            yield batch

    async def read_feature_history(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every stored feature row, streamed in ``batch_rows`` tables, in no fixed order."""
        where, args = _filters(("season = ANY", _int_list(seasons)))
        query = f"SELECT {', '.join(FEATURES_SCHEMA.names)} FROM {self._t('features')}{where}"  # noqa: S608
        async for batch in self._stream("read feature history", query, *args, schema=FEATURES_SCHEMA):
            yield batch

    async def write_predictions(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert predictions by ``(player_id, season, as_of_seq, model_version)``; idempotent."""
        rows = conform(rows, PREDICTIONS_SCHEMA, "predictions")
        await self._write(_PREDICTIONS, rows, checkpoint)

    async def read_predictions(
        self, *, season: int | None = None, player_id: int | None = None, latest_only: bool = False
    ) -> AsyncGenerator[pa.Table, None]:
        """Stored predictions, streamed; ``latest_only`` keeps the highest as-of, then model version."""
        where, args = _filters(("season = ", season), ("player_id = ", player_id))
        cols = ", ".join(PREDICTIONS_SCHEMA.names)
        if latest_only:
            # All DESC so the primary key index is walked backwards without a sort.
            query = (
                f"SELECT DISTINCT ON (player_id, season) {cols} FROM {self._t('predictions')}{where}"  # noqa: S608
                " ORDER BY player_id DESC, season DESC, as_of_seq DESC, model_version DESC"
            )
        else:
            query = f"SELECT {cols} FROM {self._t('predictions')}{where}"  # noqa: S608
        async for batch in self._stream("read predictions", query, *args, schema=PREDICTIONS_SCHEMA):
            yield batch

    async def cache_get(self, model_version: int, feature_hashes: Sequence[str]) -> dict[str, float]:
        """Cached probabilities for these hashes under ``model_version`` (hits only).

        Looks up ``batch_rows`` hashes per query, so a million-hash refeed is a few dozen
        index scans, not one giant statement.
        """
        hits: dict[str, float] = {}
        if not feature_hashes:
            return hits
        hashes = list(feature_hashes)
        async with self._connection("cache get") as conn:
            for off in range(0, len(hashes), self._batch_rows):
                rows = await conn.fetch(
                    f"SELECT feature_hash, probability FROM {self._t('prediction_cache')}"  # noqa: S608
                    " WHERE model_version = $1 AND feature_hash = ANY($2::text[])",
                    model_version,
                    hashes[off : off + self._batch_rows],
                )
                hits.update({row[0]: row[1] for row in rows})
        return hits

    async def cache_put(self, model_version: int, entries: Mapping[str, float]) -> None:
        """Add or replace cache entries (hash -> probability) for ``model_version``; idempotent."""
        if isinstance(model_version, bool) or not isinstance(model_version, int):
            raise StorageError(f"cache: model_version must be an int, got {model_version!r}")
        try:
            rows = pa.table(
                {
                    "feature_hash": pa.array(list(entries.keys()), pa.string()),
                    "model_version": pa.array(np.full(len(entries), model_version, dtype=np.int64)),
                    "probability": pa.array(list(entries.values()), pa.float64()),
                }
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise StorageError(f"cache: entries must map str hashes to float probabilities: {exc}") from exc
        await self._write(_CACHE, conform(rows, CACHE_SCHEMA, "cache"), None)

    async def cache_clear(self) -> int:
        """Drop every cache entry; return how many there were.

        Locks the table first so the count is exactly what ``TRUNCATE`` drops.
        """
        async with self._transaction("cache clear") as conn:
            table = self._t("prediction_cache")
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            await conn.execute(f"TRUNCATE {table}")
        log.info("storage.postgres.cache_cleared", entries=count)
        return count

    async def write_outcomes(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert outcomes by ``(player_id, season)``; ``early`` never replaces ``final``.

        Within one batch a ``final`` row of a key wins over an ``early`` one.

        Raises:
            StorageError: bad schema, or a resolution other than ``early``/``final``.
        """
        rows = conform(rows, OUTCOMES_SCHEMA, "outcomes")
        bad = pc.invert(pc.is_in(rows.column("resolution"), value_set=pa.array(RESOLUTIONS)))
        if pc.any(bad).as_py():
            examples = pc.unique(pc.filter(rows.column("resolution"), bad)).to_pylist()[:5]
            raise StorageError(
                f"outcomes: column resolution must be one of {list(RESOLUTIONS)}, got {examples}"
            )
        await self._write(_OUTCOMES, rows, checkpoint)

    async def read_outcomes(self, *, season: int | None = None) -> AsyncGenerator[pa.Table, None]:
        """Stored outcomes, streamed, filtered by season when given."""
        where, args = _filters(("season = ", season))
        query = f"SELECT {', '.join(OUTCOMES_SCHEMA.names)} FROM {self._t('outcomes')}{where}"  # noqa: S608
        async for batch in self._stream("read outcomes", query, *args, schema=OUTCOMES_SCHEMA):
            yield batch

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The checkpoint's committed value, or ``None`` if never written."""
        check_checkpoint_name(name)
        async with self._connection("get checkpoint") as conn:
            value: bytes | None = await conn.fetchval(
                f"SELECT value FROM {self._t('checkpoints')} WHERE name = $1",  # noqa: S608
                name,
            )
        return value

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        """Atomically replace a checkpoint's value; idempotent."""
        _check_checkpoint(name, value)
        async with self._transaction("put checkpoint") as conn:
            await self._put_checkpoint(conn, name, value)

    async def export_training_set(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every feature row of a player-season with an outcome, labelled (``TRAINING_SCHEMA``)."""
        where, args = _filters(("f.season = ANY", _int_list(seasons)))
        cols = ", ".join([*(f"f.{c}" for c in FEATURES_SCHEMA.names), "o.beat", "o.resolution"])
        query = (
            f"SELECT {cols} FROM {self._t('features')} f JOIN {self._t('outcomes')} o"  # noqa: S608
            f" USING (player_id, season){where}"
        )
        async for batch in self._stream("export training set", query, *args, schema=TRAINING_SCHEMA):
            yield batch


def _discard(future: asyncio.Future[Any] | None) -> None:
    """Cancel work we no longer need, and never leave its error unretrieved."""
    if future is None:
        return
    future.cancel()
    if future.done() and not future.cancelled():
        future.exception()


async def _once(payload: bytes) -> AsyncIterator[bytes]:
    """A COPY source sending ``payload`` as it is (asyncpg would take a bare ``bytes`` for a path)."""
    yield payload


def _check_checkpoint(name: str, value: bytes) -> None:
    check_checkpoint_name(name)
    if not isinstance(value, bytes):
        raise StorageError(f"checkpoint {name!r}: value must be bytes, got {type(value).__name__}")


def _int_list(values: Collection[int] | None) -> list[int] | None:
    return None if values is None else list(values)


def _filters(*conditions: tuple[str, object]) -> tuple[str, list[object]]:
    """A ``WHERE`` clause from fixed SQL fragments whose value is not ``None``, values as parameters.

    ``("season = ", 2024)`` becomes ``season = $1``; a fragment ending in ``ANY`` gets ``($n)``.
    """
    parts: list[str] = []
    args: list[object] = []
    for fragment, value in conditions:
        if value is None:
            continue
        args.append(value)
        parts.append(f"{fragment}(${len(args)})" if fragment.endswith("ANY") else f"{fragment}${len(args)}")
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


@asynccontextmanager
async def open_postgres(cfg: StorageConfig) -> AsyncIterator[PostgresStorage]:
    """Connect a pool, create/migrate the schema, yield a ready :class:`PostgresStorage`.

    The pool (``min_pool``..``max_pool`` connections, ``command_timeout_s`` per statement and
    per connection attempt) is closed on exit, waiting up to 10 s for borrowed connections.

    Raises:
        StorageUnavailable: no DSN configured, or the server cannot be reached or refuses us.
        StorageError: bad schema name, a DSN asyncpg cannot parse, or the schema is newer or
            differs from this code's migrations.
    """
    pg = cfg.postgres
    if pg.dsn is None:
        raise StorageUnavailable(f"postgres: no DSN: set the environment variable {pg.dsn_env}")
    schema = check_schema_name(pg.schema)
    dsn = pg.dsn.get()
    redactor = _Redactor(dsn)
    where = {**_dsn_summary(dsn), "schema": schema}
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=pg.min_pool,
            max_size=pg.max_pool,
            command_timeout=pg.command_timeout_s,
            timeout=pg.command_timeout_s,
            init=init_connection,
            server_settings={"application_name": "scorebeater", "timezone": "UTC"},
        )
    except _CONNECT_ERRORS as exc:
        raise redactor.error("connect", exc) from exc
    try:
        try:
            async with pool.acquire(timeout=pg.command_timeout_s) as conn:
                applied = await migrate(conn, schema)
        except _DRIVER_ERRORS as exc:
            raise redactor.error("migrate", exc) from exc
        log.info("storage.postgres.opened", **where, migrations_applied=applied, max_pool=pg.max_pool)
        yield PostgresStorage(
            pool, schema=schema, batch_rows=cfg.batch_rows, timeout_s=pg.command_timeout_s, redactor=redactor
        )
    finally:
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("storage.postgres.close_timed_out", **where, timeout_s=_CLOSE_TIMEOUT_S)
            pool.terminate()
        log.info("storage.postgres.closed", **where)
