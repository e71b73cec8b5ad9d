"""Postgres backend specifics, against a real Postgres 15 (the ``pg_dsn`` session fixture).

The storage contract suite (tests/contract/test_storage.py) covers the behaviour every backend
shares; these cases cover what only this backend has: versioned migrations under an advisory
lock, the schema's column types, the COPY fast path and its staging fallback, error mapping
without secrets, and SQL built only from constants.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pyarrow as pa
import pytest
from structlog.testing import capture_logs

from scorebeater.config import PostgresStorageConfig, Secret, StorageConfig
from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.inputs import INPUT_NAMES
from scorebeater.storage.base import (
    CACHE_SCHEMA,
    EARLY_COLUMNS,
    FEATURES_SCHEMA,
    LATE_INPUTS,
    OUTCOMES_SCHEMA,
    PREDICTIONS_SCHEMA,
    TRAINING_SCHEMA,
    Storage,
    conform,
    feature_hashes,
    upgraded_features,
)
from scorebeater.storage.postgres import PG_TYPES, migrate, migration_lock_key, open_postgres
from scorebeater.storage.postgres.migration import load_migrations
from scorebeater.storage.postgres.writer import FEATURES, OUTCOMES
from scorebeater.storage.quarantine import QUARANTINE_SCHEMA

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Iterator

pytestmark = pytest.mark.services

PASSWORD = "pw-Zq8x!s3cr3t"
T0 = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _with_password(dsn: str, password: str = PASSWORD) -> str:
    """The same DSN with a password (trust auth accepts any), to prove it never leaks."""
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{password.replace('!', '%21')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _cfg(dsn: str, schema: str, *, batch_rows: int = 1000) -> StorageConfig:
    return StorageConfig(
        backend="postgres",
        batch_rows=batch_rows,
        postgres=PostgresStorageConfig(
            dsn=Secret(dsn), schema=schema, min_pool=1, max_pool=3, command_timeout_s=20
        ),
    )


def features(
    n: int,
    *,
    player_id: int = 1,
    season: int = 2024,
    start_seq: int = 1,
    bump: float = 0.0,
    player: str = "Ann",
) -> pa.Table:
    seqs = list(range(start_seq, start_seq + n))
    cols: dict[str, pa.Array] = {
        "player_id": pa.array([player_id] * n, pa.int64()),
        "season": pa.array([season] * n, pa.int32()),
        "as_of_seq": pa.array(seqs, pa.int32()),
        "as_of_game_id": pa.array([f"g{s}" for s in seqs]),
        "as_of_time": pa.array(
            [T0 + timedelta(days=s) for s in seqs], FEATURES_SCHEMA.field("as_of_time").type
        ),
        "player": pa.array([player] * n),
        "team": pa.array(["BOS"] * n),
    }
    for k, name in enumerate(INPUT_NAMES):
        # Wrapped at 30: inputs stay within their bounds (storage.base.COLUMN_BOUNDS).
        cols[name] = pa.array([(s * 1.1) % 30 + k + bump for s in seqs], pa.float32())
    table = pa.table({**cols, "feature_hash": pa.array([""] * n)})
    table = table.set_column(table.num_columns - 1, "feature_hash", pa.array(feature_hashes(table)))
    return conform(table, FEATURES_SCHEMA, "test features")


def outcome(player_id: int, resolution: str, *, beat: bool = True, seq: int = 10) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "player_id": player_id,
                "season": 2024,
                "beat": beat,
                "resolution": resolution,
                "resolved_seq": seq,
                "resolved_at": T0,
                "ftm": 100,
                "prev_ftm": 90,
                "resolved_early_seq": seq if resolution == "early" else None,
                "resolved_early_at": T0 if resolution == "early" else None,
            }
        ],
        schema=OUTCOMES_SCHEMA,
    )


async def collect(stream: AsyncGenerator[pa.Table, None], schema: pa.Schema) -> pa.Table:
    async with aclosing(stream) as batches:
        tables = [b async for b in batches]
    for t in tables:
        assert t.schema.equals(schema)
    return pa.concat_tables(tables) if tables else schema.empty_table()


@pytest.fixture(name="schema")
def _schema(pg_dsn: str) -> Iterator[str]:
    """A unique schema name per test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(name="raw")
