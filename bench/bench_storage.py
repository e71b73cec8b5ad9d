"""Storage benchmark: each backend against its raw ceiling, measured in the same run.

    .venv/bin/python -m bench.bench_storage [--rows 1000000] [--backends postgres,local,s3]

For each backend it writes ``--rows`` synthetic feature rows (``FEATURES_SCHEMA``, realistic
values) with one ``write_features`` call, reads them all back with ``read_feature_history``,
and compares with what the underlying tool does with the same rows and nothing else:

- postgres: asyncpg ``copy_records_to_table`` of tuples built beforehand (untimed) into a
  bare table of the same columns and primary key (the issue's ceiling), and into one without
  the key; for context, a binary ``COPY`` of bytes encoded beforehand (the server alone). Reads
  compare with a plain server-side-cursor fetch of the same rows (no Arrow). The cluster is a
  fresh Postgres 15 from ``scorebeater.testing.postgres.run_postgres`` (or
  ``SCOREBEATER_TEST_PG_DSN``), durability off as in the tests.
- local: ``pyarrow.parquet.write_table`` / ``ParquetFile.iter_batches`` of the same table on
  the same disk.
- s3 (moto's server from ``scorebeater.testing.s3.run_moto``): the pyarrow ceiling above, as the
  issue defines it, plus, for context, the same Parquet bytes PUT / GET through aiobotocore
  (moto's single-threaded HTTP server is most of the cost there).

Peak RSS growth of a read is the rise of the process's high-water mark (``VmHWM``, reset
through ``/proc/self/clear_refs`` before the phase) over its resident size when the phase
starts, after freed memory is returned to the OS, so rows held by earlier phases do not
count. The result is a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import importlib.util
import io
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.report import reset_peak_rss, status_kb
from scorebeater.config import (
    LocalStorageConfig,
    PostgresStorageConfig,
    S3StorageConfig,
    Secret,
    StorageConfig,
)
from scorebeater.inputs import INPUT_NAMES
from scorebeater.logs import configure_logging
from scorebeater.storage.base import FEATURES_SCHEMA, Storage, feature_hashes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

MB = 1024 * 1024
TEAMS = (
    "ATL",
    "BOS",
    "BKN",
    "CHA",
    "CHI",
    "CLE",
    "DAL",
    "DEN",
    "DET",
    "GSW",
    "HOU",
    "IND",
    "LAC",
    "LAL",
    "MEM",
)
PLAYERS_PER_SEASON = 450
GAMES = 82


# --- data --------------------------------------------------------------------------------------


def synthetic_features(rows: int, seed: int = 5) -> pa.Table:
    """``rows`` distinct feature rows shaped like the real ones: ~450 players a season, one row
    per team game (as-of 1..82), running counts that grow through the season."""
    rng = np.random.default_rng(seed)
    i = np.arange(rows)
    seq = i % GAMES + 1
    player_season = i // GAMES
    player = player_season % PLAYERS_PER_SEASON
    season = 1990 + player_season // PLAYERS_PER_SEASON
    n_ps = int(player_season.max()) + 1
    # Per player-season constants, then per row through the season.
    prev_ftm = np.minimum(rng.gamma(2.0, 60.0, n_ps).round(), 840)
    prev_fta = (prev_ftm / rng.uniform(0.55, 0.92, n_ps)).round()
    prev_games = rng.integers(10, 83, n_ps)
    rate = prev_ftm / np.maximum(prev_games, 1) * rng.uniform(0.7, 1.3, n_ps)
    progress = seq / GAMES
    # Within storage's plausibility bounds (scorebeater/bounds.py): the season FTM record is 840.
    ftm = np.minimum((rate[player_season] * seq * rng.uniform(0.8, 1.2, rows)).round(), 840)
    inputs = {
        "prev_ftm": prev_ftm[player_season],
        "prev_fta": prev_fta[player_season],
        "prev_games": prev_games[player_season],
        "prev_minutes": (prev_games * rng.uniform(8, 38, n_ps)).round()[player_season],
        "prev2_ftm": (prev_ftm * rng.uniform(0, 1.2, n_ps)).round()[player_season],
        "prev2_games": rng.integers(0, 83, n_ps)[player_season],
        "experience": rng.integers(1, 19, n_ps)[player_season],
        "age": rng.integers(19, 41, n_ps)[player_season],
        "ftm": ftm,
        "fta": (ftm / rng.uniform(0.55, 0.92, rows)).round(),
        "games_with_fta": np.minimum(seq, (seq * rng.uniform(0.5, 1.0, rows)).round()),
        "team_games": seq,
        "season_games": np.full(rows, GAMES),
    }
    start = np.datetime64("1990-11-01T00:00:00", "us").astype(np.int64)
    as_of_us = (
        start + (season - 1990) * 365 * 86_400_000_000 + (progress * 165 * 86_400_000_000).astype(np.int64)
    )
    names = np.array(
        [f"Player {p:03d} {chr(65 + p % 26)}son" for p in range(PLAYERS_PER_SEASON)], dtype=object
    )
    table = pa.table(
        {
            "player_id": pa.array(200_000 + player * 7 + (season % 3), pa.int64()),
            "season": pa.array(season, pa.int32()),
            "as_of_seq": pa.array(seq, pa.int32()),
            "as_of_game_id": pa.array(
                [f"002{s % 100:02d}{g:05d}" for s, g in zip(season, i // 10 % 1230, strict=True)]
            ),
            "as_of_time": pa.array(as_of_us, FEATURES_SCHEMA.field("as_of_time").type),
            "player": pa.array(names[player].tolist(), pa.string()),
            "team": pa.array(np.array(TEAMS, dtype=object)[player % len(TEAMS)].tolist(), pa.string()),
            **{name: pa.array(np.asarray(inputs[name], dtype=np.float32)) for name in INPUT_NAMES},
            "feature_hash": pa.array([""] * rows),
        }
    )
    table = table.set_column(table.num_columns - 1, "feature_hash", pa.array(feature_hashes(table)))
    return table.cast(FEATURES_SCHEMA)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Phase:
    seconds: float = 0.0
    rss_growth_mb: float = 0.0


@contextmanager
def measure() -> Iterator[Phase]:
    """Time a phase and record how far the RSS high-water mark rose above its start."""
    # Hand memory freed by earlier phases back to the OS first, so the starting RSS is what is
    # live (memory cached by an allocator would otherwise absorb the phase's growth unseen).
    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_rss()
    phase = Phase()
    start_rss = status_kb("VmRSS")
    t0 = time.perf_counter()
    try:
        yield phase
    finally:
        phase.seconds = time.perf_counter() - t0
        phase.rss_growth_mb = max(0, status_kb("VmHWM") - start_rss) / 1024


@dataclass
class Row:
    backend: str
    operation: str
    rows: int
    phase: Phase
    ceiling_rows_s: float | None = None
    ceiling: str = ""
    rss: bool = False

    @property
    def rate(self) -> float:
        return self.rows / self.phase.seconds

    def markdown(self) -> str:
        ratio = f"{self.rate / self.ceiling_rows_s:.0%}" if self.ceiling_rows_s else ""
        ceiling = f"{self.ceiling_rows_s:,.0f} ({self.ceiling})" if self.ceiling_rows_s else self.ceiling
        rss = f"{self.phase.rss_growth_mb:,.0f}" if self.rss else ""
        return (
            f"| {self.backend} | {self.operation} | {self.rows:,} | {self.phase.seconds:.2f} "
            f"| {self.rate:,.0f} | {ceiling} | {ratio} | {rss} |"
        )


HEADER = (
    "| backend | operation | rows | seconds | rows/s | ceiling rows/s | ratio | peak RSS growth (MB) |\n"
    "|---|---|---:|---:|---:|---|---:|---:|"
)


async def drain(stream: AsyncIterator[pa.Table]) -> int:
    """Consume a read without keeping its batches; return the row count."""
    n = 0
    async for batch in stream:
        n += batch.num_rows
    return n


async def timed(fn: Callable[[], Awaitable[object]]) -> Phase:
    with measure() as phase:
        await fn()
    return phase


# --- postgres ----------------------------------------------------------------------------------


def _ddl(table: str, *, primary_key: bool) -> str:
    types = {pa.int64(): "int8", pa.int32(): "int4", pa.float32(): "float4", pa.string(): "text"}
    cols = [f"{f.name} {types.get(f.type, 'timestamptz')} NOT NULL" for f in FEATURES_SCHEMA]
    if primary_key:
        cols.append("PRIMARY KEY (player_id, season, as_of_seq)")
    return f"CREATE TABLE {table} ({', '.join(cols)})"


def best(phases: list[Phase]) -> Phase:
    """The fastest of repeated runs (the least disturbed by other load on a shared machine),
    with the largest memory growth seen in any of them."""
    return Phase(min(p.seconds for p in phases), max(p.rss_growth_mb for p in phases))


async def bench_postgres(table: pa.Table, batch_rows: int, repeat: int) -> list[Row]:
    from scorebeater.storage.postgres import copy_columns, copy_payload, init_connection, open_postgres
    from scorebeater.testing.postgres import run_postgres

    n = table.num_rows
    with run_postgres() as dsn:
        raw = await asyncpg.connect(dsn)
        await init_connection(raw)  # integer timestamps for the read ceiling, as the backend reads
        plain = await asyncpg.connect(dsn)
        ceiling_schema = f"bench_ceiling_{uuid.uuid4().hex[:8]}"
        await raw.execute(f"CREATE SCHEMA {ceiling_schema}")
        schemas: list[str] = []
        try:
            # Ceilings: the driver alone, with the rows built beforehand (untimed).
            records = list(zip(*(c.to_pylist() for c in table.columns), strict=True))
            payloads = [copy_payload(table.slice(o, batch_rows)) for o in range(0, n, batch_rows)]
            for name, pk in (("f_pk", True), ("f_nopk", False), ("f_binary", True)):
                await raw.execute(_ddl(f"{ceiling_schema}.{name}", primary_key=pk))

            async def copy_records(name: str) -> None:
                await raw.execute(f"TRUNCATE {ceiling_schema}.{name}")
                with measure() as phase:
                    await plain.copy_records_to_table(name, schema_name=ceiling_schema, records=records)
                phases[name].append(phase)

            async def copy_binary() -> None:
                await raw.execute(f"TRUNCATE {ceiling_schema}.f_binary")
                with measure() as phase:
                    async with raw.transaction():
                        for payload in payloads:
                            await raw.copy_to_table(
                                "f_binary",
                                schema_name=ceiling_schema,
                                source=io.BytesIO(payload),
                                columns=copy_columns(FEATURES_SCHEMA),
                                format="binary",
                            )
                phases["f_binary"].append(phase)

            def config(schema: str) -> StorageConfig:
                postgres = PostgresStorageConfig(dsn=Secret(dsn), schema=schema, command_timeout_s=600)
                return StorageConfig(backend="postgres", batch_rows=batch_rows, postgres=postgres)

            # Interleaved, best of `repeat`: load from other processes hits both sides alike.
            phases: dict[str, list[Phase]] = {"f_pk": [], "f_nopk": [], "f_binary": [], "write": []}
            for _ in range(repeat):
                await copy_records("f_pk")
                await copy_records("f_nopk")
                await copy_binary()
                schemas.append(f"bench_{uuid.uuid4().hex[:8]}")
                async with open_postgres(config(schemas[-1])) as storage:
                    phases["write"].append(
                        await timed(lambda: storage.write_features(table, checkpoint=("bench", b"1")))
                    )
            records.clear()  # free the ceilings' rows before the reads measure memory
            payloads.clear()
            records_pk, records_bare, binary, write = (
                best(phases[k]) for k in ("f_pk", "f_nopk", "f_binary", "write")
            )

            async def raw_read() -> None:
                async with raw.transaction(readonly=True):
                    query = f"SELECT * FROM {ceiling_schema}.f_pk"  # noqa: S608 - our own name
                    cursor = await raw.cursor(query)
                    while await cursor.fetch(batch_rows):
                        pass

            read_ceiling = await timed(raw_read)
            async with open_postgres(config(schemas[-1])) as storage:
                rewrite = await timed(lambda: storage.write_features(table))
                read = await timed(lambda: drain(storage.read_feature_history()))
                latest_rows = 0

                async def latest() -> None:
                    nonlocal latest_rows
                    latest_rows = await drain(storage.read_latest_features())

                latest_phase = await timed(latest)
        finally:
            for schema in (ceiling_schema, *schemas):
                await raw.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await raw.close()
            await plain.close()
    same_pk = n / records_pk.seconds
    return [
        Row("postgres", "ceiling: copy_records_to_table, same PK", n, records_pk),
        Row("postgres", "ceiling: copy_records_to_table, no PK", n, records_bare),
        Row("postgres", "context: binary COPY of pre-encoded bytes, same PK", n, binary),
        Row("postgres", "write_features (new keys)", n, write, same_pk, "copy_records, same PK"),
        Row(
            "postgres", "write_features (new keys)", n, write, n / records_bare.seconds, "copy_records, no PK"
        ),
        Row("postgres", "write_features (new keys)", n, write, n / binary.seconds, "pre-encoded binary COPY"),
        Row(
            "postgres",
            "write_features again (all keys exist: upsert)",
            n,
            rewrite,
            same_pk,
            "copy_records, same PK",
        ),
        Row("postgres", "ceiling: cursor fetch, no Arrow", n, read_ceiling, rss=True),
        Row("postgres", "read_feature_history", n, read, n / read_ceiling.seconds, "cursor fetch", rss=True),
        Row("postgres", "read_latest_features", latest_rows, latest_phase, rss=True),
    ]


# --- local and S3 ------------------------------------------------------------------------------


def pyarrow_ceiling(table: pa.Table, directory: Path, batch_rows: int) -> tuple[Phase, Phase, bytes]:
    """pyarrow alone: write the table to one Parquet file, then read it back in batches."""
    path = directory / "ceiling.parquet"
    with measure() as write:
        pq.write_table(table, path)
    with measure() as read:
        for _ in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            pass
    data = path.read_bytes()
    path.unlink()
    return write, read, data


def backend_settings_write(table: pa.Table, directory: Path) -> Phase:
    """For context: pyarrow writing one file with the object backends' encoding settings."""
    from scorebeater.storage.objects import FEATURES, ROW_GROUP_ROWS, parquet_options

    path = directory / "settings.parquet"
    with measure() as write:
        pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, **parquet_options(FEATURES))
    path.unlink()
    return write


