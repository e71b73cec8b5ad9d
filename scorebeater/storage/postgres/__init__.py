"""PostgreSQL backend: an asyncpg pool over a schema this package creates and migrates.

``open_postgres(cfg)`` connects a pool, brings the schema to the newest packaged migration
and yields a ready :class:`PostgresStorage`. Modules, in import order: ``codec`` (Arrow to the
binary ``COPY`` format and back), ``connection`` (pool access, streamed reads, driver errors
without secrets), ``migration`` (versioned DDL under ``migrations/``, applied under an
advisory lock), ``writer`` (transactional upserts: ``COPY`` first, ``ON CONFLICT`` when keys
exist), ``cache`` (the prediction cache), ``quarantine`` (the dead-letter table) and
``backend`` (``PostgresStorage`` and ``open_postgres``).
"""

from scorebeater.storage.postgres.backend import PostgresStorage, open_postgres
from scorebeater.storage.postgres.cache import PostgresPredictionCache
from scorebeater.storage.postgres.codec import PG_TYPES, copy_columns, copy_payload, init_connection
from scorebeater.storage.postgres.migration import Migration, load_migrations, migrate, migration_lock_key

__all__ = [
    "PG_TYPES",
    "Migration",
    "PostgresPredictionCache",
    "PostgresStorage",
    "copy_columns",
    "copy_payload",
    "init_connection",
    "load_migrations",
    "migrate",
    "migration_lock_key",
    "open_postgres",
]
