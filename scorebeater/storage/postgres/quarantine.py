"""The dead-letter table of the Postgres backend: the ``quarantine`` table (migration 0002).

SQL is static text built from constants (the table and column names of
``QUARANTINE_SCHEMA``, the checked schema name); every value is a bind parameter. That is what
each ``# noqa: S608`` below vouches for.
"""

from __future__ import annotations

from collections.abc import Sequence

from scorebeater.storage.postgres.connection import Connection, Database
from scorebeater.storage.postgres.writer import TableWriter
from scorebeater.storage.quarantine import (
    QUARANTINE_SCHEMA,
    QuarantineEntry,
    QuarantineState,
    check_state,
    entries_from_table,
    entries_table,
)

_COLUMNS = QUARANTINE_SCHEMA.names
_UPDATED = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS if c != "id")


class PostgresQuarantine:
    """``Quarantine`` over the ``quarantine`` table (get it as ``PostgresStorage.quarantine``)."""

    def __init__(self, db: Database, writer: TableWriter) -> None:
        self._db = db
        self._writer = writer
        """Carries the leadership term: puts and decisions are fenced like every write."""
        self._table = db.table("quarantine")

    async def put(self, entries: Sequence[QuarantineEntry]) -> None:
        """Insert or replace entries by ``(kind, key)`` in one transaction (none when empty).

        Raises:
            StorageError: an invalid entry, or a database error. StorageUnavailable: the
                server cannot be reached. Fenced: a newer leadership term began (nothing written).
        """
        rows = entries_table(entries)
        if not rows.num_rows:
            return
        values = [tuple(row.values()) for row in rows.to_pylist()]
        placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))

        async def body(conn: Connection) -> None:
            await conn.executemany(
                f"INSERT INTO {self._table} ({', '.join(_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
                f" ON CONFLICT (id) DO UPDATE SET {_UPDATED}",
                values,
            )

        await self._writer.commit("quarantine put", body)

    async def entries(
        self, *, season: int | None = None, state: str | None = None, kind: str | None = None
    ) -> list[QuarantineEntry]:
        """Stored entries matching the filters given, in ``(season, kind, key)`` order."""
        if state is not None:
            check_state(state)
        query = (
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table}"  # noqa: S608
            " WHERE ($1::int4 IS NULL OR season = $1) AND ($2::text IS NULL OR state = $2)"
            " AND ($3::text IS NULL OR kind = $3) ORDER BY season, kind, key"
        )
        found: list[QuarantineEntry] = []
        async for table in self._db.stream(
            "quarantine entries", query, season, state, kind, schema=QUARANTINE_SCHEMA
        ):
            found += entries_from_table(table)
        return found

    async def get(self, entry_id: int) -> QuarantineEntry | None:
        """The entry with this id, or ``None``."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM {self._table} WHERE id = $1"  # noqa: S608
        found: list[QuarantineEntry] = []
        async for table in self._db.stream("quarantine get", query, entry_id, schema=QUARANTINE_SCHEMA):
            found += entries_from_table(table)
        return found[0] if found else None

    async def set_state(self, entry_id: int, state: QuarantineState) -> QuarantineEntry | None:
        """Set the entry's state in one statement; ``None`` if there is no such entry."""
        check_state(state)

        async def body(conn: Connection) -> object:
            return await conn.fetchval(
                f"UPDATE {self._table} SET state = $2 WHERE id = $1 RETURNING id",  # noqa: S608
                entry_id,
                state,
            )

        updated = await self._writer.commit("quarantine set state", body)
        if updated is None:
            return None
        return await self.get(entry_id)
