"""The prediction cache of the Postgres backend: the ``prediction_cache`` table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence

import pyarrow as pa
import structlog

from scorebeater.storage.base import CACHE_SCHEMA, cache_rows, check_model_version
from scorebeater.storage.postgres.connection import Connection, Database
from scorebeater.storage.postgres.writer import CACHE, TableWriter

log = structlog.get_logger(__name__)


class PostgresPredictionCache:
    """``PredictionCache`` over the ``prediction_cache`` table (get it as ``PostgresStorage.cache``)."""

    def __init__(self, db: Database, writer: TableWriter) -> None:
        self._db = db
        self._writer = writer

    async def get(self, model_version: int, feature_hashes: Sequence[str]) -> dict[str, float]:
        """Cached probabilities for these hashes under ``model_version`` (hits only).

        Looks up ``batch_rows`` hashes per query, so a million-hash refeed is a few dozen
        index scans, not one giant statement.

        Raises:
            StorageError: a bad model version. StorageUnavailable: the server is unreachable.
        """
        version = check_model_version(model_version)
        hits: dict[str, float] = {}
        if not feature_hashes:
            return hits
        hashes = list(feature_hashes)
        batch_rows = self._db.batch_rows
        async with self._db.connection("cache get") as conn:
            for off in range(0, len(hashes), batch_rows):
                rows = await conn.fetch(
                    f"SELECT feature_hash, probability FROM {self._db.table(CACHE.name)}"  # noqa: S608
                    " WHERE model_version = $1 AND feature_hash = ANY($2::text[])",
                    version,
                    hashes[off : off + batch_rows],
                )
                hits.update({row[0]: row[1] for row in rows})
        return hits

    async def put(self, model_version: int, entries: Mapping[str, float]) -> None:
        """Add or replace cache entries (hash -> probability) for ``model_version``; idempotent.

        Written in hash order (byte order; for hex hashes also the index's order under the
        usual collations).

        Raises:
            StorageError: a bad model version or entries, or a database error.
        """
        rows = cache_rows(model_version, entries)
        # In key order, each leaf page of the primary key index is visited once, not once per
        # entry: about twice as fast for a large batch (a refeed's), whatever the table's size.
        await self._writer.write(CACHE, await asyncio.to_thread(rows.sort_by, "feature_hash"), None)

    async def read_entries(self, *, model_version: int | None = None) -> AsyncGenerator[pa.Table, None]:
        """Every entry (``CACHE_SCHEMA``), or ``model_version``'s, streamed from one snapshot.

        Raises:
            StorageError: a bad model version. StorageUnavailable: the server is unreachable.
        """
        version = None if model_version is None else check_model_version(model_version)
        query = (
            f"SELECT {', '.join(CACHE_SCHEMA.names)} FROM {self._db.table(CACHE.name)}"  # noqa: S608
            " WHERE ($1::int8 IS NULL OR model_version = $1)"
        )
        async for table in self._db.stream("cache entries", query, version, schema=CACHE_SCHEMA):
            yield table

    async def clear(self) -> int:
        """Drop every cache entry; return how many there were.

        Locks the table first so the count is exactly what ``TRUNCATE`` drops. Fenced like
        every write (:meth:`TableWriter.fence`).

        Raises:
            Fenced: a newer leadership term began (nothing was dropped).
        """
        table = self._db.table(CACHE.name)

        async def body(conn: Connection) -> int:
            await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            count: int = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            await conn.execute(f"TRUNCATE {table}")
            return count

        count = await self._writer.commit("cache clear", body)
        log.info("storage.postgres.cache_cleared", entries=count)
        return count
