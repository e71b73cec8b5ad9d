"""The Postgres backend's schema: versioned DDL files, applied once, in order, under a lock.

The DDL lives in ``migrations/NNNN_name.sql`` beside this module (package data). ``migrate``
applies the missing ones on open, in one transaction, under a transaction-level advisory lock
per schema, so two processes never migrate at once and a half-applied version never exists.
An applied file must never change: its checksum is recorded and checked.
"""

from __future__ import annotations

import hashlib
import operator
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from scorebeater.errors import StorageError
from scorebeater.storage.base import check_schema_name
from scorebeater.storage.postgres.connection import Connection, quote_ident

_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_LOCK_CLASS = b"scorebeater.storage.postgres.migrate:"


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned DDL file: ``NNNN_name.sql`` under ``scorebeater/storage/postgres/migrations``."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the SQL, recorded when applied: an edited file is detected."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> tuple[Migration, ...]:
    """The packaged migrations in version order.

    Raises:
        StorageError: a file is misnamed, or versions are not 1, 2, 3, ... without gaps.
    """
    found: list[Migration] = []
    for entry in resources.files("scorebeater.storage.postgres").joinpath("migrations").iterdir():
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
    q = quote_ident(check_schema_name(schema))
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