async def backend_phases(storage: Storage, table: pa.Table) -> tuple[Phase, Phase]:
    write = await timed(lambda: storage.write_features(table, checkpoint=("bench", b"1")))
    read = await timed(lambda: drain(storage.read_feature_history()))
    return write, read


async def bench_objects(table: pa.Table, batch_rows: int, backends: list[str], repeat: int) -> list[Row]:
    """pyarrow's ceiling, the local backend and the S3 backend on moto, interleaved, best of ``repeat``."""
    phases: dict[str, list[Phase]] = {}

    def keep(name: str, phase: Phase) -> None:
        phases.setdefault(name, []).append(phase)

    available = [b for b in backends if importlib.util.find_spec(f"scorebeater.storage.{b}") is not None]
    for name in sorted(set(backends) - set(available)):
        print(f"skipping {name}: scorebeater.storage.{name} does not exist yet", flush=True)
    with tempfile.TemporaryDirectory(prefix="scorebeater-bench-") as tmp, contextlib.ExitStack() as stack:
        endpoint = ""
        if "s3" in available:
            from scorebeater.testing.s3 import run_moto

            endpoint = stack.enter_context(run_moto())
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        for r in range(repeat):
            write, read, parquet = pyarrow_ceiling(table, Path(tmp), batch_rows)
            keep("pyarrow write", write)
            keep("pyarrow read", read)
            if available:
                keep("pyarrow write, backend settings", backend_settings_write(table, Path(tmp)))
            if "local" in available:
                from scorebeater.storage.local import open_local

                local = LocalStorageConfig(root=Path(tmp) / f"store{r}")
                async with open_local(
                    StorageConfig(backend="local", batch_rows=batch_rows, local=local)
                ) as st:
                    for label, phase in zip(
                        ("local write", "local read"), await backend_phases(st, table), strict=True
                    ):
                        keep(label, phase)
                shutil.rmtree(local.root)
            if "s3" in available:
                for label, phase in zip(
                    ("s3 put", "s3 get", "s3 write", "s3 read"),
                    await s3_phases(table, batch_rows, endpoint, parquet, f"bench{r}"),
                    strict=True,
                ):
                    keep(label, phase)
    b = {name: best(found) for name, found in phases.items()}
    n = table.num_rows
    write_ceiling, read_ceiling = n / b["pyarrow write"].seconds, n / b["pyarrow read"].seconds
    out = [
        Row("pyarrow", "ceiling: write_table (local disk)", n, b["pyarrow write"]),
        Row("pyarrow", "ceiling: iter_batches (local disk)", n, b["pyarrow read"], rss=True),
    ]
    if "pyarrow write, backend settings" in b:
        out.append(
            Row(
                "pyarrow",
                "context: write_table with the backends' encoding settings",
                n,
                b["pyarrow write, backend settings"],
            )
        )
    if "local" in available:
        out += [
            Row("local", "write_features", n, b["local write"], write_ceiling, "pyarrow write_table"),
            Row(
                "local",
                "read_feature_history",
                n,
                b["local read"],
                read_ceiling,
                "pyarrow iter_batches",
                rss=True,
            ),
        ]
    if "s3" in available:
        put, get = n / b["s3 put"].seconds, n / b["s3 get"].seconds
        out += [
            Row("s3", "context: pyarrow write + one PUT (aiobotocore)", n, b["s3 put"]),
            Row("s3", "context: one GET + pyarrow iter_batches", n, b["s3 get"], rss=True),
            Row("s3", "write_features", n, b["s3 write"], write_ceiling, "pyarrow write_table"),
            Row("s3", "write_features", n, b["s3 write"], put, "pyarrow write + PUT"),
            Row(
                "s3", "read_feature_history", n, b["s3 read"], read_ceiling, "pyarrow iter_batches", rss=True
            ),
            Row("s3", "read_feature_history", n, b["s3 read"], get, "GET + pyarrow read", rss=True),
        ]
    return out


