"""The ``Storage`` protocol over an asyncpg pool, and ``open_postgres`` that builds it.

Layout: one schema (``storage.postgres.schema``) holding a table per kind of data, with the
primary keys of :mod:`scorebeater.storage.base`, plus ``latest_features`` (which as-of row is
each player-season's latest, kept in the same transaction as feature writes) and
``schema_migrations`` (:mod:`~scorebeater.storage.postgres.migration`), and ``quarantine``
(:mod:`~scorebeater.storage.postgres.quarantine`). Writes are
:mod:`~scorebeater.storage.postgres.writer`'s, reads stream through
:meth:`Database.stream <scorebeater.storage.postgres.connection.Database.stream>`.

SQL is static text built from constants (table and column names from the Arrow schemas, the
schema name after ``check_schema_name``, quoted); every value is a bind parameter. That is
what each ``# noqa: S608`` below vouches for.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
import pyarrow as pa
import structlog

from scorebeater.errors import StorageUnavailable
from scorebeater.storage.base import (
    EARLY_COLUMNS,
    FEATURES_SCHEMA,
    OUTCOMES_SCHEMA,
    PAGE_PLAYER_COLUMNS,
    PAGE_SCHEMA,
    PREDICTIONS_SCHEMA,
    TRAINING_SCHEMA,
    CheckpointWrite,
    check_checkpoint,
    check_checkpoint_name,
    check_model_version,
    check_page,
    check_role,
    check_schema_name,
    conform_features,
    conform_outcomes,
    conform_predictions,
)
from scorebeater.storage.inflight import DRAIN_TIMEOUT_S
from scorebeater.storage.postgres.cache import PostgresPredictionCache
from scorebeater.storage.postgres.codec import copy_select, init_connection, to_arrow
from scorebeater.storage.postgres.connection import (
    CONNECT_ERRORS,
    DRIVER_ERRORS,
    Connection,
    Database,
    Redactor,
    dsn_summary,
)
from scorebeater.storage.postgres.copyout import stream_copy
from scorebeater.storage.postgres.migration import migrate
from scorebeater.storage.postgres.quarantine import PostgresQuarantine
from scorebeater.storage.postgres.writer import FEATURES, OUTCOMES, PREDICTIONS, TableWriter

if TYPE_CHECKING:
    from scorebeater.config import StorageConfig

log = structlog.get_logger(__name__)

_CLOSE_TIMEOUT_S = 10.0


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
        redactor: Redactor,
    ) -> None:
        self._db = Database(
            pool, schema=schema, batch_rows=batch_rows, timeout_s=timeout_s, redactor=redactor
        )
        self._writer = TableWriter(self._db)
        self._cache = PostgresPredictionCache(self._db, self._writer)
        self._quarantine = PostgresQuarantine(self._db, self._writer)

    @property
    def cache(self) -> PostgresPredictionCache:
        """The prediction cache, in the ``prediction_cache`` table of the same schema."""
        return self._cache

    @property
    def quarantine(self) -> PostgresQuarantine:
        """The dead-letter table, in the ``quarantine`` table of the same schema."""
        return self._quarantine

    def _t(self, table: str) -> str:
        return self._db.table(table)

    async def drain_commits(self, *, timeout_s: float | None = DRAIN_TIMEOUT_S) -> None:
        """Wait for write transactions still running after their callers were cancelled
        (see the protocol and :mod:`scorebeater.storage.inflight`); called on close."""
        await self._writer.commits.drain(timeout_s)

    async def _update_latest(self, conn: Connection, rows: pa.Table) -> None:
        latest = (
            rows.select(["player_id", "season", "as_of_seq"])
            .group_by(["player_id", "season"])
            .aggregate([("as_of_seq", "max")])
        )
        batch_rows = self._db.batch_rows
        for off in range(0, latest.num_rows, batch_rows):
            part = latest.slice(off, batch_rows)
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
        async with self._db.connection("ping") as conn:
            read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')")
        if read_only != "off":
            raise StorageUnavailable("postgres ping failed: the server is read-only (a standby?)")

    async def write_features(
        self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None, allow_missing_inputs: bool = False
    ) -> None:
        """Upsert feature rows by ``(player_id, season, as_of_seq)``; see the Storage protocol.

        One transaction: the rows, the latest-row pointers and the checkpoint commit together.
        Idempotent; within one batch the last row of a key wins.

        Raises:
            StorageError: the table does not fit ``FEATURES_SCHEMA`` (or lacks an input:
                :func:`~scorebeater.storage.base.conform_features`), a bad checkpoint, or a
                database error. StorageUnavailable: the server cannot be reached.
        """
        rows = conform_features(rows, allow_missing_inputs=allow_missing_inputs)

        async def after(conn: Connection) -> None:
            await self._update_latest(conn, rows)

        await self._writer.write(FEATURES, rows, checkpoint, after)

    async def read_latest_features(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's latest feature row per season, streamed in ``batch_rows`` tables."""
        where, args = _filters(("l.season = ", season), ("l.player_id = ANY", _int_list(player_ids)))
        op = "read latest features"
        joined = (
            f" FROM {self._t('latest_features')} l JOIN {self._t('features')} f"
            f" USING (player_id, season, as_of_seq){where}"
        )
        if player_ids is None:
            # Scans (a season, every season): binary COPY decoded column by column (copyout).
            query = f"SELECT {copy_select(FEATURES_SCHEMA, 'f')}{joined}"
            async for batch in stream_copy(self._db, op, query, *args, schema=FEATURES_SCHEMA):
                yield batch
            return
        # Lookups of a few players (the read API's pages): one statement, no COPY set-up.
        query = f"SELECT {', '.join(f'f.{c}' for c in FEATURES_SCHEMA.names)}{joined}"
        async for batch in self._db.stream(op, query, *args, schema=FEATURES_SCHEMA):
            yield batch

    async def read_latest_features_with_stored(
        self, *, model_version: int, role: str = "champion"
    ) -> AsyncGenerator[pa.Table, None]:
        """Every season's latest feature rows (as :meth:`read_latest_features`), each with its
        stored prediction by ``model_version`` for ``role``: ``STORED_PREDICTION_SCHEMA``'s
        columns appended, null where none is stored for the row's key, feature hash and as-of
        time. The refeed reads this, so it need not rewrite predictions that would not change
        (a write would cost an index probe and a row lock each, even for an equal row).

        Raises:
            StorageError: a bad role. StorageUnavailable: the server cannot be reached.
        """
        schema = pa.schema([*FEATURES_SCHEMA, *STORED_PREDICTION_SCHEMA])
        stored = {f.name: f"p.{f.name.removeprefix('stored_')}" for f in STORED_PREDICTION_SCHEMA}
        query = (
            f"SELECT {copy_select(schema, 'f', stored)} FROM {self._t('latest_features')} l"  # noqa: S608
            f" JOIN {self._t('features')} f USING (player_id, season, as_of_seq)"
            f" LEFT JOIN {self._t('predictions')} p ON p.player_id = f.player_id AND p.season = f.season"
            " AND p.as_of_seq = f.as_of_seq AND p.model_version = $1 AND p.role = $2"
            " AND p.feature_hash = f.feature_hash AND p.as_of_time = f.as_of_time"
        )
        args = (check_model_version(model_version), check_role(role))
        async for batch in stream_copy(self._db, "read latest features", query, *args, schema=schema):
            yield batch

    async def read_feature_history(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every stored feature row, streamed in ``batch_rows`` tables, in no fixed order."""
        where, args = _filters(("season = ANY", _int_list(seasons)))
        query = f"SELECT {', '.join(FEATURES_SCHEMA.names)} FROM {self._t('features')}{where}"  # noqa: S608
        async for batch in self._db.stream("read feature history", query, *args, schema=FEATURES_SCHEMA):
            yield batch

    async def read_features_at(
        self, *, season: int, points: Mapping[int, int]
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's feature row at his point, else his latest before it (see the protocol):
        one primary key probe per player, walked backwards from ``(player, season, point)``."""
        if not points:
            return
        cols = ", ".join(f"f.{c}" for c in FEATURES_SCHEMA.names)
        query = (
            f"SELECT {cols} FROM unnest($1::int8[], $2::int4[]) k(player_id, as_of_seq)"  # noqa: S608
            f" CROSS JOIN LATERAL (SELECT * FROM {self._t('features')} f"
            " WHERE f.player_id = k.player_id AND f.season = $3 AND f.as_of_seq <= k.as_of_seq"
            " ORDER BY f.as_of_seq DESC LIMIT 1) f"
        )
        ids = [operator.index(p) for p in points]
        seqs = [operator.index(points[p]) for p in points]
        async for batch in self._db.stream(
            "read features at", query, ids, seqs, season, schema=FEATURES_SCHEMA
        ):
            yield batch

    async def write_predictions(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert predictions by ``(player_id, season, as_of_seq, model_version)``; idempotent."""
        await self._writer.write(PREDICTIONS, conform_predictions(rows), checkpoint)

    async def read_predictions(
        self,
        *,
        season: int | None = None,
        player_id: int | None = None,
        latest_only: bool = False,
        role: str | None = "champion",
    ) -> AsyncGenerator[pa.Table, None]:
        """Stored predictions of ``role`` (``None``: all), streamed; ``latest_only`` keeps, among
        them, the highest as-of, then model version."""
        where, args = _filters(
            ("season = ", season), ("player_id = ", player_id), ("role = ", check_role(role))
        )
        cols = ", ".join(PREDICTIONS_SCHEMA.names)
        if latest_only:
            # All DESC so the primary key index is walked backwards without a sort.
            query = (
                f"SELECT DISTINCT ON (player_id, season) {cols} FROM {self._t('predictions')}{where}"  # noqa: S608
                " ORDER BY player_id DESC, season DESC, as_of_seq DESC, model_version DESC"
            )
        else:
            query = f"SELECT {cols} FROM {self._t('predictions')}{where}"  # noqa: S608
        async for batch in self._db.stream("read predictions", query, *args, schema=PREDICTIONS_SCHEMA):
            yield batch

    async def write_outcomes(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert outcomes by ``(player_id, season)``; ``early`` never replaces ``final``.

        Within one batch a ``final`` row of a key wins over an ``early`` one. A replacing row
        keeps the stored ``resolved_early_*`` where its own are null (``COALESCE`` in the
        same upsert).

        Raises:
            StorageError: bad schema, or a resolution other than ``early``/``final``.
        """
        await self._writer.write(OUTCOMES, conform_outcomes(rows), checkpoint)

    async def read_latest_predictions_page(
        self, *, season: int, after_player_id: int | None = None, limit: int, role: str = "champion"
    ) -> pa.Table:
        """The first ``limit`` players' latest predictions after ``after_player_id`` (see the
        protocol), in one statement that stays on the primary key indexes: the page's player
        ids are a walk of the predictions index from ``after_player_id``, then per player an
        index probe each for his latest row, his previous point, his latest feature row and
        his outcome (O(limit) rows read whatever the season's size)."""
        limit, role, after = check_page(limit=limit, role=role, after_player_id=after_player_id)
        cols = ", ".join(f"p.{c}" for c in PREDICTIONS_SCHEMA.names)
        player = ", ".join(f"f.{c}" for c in PAGE_PLAYER_COLUMNS)
        t = self._t("predictions")
        args: list[object] = [season, role, limit]
        after_clause = ""
        if after is not None:  # a separate statement: "$n IS NULL OR ..." would hide the range
            args.append(after)
            after_clause = " AND player_id > $4"
        # Each LATERAL ... LIMIT 1 is a probe of a primary key index, walked backwards from the
        # highest key of the player-season (his latest row), from the row's point (his previous
        # one, and his feature row at that point: the one the prediction was made from, never a
        # newer game's counts beside an older game's probability). As plain joins the planner
        # may hash a season's outcomes for one page, and DISTINCT ON with a descending sort key
        # sorts everything after the cursor. The ids walk reads each of a page player's rows of
        # the season (O(limit x his rows)).
        query = (
            f"SELECT {cols}, prev.probability, {player}, o.beat, o.resolution FROM ("  # noqa: S608
            f" SELECT DISTINCT player_id FROM {t} WHERE season = $1 AND role = $2{after_clause}"
            " ORDER BY player_id LIMIT $3) ids"
            f" CROSS JOIN LATERAL (SELECT * FROM {t} p"
            " WHERE p.player_id = ids.player_id AND p.season = $1 AND p.role = $2"
            " ORDER BY p.as_of_seq DESC, p.model_version DESC LIMIT 1) p"
            f" LEFT JOIN LATERAL (SELECT q.probability FROM {t} q"
            " WHERE q.player_id = p.player_id AND q.season = p.season AND q.role = p.role"
            " AND q.as_of_seq < p.as_of_seq ORDER BY q.as_of_seq DESC, q.model_version DESC LIMIT 1)"
            " prev ON true"
            f" LEFT JOIN LATERAL (SELECT {player} FROM {self._t('features')} f"
            " WHERE f.player_id = p.player_id AND f.season = p.season AND f.as_of_seq <= p.as_of_seq"
            " ORDER BY f.as_of_seq DESC LIMIT 1) f ON true"
            f" LEFT JOIN LATERAL (SELECT o.beat, o.resolution FROM {self._t('outcomes')} o"
            " WHERE o.player_id = p.player_id AND o.season = p.season LIMIT 1) o ON true"
            " ORDER BY ids.player_id"
        )
        async with self._db.transaction("read predictions page") as conn:
            # A page is a short index walk: parallel workers would only add their start-up
            # (about 5 ms a page, more than the walk), and a memo of lookups of distinct keys
            # never hits.
            await conn.execute(
                "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL enable_memoize = off"
            )
            records = await conn.fetch(query, *args)
        return await asyncio.to_thread(to_arrow, records, PAGE_SCHEMA)

    async def read_outcomes(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Stored outcomes, streamed, filtered by season and/or player ids when given."""
        where, args = _filters(("season = ", season), ("player_id = ANY", _int_list(player_ids)))
        query = f"SELECT {', '.join(OUTCOMES_SCHEMA.names)} FROM {self._t('outcomes')}{where}"  # noqa: S608
        async for batch in self._db.stream("read outcomes", query, *args, schema=OUTCOMES_SCHEMA):
            yield batch

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The checkpoint's committed value, or ``None`` if never written."""
        check_checkpoint_name(name)
        async with self._db.connection("get checkpoint") as conn:
            value: bytes | None = await conn.fetchval(
                f"SELECT value FROM {self._t('checkpoints')} WHERE name = $1",  # noqa: S608
                name,
            )
        return value

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        """Atomically replace a checkpoint's value; idempotent."""
        check_checkpoint(name, value)

        async def body(conn: Connection) -> None:
            await self._writer.put_checkpoint(conn, name, value)

        await self._writer.commit("put checkpoint", body)

    async def set_fencing_token(self, token: int | None, *, nonce: str = "") -> None:
        """Check every later write's transaction against the ``leadership`` term and nonce
        (see the protocol); the elector has already bumped the term, so nothing is written here."""
        self._writer.fencing_token = token
        self._writer.fencing_nonce = nonce if token is not None else ""

    async def checkpoint_names(self) -> list[str]:
        """Every stored checkpoint's name, sorted."""
        async with self._db.connection("checkpoint names") as conn:
            rows = await conn.fetch(f"SELECT name FROM {self._t('checkpoints')} ORDER BY name")  # noqa: S608
        return [str(row[0]) for row in rows]

    async def stored_rows(self) -> dict[str, dict[int, int]]:
        """Exact rows per table and partition: one ``count(*) ... GROUP BY`` scan of each
        table, all in one read-only snapshot."""
        counts: dict[str, dict[int, int]] = {}
        async with (
            self._db.connection("stored rows") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            for name, table, column in _STORED_TABLES:
                rows = await conn.fetch(
                    f"SELECT {column}, count(*) FROM {self._t(table)} GROUP BY {column}"  # noqa: S608
                )
                if rows:
                    counts[name] = {int(row[0]): int(row[1]) for row in rows}
        return counts

    async def export_training_set(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every feature row of a player-season with an outcome, labelled (``TRAINING_SCHEMA``)."""
        where, args = _filters(("f.season = ANY", _int_list(seasons)))
        labels = ["beat", "resolution", *EARLY_COLUMNS]
        cols = ", ".join([*(f"f.{c}" for c in FEATURES_SCHEMA.names), *(f"o.{c}" for c in labels)])
        query = (
            f"SELECT {cols} FROM {self._t('features')} f JOIN {self._t('outcomes')} o"  # noqa: S608
            f" USING (player_id, season){where}"
        )
        async for batch in self._db.stream("export training set", query, *args, schema=TRAINING_SCHEMA):
            yield batch


STORED_PREDICTION_SCHEMA = pa.schema(
    [pa.field("stored_probability", pa.float64()), pa.field("stored_progress", pa.float32())]
)
"""What :meth:`PostgresStorage.read_latest_features_with_stored` appends to each feature row."""

_STORED_TABLES = (
    ("features", "features", "season"),
    ("features_latest", "latest_features", "season"),
    ("predictions", "predictions", "season"),
    ("outcomes", "outcomes", "season"),
    ("cache", "prediction_cache", "model_version"),
    ("quarantine", "quarantine", "season"),
)
"""``stored_rows``: (the name it reports, the SQL table, the partition column): constants."""


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
    redactor = Redactor(dsn)
    where = {**dsn_summary(dsn), "schema": schema}
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
    except CONNECT_ERRORS as exc:
        raise redactor.error("connect", exc) from exc
    try:
        try:
            async with pool.acquire(timeout=pg.command_timeout_s) as conn:
                applied = await migrate(conn, schema)
        except DRIVER_ERRORS as exc:
            raise redactor.error("migrate", exc) from exc
        log.info("storage.postgres.opened", **where, migrations_applied=applied, max_pool=pg.max_pool)
        storage = PostgresStorage(
            pool, schema=schema, batch_rows=cfg.batch_rows, timeout_s=pg.command_timeout_s, redactor=redactor
        )
        try:
            yield storage
        finally:
            await storage.drain_commits()
    finally:
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("storage.postgres.close_timed_out", **where, timeout_s=_CLOSE_TIMEOUT_S)
            pool.terminate()
        log.info("storage.postgres.closed", **where)