async def _raw(pg_dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


# --- migrations -------------------------------------------------------------------------------


async def test_open_creates_schema_and_reopen_is_idempotent(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    with capture_logs() as logs:
        async with open_postgres(_cfg(pg_dsn, schema)) as st:
            storage: Storage = st  # mypy checks the signatures match the protocol
            await storage.ping()
            await st.ping()
        async with open_postgres(_cfg(pg_dsn, schema)):
            pass
    opened = [e for e in logs if e["event"] == "storage.postgres.opened"]
    assert [e["migrations_applied"] for e in opened] == [[1, 2, 3, 4, 5, 6], []]
    rows = await raw.fetch(f'SELECT version, name FROM "{schema}".schema_migrations ORDER BY version')  # noqa: S608 - a test-made schema name
    assert [(r["version"], r["name"]) for r in rows] == [
        (1, "initial"),
        (2, "quarantine"),
        (3, "feature_inputs"),
        (4, "roles_and_early_time"),
        (5, "leadership"),
        (6, "unlogged_cache"),
    ]
    assert await migrate(raw, schema) == []


async def test_columns_match_arrow_schemas(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)):
        pass
    for table, arrow in [
        ("features", FEATURES_SCHEMA),
        ("predictions", PREDICTIONS_SCHEMA),
        ("prediction_cache", CACHE_SCHEMA),
        ("outcomes", OUTCOMES_SCHEMA),
        ("quarantine", QUARANTINE_SCHEMA),
    ]:
        rows = await raw.fetch(
            "SELECT column_name, udt_name, is_nullable FROM information_schema.columns"
            " WHERE table_schema = $1 AND table_name = $2",
            schema,
            table,
        )
        # By name: a migration adds columns at the end (queries name every column).
        expected = {f.name: (PG_TYPES[f.type], "YES" if f.nullable else "NO") for f in arrow}
        assert {r["column_name"]: (r["udt_name"], r["is_nullable"]) for r in rows} == expected, table


async def test_a_store_at_version_1_gains_the_quarantine_table(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    """A schema created before migration 0002 keeps its data and gets the dead-letter table."""
    async with open_postgres(_cfg(pg_dsn, schema)):
        pass
    await raw.execute(f'DROP TABLE "{schema}".quarantine')
    await raw.execute(f'DELETE FROM "{schema}".schema_migrations WHERE version = 2')  # noqa: S608 - a test-made schema name
    with capture_logs() as logs:
        async with open_postgres(_cfg(pg_dsn, schema)) as storage:
            assert await storage.quarantine.entries() == []
    opened = [e for e in logs if e["event"] == "storage.postgres.opened"]
    assert [e["migrations_applied"] for e in opened] == [[2]]


async def _migrate_to(raw: asyncpg.Connection[asyncpg.Record], schema: str, version: int) -> None:
    """Bring a new ``schema`` to migration ``version`` exactly as scorebeater did then."""
    q = f'"{schema}"'
    await raw.execute(f"CREATE SCHEMA {q}")
    await raw.execute(
        f"CREATE TABLE {q}.schema_migrations (version int4 PRIMARY KEY, name text NOT NULL,"
        " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for m in load_migrations()[:version]:
        async with raw.transaction():
            await raw.execute(f"SET LOCAL search_path TO {q}")
            await raw.execute(m.sql)
            await raw.execute(
                f"INSERT INTO {q}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",  # noqa: S608 - a test-made schema name
                m.version,
                m.name,
                m.checksum,
            )


async def test_a_store_at_version_2_gains_the_added_inputs_and_keeps_its_rows(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Migration 0003 on a store with rows: they read back with the added inputs null."""
    # 1. a store at 0002 holding rows of feature schema version 1 (13 inputs)
    await _migrate_to(raw, schema, 2)
    old = features(2).drop_columns(sorted(LATE_INPUTS))
    hashes = pa.array(feature_hashes(upgraded_features(old, 1)))  # what the 13-input code stored
    old = old.set_column(old.schema.get_field_index("feature_hash"), "feature_hash", hashes)
    await raw.copy_records_to_table(
        "features",
        records=[tuple(r.values()) for r in old.to_pylist()],
        columns=old.column_names,
        schema_name=schema,
    )
    await raw.execute(f'INSERT INTO "{schema}".latest_features VALUES (2024, 1, 2)')  # noqa: S608 - a test-made schema name
    # 2. opening it applies 0003 only
    with capture_logs() as logs:
        async with open_postgres(_cfg(pg_dsn, schema)) as st:
            back = (await collect(st.read_feature_history(), FEATURES_SCHEMA)).sort_by("as_of_seq")
            expected = upgraded_features(old, 1)
            assert back.equals(expected)
            # 3. a row of the current schema replaces its old row (same key), and is read back whole
            new = features(1, start_seq=2, bump=1.0)
            await st.write_features(new)
            latest = await collect(st.read_latest_features(), FEATURES_SCHEMA)
            assert latest.equals(new)
            history = (await collect(st.read_feature_history(), FEATURES_SCHEMA)).sort_by("as_of_seq")
            assert history.equals(pa.concat_tables([expected.slice(0, 1), new]))
    opened = [e for e in logs if e["event"] == "storage.postgres.opened"]
    assert [e["migrations_applied"] for e in opened] == [[3, 4, 5, 6]]


async def test_a_store_at_version_3_gains_roles_and_early_times_and_keeps_its_rows(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    """Migration 0004 on a store with rows: predictions are the champion's, an early outcome
    has its own early time, a final one none; a final row replacing an early one keeps it."""
    # 1. a store at 0003 holding predictions and outcomes as the code of then stored them
    await _migrate_to(raw, schema, 3)
    old = [{k: v for k, v in prediction(1, seq, 1, 0.25).items() if k != "role"} for seq in (1, 2)]
    await raw.copy_records_to_table(
        "predictions", records=[tuple(r.values()) for r in old], columns=list(old[0]), schema_name=schema
    )
    early = outcome(1, "early", seq=30).drop_columns(list(EARLY_COLUMNS))
    final = outcome(2, "final", seq=82).drop_columns(list(EARLY_COLUMNS))
    rows = pa.concat_tables([early, final])
    await raw.copy_records_to_table(
        "outcomes",
        records=[tuple(r.values()) for r in rows.to_pylist()],
        columns=rows.column_names,
        schema_name=schema,
    )
    # 2. opening it applies 0004 only; the rows read back upgraded
    with capture_logs() as logs:
        async with open_postgres(_cfg(pg_dsn, schema)) as st:
            back = await collect(st.read_predictions(), PREDICTIONS_SCHEMA)
            assert back.sort_by("as_of_seq").equals(
                pa.Table.from_pylist(
                    [prediction(1, seq, 1, 0.25) for seq in (1, 2)], schema=PREDICTIONS_SCHEMA
                )
            )
            assert (await collect(st.read_predictions(role="challenger"), PREDICTIONS_SCHEMA)).num_rows == 0
            stored = (await collect(st.read_outcomes(), OUTCOMES_SCHEMA)).sort_by("player_id")
            assert stored.equals(pa.concat_tables([outcome(1, "early", seq=30), outcome(2, "final", seq=82)]))
            # 3. the final row replacing the old early one keeps its early time
            await st.write_outcomes(outcome(1, "final", seq=82))
            stored = (await collect(st.read_outcomes(), OUTCOMES_SCHEMA)).sort_by("player_id")
            assert stored.select(["resolution", *EARLY_COLUMNS]).to_pylist() == [
                {"resolution": "final", "resolved_early_seq": 30, "resolved_early_at": T0},
                {"resolution": "final", "resolved_early_seq": None, "resolved_early_at": None},
            ]
    opened = [e for e in logs if e["event"] == "storage.postgres.opened"]
    assert [e["migrations_applied"] for e in opened] == [[4, 5, 6]]


async def test_concurrent_migrations_apply_once(pg_dsn: str, schema: str) -> None:
    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, schema) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(results) == [[], [], [], [1, 2, 3, 4, 5, 6]]


async def test_migration_waits_for_the_advisory_lock(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    # 1. another process holds the schema's migration lock
    await raw.execute("SELECT pg_advisory_lock($1)", migration_lock_key(schema))
    other = await asyncpg.connect(pg_dsn)
    try:
        # 2. a migration starts and must wait on it, as the server's lock table shows
        task = asyncio.create_task(migrate(other, schema))
        waiting = 0
        for _ in range(200):
            waiting = await raw.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = $1",
                other.get_server_pid(),
            )
            if waiting:
                break
            await asyncio.sleep(0.02)
        assert waiting == 1
        assert not task.done()
        assert await raw.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0
        # 3. once released, it proceeds and applies everything
        await raw.execute("SELECT pg_advisory_unlock($1)", migration_lock_key(schema))
        assert await asyncio.wait_for(task, 10) == [1, 2, 3, 4, 5, 6]
    finally:
        await other.close()


async def test_newer_or_edited_schema_is_refused(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)):
        pass
    await raw.execute(
        f"INSERT INTO \"{schema}\".schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')"  # noqa: S608 - a test-made schema name
    )
    with pytest.raises(StorageError, match=r"\[99\]"):
        async with open_postgres(_cfg(pg_dsn, schema)):
            pass
    await raw.execute(f'DELETE FROM "{schema}".schema_migrations WHERE version = 99')  # noqa: S608 - a test-made schema name
    await raw.execute(f"UPDATE \"{schema}\".schema_migrations SET checksum = 'edited' WHERE version = 1")  # noqa: S608 - a test-made schema name
    with pytest.raises(StorageError, match="changed after it was applied"):
        async with open_postgres(_cfg(pg_dsn, schema)):
            pass


# --- errors and secrets -----------------------------------------------------------------------


def _assert_clean(exc: BaseException, dsn: str) -> None:
    assert exc.__cause__ is not None
    text = str(exc)
    assert PASSWORD not in text
    assert PASSWORD.replace("!", "%21") not in text
    assert dsn not in text


@pytest.mark.parametrize("target", ["database", "role"])
async def test_unknown_database_or_role_is_unavailable(pg_dsn: str, schema: str, target: str) -> None:
    parts = urlsplit(_with_password(pg_dsn))
    if target == "database":
        dsn = urlunsplit(parts._replace(path="/no_such_db"))
    else:
        dsn = urlunsplit(parts._replace(netloc=parts.netloc.replace("postgres:", "nobody:", 1)))
    with pytest.raises(StorageUnavailable, match="does not exist") as info:
        async with open_postgres(_cfg(dsn, schema)):
            pass
    _assert_clean(info.value, dsn)


async def test_driver_errors_are_storage_errors_without_secrets(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    dsn = _with_password(pg_dsn)
    with capture_logs() as logs:
        async with open_postgres(_cfg(dsn, schema)) as st:
            await st.write_features(features(3))
            await raw.execute(f'DROP TABLE "{schema}".features CASCADE')
            with pytest.raises(StorageError) as info:
                await st.write_features(features(3))
            assert not isinstance(info.value, StorageUnavailable)
            assert "UndefinedTableError" in str(info.value)
            _assert_clean(info.value, dsn)
    for event in logs:
        assert PASSWORD not in repr(event)
        assert "%21" not in repr(event)


async def test_closed_pool_is_unavailable(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        pass
    with pytest.raises(StorageUnavailable, match="pool"):
        await st.ping()


# --- writes -----------------------------------------------------------------------------------


async def test_rows_round_trip_with_exact_types(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema, batch_rows=4)) as st:
        rows = features(10)
        await st.write_features(rows)
        async with aclosing(st.read_feature_history()) as stream:
            batches = [b async for b in stream]
        assert [b.num_rows for b in batches] == [4, 4, 2]
        back = pa.concat_tables(batches).sort_by("as_of_seq")
        assert back.equals(rows)
        assert back.column("as_of_time")[0].as_py() == T0 + timedelta(days=1)


async def test_binary_copy_keeps_edge_values_exactly(pg_dsn: str, schema: str) -> None:
    """The vectorised COPY encoder against the server: extremes, odd text, old and far timestamps.

    The contract refuses most of these values (``storage.base.COLUMN_BOUNDS``), so they go in
    below it, through the backend's table writer.
    """
    base = features(4)
    edge = {
        "player_id": [-(2**63), 2**63 - 1, 0, 7],
        "season": [-(2**31), 2**31 - 1, 0, 2024],
        "as_of_seq": [0, 1, 2**31 - 1, -5],
        "as_of_game_id": ["", "g", "x" * 5000, "0022400001"],
        "as_of_time": [
            datetime(1900, 1, 1, tzinfo=UTC),
            datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ],
        "player": ["", 'Zoë "Ü" O\'Neil \\ 🏀', "tab\there\nnewline", "ascii"],
        "prev_ftm": [3.4028235e38, -0.0, 1e-45, float("inf")],
        "age": [float("-inf"), 1.5, -2.25, 0.1],
    }
    for name, values in edge.items():
        base = base.set_column(
            base.schema.get_field_index(name), name, pa.array(values, base.schema.field(name).type)
        )
    base = pa.Table.from_arrays(base.columns, schema=FEATURES_SCHEMA)
    outcomes = pa.Table.from_pylist(
        [
            {**outcome(1, "final").to_pylist()[0], "beat": False, "ftm": -(2**31), "prev_ftm": 2**31 - 1},
            {
                **outcome(2, "early").to_pylist()[0],
                "beat": True,
                "resolved_at": datetime(1950, 6, 1, tzinfo=UTC),
                "resolved_early_at": datetime(1950, 6, 1, tzinfo=UTC),
            },
        ],
        schema=OUTCOMES_SCHEMA,
    )
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        await st._writer.write(FEATURES, base, None)
        await st._writer.write(OUTCOMES, outcomes, None)
        await st.write_predictions(
            pa.Table.from_pylist(
                [prediction(1, 1, 1, 0.1 + 0.2), prediction(1, 2, 1, 5e-324)], schema=PREDICTIONS_SCHEMA
            )
        )
        back = (await collect(st.read_feature_history(), FEATURES_SCHEMA)).sort_by("player_id")
        assert back.equals(base.sort_by("player_id"))
        assert (await collect(st.read_outcomes(), OUTCOMES_SCHEMA)).sort_by("player_id").equals(outcomes)
        probabilities = sorted(
            (await collect(st.read_predictions(), PREDICTIONS_SCHEMA)).column("probability").to_pylist()
        )
        assert probabilities == [5e-324, 0.1 + 0.2]
        nan = features(1, player_id=99)
        nan = nan.set_column(nan.schema.get_field_index("ftm"), "ftm", pa.array([float("nan")], pa.float32()))
        await st._writer.write(FEATURES, nan, None)
        got = (await collect(st.read_feature_history(), FEATURES_SCHEMA)).to_pylist()
        assert [math.isnan(r["ftm"]) for r in got if r["player_id"] == 99] == [True]


async def test_rewrite_goes_through_staging_and_updates_in_place(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    async with open_postgres(_cfg(pg_dsn, schema, batch_rows=3)) as st:
        await st.write_features(features(5))
        # 1. a batch of 3 chunks: the first is all new (direct COPY), the second overlaps
        #    stored keys (falls back to staging), the third is new again (staging too)
        mixed = pa.concat_tables([features(3, start_seq=100), features(6, start_seq=4, bump=0.5)])
        with capture_logs() as logs:
            await st.write_features(mixed, checkpoint=("feat", b"v2"))
        assert [e["chunk"] for e in logs if e["event"] == "storage.postgres.copy_conflict"] == [1]
        back = await collect(st.read_feature_history(), FEATURES_SCHEMA)
        assert back.num_rows == 3 + 9  # seqs 1-9 once each, plus 100-102
        by_seq = {r["as_of_seq"]: r for r in back.to_pylist()}
        assert by_seq[4]["prev_ftm"] == pytest.approx(4 * 1.1 + 0.5, rel=1e-6)
        assert by_seq[2]["prev_ftm"] == pytest.approx(2 * 1.1, rel=1e-6)
        assert await st.get_checkpoint("feat") == b"v2"
        # 2. rerunning the identical batch duplicates nothing and rewrites no row (an update
        #    would give the row a new version, hence a new xmin)
        versions = f'SELECT as_of_seq, xmin::text FROM "{schema}".features ORDER BY as_of_seq'  # noqa: S608 - a test-made schema name
        before = [tuple(r) for r in await raw.fetch(versions)]
        await st.write_features(mixed)
        assert [tuple(r) for r in await raw.fetch(versions)] == before
        assert len(before) == 12


async def test_duplicate_keys_in_one_batch_keep_the_last(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        batch = pa.concat_tables([features(2), features(2, bump=7.0)])
        await st.write_features(batch)
        back = (await collect(st.read_feature_history(), FEATURES_SCHEMA)).sort_by("as_of_seq")
        assert back.equals(features(2, bump=7.0))


async def test_failed_batch_leaves_nothing_and_keeps_the_checkpoint(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema, batch_rows=2)) as st:
        await st.write_features(features(2), checkpoint=("feat", b"v1"))
        # A NUL byte passes Arrow's checks but Postgres text rejects it: chunk 3 of 3 fails.
        bad = pa.concat_tables([features(4, start_seq=10), features(1, start_seq=20, player="a\x00b")])
        with pytest.raises(StorageError):
            await st.write_features(bad, checkpoint=("feat", b"v2"))
        back = await collect(st.read_feature_history(), FEATURES_SCHEMA)
        assert sorted(back.column("as_of_seq").to_pylist()) == [1, 2]
        assert await st.get_checkpoint("feat") == b"v1"
        latest = await collect(st.read_latest_features(), FEATURES_SCHEMA)
        assert latest.column("as_of_seq").to_pylist() == [2]


async def test_cancelled_write_runs_to_its_end(
    pg_dsn: str, schema: str, raw: asyncpg.Connection[asyncpg.Record]
) -> None:
    """A caller cancelled while its write's transaction runs gets ``CancelledError`` at once;
    the transaction goes on and commits wholly (storage.inflight), and close waits for it."""
    async with open_postgres(_cfg(pg_dsn, schema, batch_rows=500)) as st:
        await st.write_features(features(2), checkpoint=("feat", b"v1"))
        big = pa.concat_tables([features(2000, player_id=p, start_seq=1) for p in range(2, 40)])
        task = asyncio.create_task(st.write_features(big, checkpoint=("feat", b"v2")))
        # Cancel once the server is inside the write (a COPY has reached it).
        for _ in range(500):
            copying = await raw.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'scorebeater'"
                " AND query LIKE 'COPY%'"
            )
            if copying or task.done():
                break
            await asyncio.sleep(0.005)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await st.drain_commits()
        back = await collect(st.read_feature_history(), FEATURES_SCHEMA)
        assert back.num_rows == 2 + big.num_rows
        assert await st.get_checkpoint("feat") == b"v2"


async def test_latest_pointer_never_moves_back(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        await st.write_features(pa.concat_tables([features(5, player_id=1), features(3, player_id=2)]))
        await st.write_features(features(2, player_id=1, start_seq=1, bump=1.0))  # older rows rewritten
        await st.write_features(features(1, player_id=1, season=2023, start_seq=80))
        latest = await collect(st.read_latest_features(), FEATURES_SCHEMA)
        got = sorted((r["player_id"], r["season"], r["as_of_seq"]) for r in latest.to_pylist())
        assert got == [(1, 2023, 80), (1, 2024, 5), (2, 2024, 3)]
        only = await collect(st.read_latest_features(season=2024, player_ids=[2, 99]), FEATURES_SCHEMA)
        assert only.column("player_id").to_pylist() == [2]
        assert (await collect(st.read_latest_features(player_ids=[]), FEATURES_SCHEMA)).num_rows == 0


async def test_values_are_parameters_never_sql(pg_dsn: str, schema: str) -> None:
    evil = "x'); DROP TABLE features; --"
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        await st.write_features(features(1, player=evil))
        await st.put_checkpoint("a.b-c_d", b"\x00'; DROP TABLE checkpoints; --")
        back = await collect(st.read_feature_history(), FEATURES_SCHEMA)
        assert back.column("player").to_pylist() == [evil]
        assert await st.get_checkpoint("a.b-c_d") == b"\x00'; DROP TABLE checkpoints; --"
        with pytest.raises(StorageError):
            async with aclosing(st.read_latest_features(player_ids=["1) OR (1=1"])) as stream:  # type: ignore[list-item]  # the wrong type on purpose
                _ = [b async for b in stream]
        with pytest.raises(StorageError, match="invalid checkpoint name"):
            await st.put_checkpoint("../x", b"")


# --- the other kinds of data ------------------------------------------------------------------


def prediction(player_id: int, seq: int, version: int, p: float, role: str = "champion") -> dict[str, object]:
    return {
        "player_id": player_id,
        "season": 2024,
        "as_of_seq": seq,
        "as_of_time": T0,
        "model_version": version,
        "probability": p,
        "feature_hash": "h",
        "progress": 0.5,
        "predicted_at": T0,
        "role": role,
    }


async def test_predictions_upsert_and_latest_only(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        rows = [
            prediction(1, 3, 1, 0.1),
            prediction(1, 5, 1, 0.2),
            prediction(1, 5, 2, 0.3),
            prediction(2, 1, 1, 0.4),
        ]
        await st.write_predictions(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))
        await st.write_predictions(
            pa.Table.from_pylist([prediction(1, 5, 2, 0.9)], schema=PREDICTIONS_SCHEMA)
        )
        everything = await collect(st.read_predictions(), PREDICTIONS_SCHEMA)
        assert everything.num_rows == 4
        latest = await collect(st.read_predictions(latest_only=True), PREDICTIONS_SCHEMA)
        got = sorted(
            (r["player_id"], r["as_of_seq"], r["model_version"], r["probability"]) for r in latest.to_pylist()
        )
        assert got == [(1, 5, 2, 0.9), (2, 1, 1, 0.4)]
        one = await collect(st.read_predictions(player_id=2, season=2024), PREDICTIONS_SCHEMA)
        assert one.column("player_id").to_pylist() == [2]


async def test_cache_chunks_counts_and_versions(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema, batch_rows=7)) as st:
        entries = {f"h{i:03d}": i / 100 for i in range(50)}
        await st.cache.put(1, entries)
        await st.cache.put(1, {"h000": 0.99})
        await st.cache.put(2, {"h001": 0.5})
        hits = await st.cache.get(1, [f"h{i:03d}" for i in range(0, 60, 2)])
        assert hits == {f"h{i:03d}": (0.99 if i == 0 else i / 100) for i in range(0, 50, 2)}
        assert await st.cache.get(2, ["h001", "h002"]) == {"h001": 0.5}
        assert await st.cache.get(1, []) == {}
        assert await st.cache.clear() == 51
        assert await st.cache.clear() == 0
        assert await st.cache.get(1, ["h001"]) == {}


async def test_early_outcome_never_replaces_final(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        await st.write_outcomes(outcome(1, "final", beat=False, seq=82))
        await st.write_outcomes(pa.concat_tables([outcome(1, "early", seq=40), outcome(2, "early", seq=30)]))
        # In one batch a final row wins over an early one whatever the order.
        await st.write_outcomes(pa.concat_tables([outcome(3, "final", seq=82), outcome(3, "early", seq=50)]))
        await st.write_outcomes(outcome(2, "final", seq=82))
        back = await collect(st.read_outcomes(season=2024), OUTCOMES_SCHEMA)
        got = sorted(
            (r["player_id"], r["resolution"], r["resolved_seq"], r["beat"]) for r in back.to_pylist()
        )
        assert got == [(1, "final", 82, False), (2, "final", 82, True), (3, "final", 82, True)]
        # The early time: none for 1 (its early row came after the final), kept for 2, and
        # taken from the early row of the same batch for 3.
        early = sorted((r["player_id"], r["resolved_early_seq"]) for r in back.to_pylist())
        assert early == [(1, None), (2, 30), (3, 50)]
        with pytest.raises(StorageError, match="resolution"):
            await st.write_outcomes(outcome(4, "maybe"))


async def test_training_export_joins_outcomes(pg_dsn: str, schema: str) -> None:
    async with open_postgres(_cfg(pg_dsn, schema)) as st:
        await st.write_features(pa.concat_tables([features(3, player_id=1), features(2, player_id=2)]))
        await st.write_outcomes(outcome(1, "early"))
        export = await collect(st.export_training_set(seasons=[2024]), TRAINING_SCHEMA)
        assert sorted(export.column("as_of_seq").to_pylist()) == [1, 2, 3]
        assert set(export.column("resolution").to_pylist()) == {"early"}
        assert (await collect(st.export_training_set(seasons=[2020]), TRAINING_SCHEMA)).num_rows == 0