async def s3_phases(
    table: pa.Table, batch_rows: int, endpoint: str, parquet: bytes, prefix: str
) -> tuple[Phase, Phase, Phase, Phase]:
    """The same Parquet bytes PUT and GET through aiobotocore, then the S3 backend, on moto."""
    from aiobotocore.session import get_session

    from scorebeater.storage.s3 import open_s3

    bucket = "scorebeater-bench"
    async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=endpoint) as client:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            await client.create_bucket(Bucket=bucket)

        async def put() -> None:
            await asyncio.to_thread(pq.write_table, table, pa.BufferOutputStream())
            await client.put_object(Bucket=bucket, Key=f"{prefix}-ceiling.parquet", Body=parquet)

        async def get() -> None:
            response = await client.get_object(Bucket=bucket, Key=f"{prefix}-ceiling.parquet")
            async with response["Body"] as body:
                data = await body.read()
            for _ in pq.ParquetFile(pa.BufferReader(data)).iter_batches(batch_size=batch_rows):
                pass

        put_phase, get_phase = await timed(put), await timed(get)
    s3 = S3StorageConfig(bucket=bucket, prefix=prefix, endpoint_url=endpoint, addressing_style="path")
    async with open_s3(StorageConfig(backend="s3", batch_rows=batch_rows, s3=s3)) as storage:
        write, read = await backend_phases(storage, table)
    return put_phase, get_phase, write, read


# --- main --------------------------------------------------------------------------------------


async def run(rows: int, batch_rows: int, backends: list[str], repeat: int) -> list[Row]:
    with measure() as gen:
        table = synthetic_features(rows)
    print(
        f"generated {rows:,} feature rows in {gen.seconds:.1f} s ({table.nbytes / MB:,.0f} MB in Arrow)",
        flush=True,
    )
    out: list[Row] = []
    if "postgres" in backends:
        out += await bench_postgres(table, batch_rows, repeat)
    objects = [b for b in backends if b in ("local", "s3")]
    if objects:
        out += await bench_objects(table, batch_rows, objects, repeat)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_storage", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="feature rows to write and read (1,000,000)"
    )
    parser.add_argument("--batch-rows", type=int, default=50_000, help="storage.batch_rows (50,000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved runs of each measurement, best kept (3)"
    )
    parser.add_argument(
        "--backends", default="postgres,local,s3", help="comma-separated subset of postgres,local,s3"
    )
    args = parser.parse_args(argv)
    configure_logging("console", "warning")  # stderr: stdout carries only the Markdown tables
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"postgres", "local", "s3"}
    if unknown or min(args.rows, args.batch_rows, args.repeat) <= 0:
        parser.error(
            f"bad arguments: unknown backends {sorted(unknown)}" if unknown else "counts must be > 0"
        )
    results = asyncio.run(run(args.rows, args.batch_rows, backends, args.repeat))
    print()
    print(
        f"{args.rows:,} rows, batch_rows {args.batch_rows:,}, {os.cpu_count()} CPUs, "
        f"best of {args.repeat} interleaved runs (postgres rewrite and reads: one run)"
    )
    print()
    print(HEADER)
    for row in results:
        print(row.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
