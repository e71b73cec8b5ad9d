"""``scorebeater storage migrate --from A.toml --to B.toml``: copy a store to another backend.

Copies every table through the :class:`~scorebeater.storage.base.Storage` protocol, so any
pair of backends works (local, S3, Postgres): the feature history (each player-season's latest
row follows on every backend), predictions of every role, outcomes, the prediction cache, the
quarantine (dead-letter) table, and every checkpoint (the stages' watermarks, the promotion
records). It then verifies each table: row counts and a content hash must be equal on both
sides (:func:`content_digest`), ``features_latest`` included.

Streaming: rows go batch by batch (at most ``storage.batch_rows`` each; ``--batch-rows``
overrides both sides) from the source's read stream into the destination's upserts, one batch
held back at a time, so memory stays bounded by about two batches whatever the table's size.

Resume and idempotency: the unit of work is one partition of one table (a season; a model
version for the cache). The last batch of a partition is written together with the progress
checkpoint :data:`PROGRESS_CHECKPOINT` in the destination (the same commit or transaction),
so after a crash a rerun skips the partitions already done and redoes the one in flight,
whose rows are upserts by key: written twice, stored once. A rerun of a finished migration
copies nothing and verifies. The stages' checkpoints are copied last, so a destination cut
off mid-copy never holds a watermark whose rows are missing.

Safety: both sides must name their backend (not ``auto``) and differ; the destination must be
empty or hold this source's unfinished migration; neither side may be led by a running daemon
(:func:`leading`: the run leads both stores, as a daemon would, and fences its writes).
Errors are :class:`MigrationError` (one line, exit status 1).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import structlog

from scorebeater.config import LeadershipConfig
from scorebeater.errors import LeadershipHeld, ScorebeaterError
from scorebeater.export import Progress
from scorebeater.leadership import Elector, fence_storage, open_elector
from scorebeater.storage import open_storage
from scorebeater.storage.base import STORED_TABLES
from scorebeater.storage.quarantine import entries_from_table, entries_table

if TYPE_CHECKING:
    import argparse

    from scorebeater.config import StorageConfig
    from scorebeater.storage.base import CheckpointWrite, Storage

T = TypeVar("T")
log = structlog.get_logger(__name__)

PROGRESS_CHECKPOINT = "storage-migrate"
"""The destination's record of the partitions copied so far (never copied itself)."""
PROGRESS_FORMAT = 1
CHECKPOINTS = "checkpoints"
"""The name the stored checkpoints go by in the plan, the progress record and the summary."""
COPIED = ("features", "predictions", "outcomes", "cache", "quarantine")
"""Tables copied, in this order (``features_latest`` follows the features on every backend)."""
VERIFIED = (*STORED_TABLES, CHECKPOINTS)


class MigrationError(ScorebeaterError):
    """A migration that cannot start (a bad pair of stores, a led store, a destination holding
    other data) or whose verification failed (naming the tables that differ)."""


# --- content hashes --------------------------------------------------------------------------


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NULL = np.uint64(0x6E756C6C6E756C6C)  # "nullnull": what a null value hashes from


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wrapping arithmetic: arrays never warn)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    result: np.ndarray = x ^ (x >> np.uint64(31))
    return result


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _value_bits(column: pa.Array) -> np.ndarray:
    """Each value of ``column`` as 64 canonical bits (nulls: arbitrary, masked by the caller).

    Canonical across backends: integers and booleans widened to int64, timestamps as UTC
    microseconds, floats widened to float64 (exact) with ``-0.0`` as ``0.0`` and one NaN,
    strings and bytes by a 64-bit BLAKE2b of their UTF-8/raw bytes (each distinct value
    hashed once, through a dictionary encoding).
    """
    kind = column.type
    if pa.types.is_timestamp(kind):
        column = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        kind = column.type
    if pa.types.is_boolean(kind) or pa.types.is_integer(kind):
        ints = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return np.asarray(ints, dtype=np.int64).view(np.uint64)
    if pa.types.is_floating(kind):
        floats = np.asarray(column.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False))
        floats = floats + 0.0  # -0.0 + 0.0 is 0.0
        floats[np.isnan(floats)] = np.nan
        return floats.view(np.uint64)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        encoded = column.dictionary_encode()
        words = [_hash64(v.encode() if isinstance(v, str) else v) for v in encoded.dictionary.to_pylist()]
        table = np.array(words or [0], dtype=np.uint64)
        indices = np.asarray(encoded.indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        taken: np.ndarray = table[indices]
        return taken
    raise MigrationError(f"content hash: no canonical form for column type {kind}")


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of each row of ``table``, over its columns in name order (CPU-bound).

    Two rows hash alike when they hold the same canonical values (:func:`_value_bits`) under
    the same column names, whatever the backend they were read from or the column order.
    """
    rows = np.zeros(table.num_rows, dtype=np.uint64)
    for name in sorted(table.column_names):
        column = table.column(name).combine_chunks()
        salt = np.uint64(_hash64(name.encode()))
        values = _mix(_value_bits(column) ^ salt)
        if column.null_count:
            valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
            values = np.where(valid, values, _mix(np.full(len(values), _NULL ^ salt)))
        rows = _mix(rows ^ values)
    return rows


@dataclass(slots=True)
class Digest:
    """An order-independent digest of a table: its row count and the sum (mod 2**64) of its
    rows' hashes, so equal multisets of rows (duplicates counted) have equal digests however
    they were batched or ordered."""

    rows: int = 0
    total: int = 0

    def add(self, table: pa.Table) -> None:
        """Fold ``table``'s rows in (CPU: call it from a worker thread for large batches)."""
        if table.num_rows:
            self.rows += table.num_rows
            self.total = (self.total + int(row_hashes(table).sum(dtype=np.uint64))) % 2**64

    @property
    def hexdigest(self) -> str:
        """The sum as 16 hex digits."""
        return f"{self.total:016x}"


async def content_digest(batches: AsyncIterator[pa.Table]) -> Digest:
    """The :class:`Digest` of a stream of tables (hashed in a worker thread, batch by batch)."""
    digest = Digest()
    async for table in batches:
        await asyncio.to_thread(digest.add, table)
    return digest


async def table_stream(storage: Storage, name: str) -> AsyncGenerator[pa.Table, None]:
    """Every stored row of table ``name`` (of :data:`VERIFIED`), streamed, for the digests.

    The quarantine (small by design) is read whole; the checkpoints are ``(name, value)`` rows
    without :data:`PROGRESS_CHECKPOINT`.
    """
    if name == "features":
        streams: AsyncGenerator[pa.Table, None] = storage.read_feature_history()
    elif name == "features_latest":
        streams = storage.read_latest_features()
    elif name == "predictions":
        streams = storage.read_predictions(role=None)
    elif name == "outcomes":
        streams = storage.read_outcomes()
    elif name == "cache":
        streams = storage.cache.read_entries()
    elif name == "quarantine":
        yield entries_table(await storage.quarantine.entries())
        return
    else:
        names = [n for n in await storage.checkpoint_names() if n != PROGRESS_CHECKPOINT]
        values = [await storage.get_checkpoint(n) for n in names]
        yield pa.table({"name": pa.array(names, pa.string()), "value": pa.array(values, pa.binary())})
        return
    async with aclosing(streams) as batches:
        async for table in batches:
            yield table


# --- the plan and the progress record ---------------------------------------------------------


def describe(cfg: StorageConfig) -> str:
    """Where a store lives, without secrets: ``local:/abs/root``, ``s3:endpoint/bucket/prefix``,
    ``postgres:host:port/database#schema`` (never the DSN's user or password).

    Raises:
        MigrationError: ``backend = "auto"`` (a migration must know both sides).
    """
    if cfg.backend == "local":
        return f"local:{cfg.local.root.resolve()}"
    if cfg.backend == "s3":
        return f"s3:{cfg.s3.endpoint_url or 'aws'}/{cfg.s3.bucket}/{cfg.s3.prefix.strip('/')}"
    if cfg.backend == "postgres":
        from scorebeater.storage.postgres.connection import dsn_summary  # noqa: PLC0415 - an extra

        where = dsn_summary(cfg.postgres.dsn.get()) if cfg.postgres.dsn is not None else {}
        return (
            f"postgres:{where.get('host')}:{where.get('port')}/{where.get('database')}#{cfg.postgres.schema}"
        )
    raise MigrationError(
        f'storage.backend = "{cfg.backend}": name the backend (local, s3 or postgres) on both sides'
    )


@dataclass(slots=True)
class ProgressRecord:
    """The destination's :data:`PROGRESS_CHECKPOINT`: which partitions of which tables are
    copied, from which source."""

    source: str
    done: dict[str, list[int]] = field(default_factory=dict)

    def is_done(self, table: str, partition: int) -> bool:
        return partition in self.done.get(table, [])

    def with_done(self, table: str, partition: int) -> ProgressRecord:
        """A copy with one more partition done."""
        done = {name: list(parts) for name, parts in self.done.items()}
        done.setdefault(table, []).append(partition)
        return replace(self, done=done)

    def checkpoint(self) -> CheckpointWrite:
        doc = {"format": PROGRESS_FORMAT, "source": self.source, "done": self.done}
        return PROGRESS_CHECKPOINT, orjson.dumps(doc)

    @classmethod
    def parse(cls, raw: bytes) -> ProgressRecord:
        try:
            doc = orjson.loads(raw)
            if doc["format"] != PROGRESS_FORMAT:
                raise MigrationError(f"checkpoint {PROGRESS_CHECKPOINT}: unknown format {doc['format']!r}")
            done = {str(t): [int(p) for p in parts] for t, parts in doc["done"].items()}
            return cls(source=str(doc["source"]), done=done)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MigrationError(f"checkpoint {PROGRESS_CHECKPOINT} is corrupt: {exc!r}") from exc


async def load_progress(dest: Storage, source: str, *, dest_where: str) -> ProgressRecord:
    """The destination's progress from ``source``: empty for an empty destination.

    Raises:
        MigrationError: the destination holds rows or checkpoints but no migration from this
            source (a migration never mixes its rows into another store's).
    """
    raw = await dest.get_checkpoint(PROGRESS_CHECKPOINT)
    if raw is not None:
        record = ProgressRecord.parse(raw)
        if record.source != source:
            raise MigrationError(
                f"{dest_where} holds a migration from {record.source}, not from {source}: "
                "migrate into an empty store"
            )
        return record
    rows = await dest.stored_rows()
    if rows or await dest.checkpoint_names():
        tables = ", ".join(sorted(rows)) or "checkpoints"
        raise MigrationError(f"{dest_where} is not empty ({tables}): migrate into an empty store")
    record = ProgressRecord(source=source)
    # Claimed before the first row: a run killed inside the first partition leaves a store
    # that a rerun recognises as this migration's, not "not empty".
    await dest.put_checkpoint(*record.checkpoint())
    return record


# --- leadership --------------------------------------------------------------------------------


@asynccontextmanager
async def leading(
    cfg: StorageConfig, leadership: LeadershipConfig, side: str, where: str
) -> AsyncIterator[Elector]:
    """Lead ``cfg``'s store for the migration, as a daemon would: a daemon started meanwhile
    waits as a standby instead of writing beside it. Waits up to one lease for a leader that
    may be gone (a crashed daemon's S3 lease runs out), then refuses.

    Raises:
        MigrationError: a live daemon leads the store (naming the side, the store and it).
    """
    async with open_elector(cfg, leadership) as elector:
        wait_s = leadership.lease_ttl_s + 2 * leadership.poll_s
        try:
            await asyncio.wait_for(elector.acquire(), wait_s)
        except LeadershipHeld as exc:
            raise _led(side, where, exc.holder) from exc
        except TimeoutError:
            holder = await elector.holder()
            raise _led(side, where, holder.describe() if holder is not None else "another process") from None
        yield elector


def _led(side: str, where: str, holder: str | None) -> MigrationError:
    return MigrationError(
        f"the {side} store {where} is led by a running daemon ({holder or 'another process'}): "
        "stop it before migrating"
    )


async def _while_leading(electors: Sequence[Elector], work: Awaitable[T]) -> T:
    """Run ``work`` while holding every elector's leadership; a lost one stops it.

    Raises:
        LeadershipLost: a lease or lock was lost mid-way (rerun: the migration resumes).
    """
    holds: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.hold()) for e in electors]
    job: asyncio.Future[Any] = asyncio.ensure_future(work)
    everything = [job, *holds]
    try:
        done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
        for held in holds:
            if held in done:
                held.result()  # raises LeadershipLost
        result: T = job.result()
        return result
    finally:
        for future in everything:
            future.cancel()
        await asyncio.gather(*everything, return_exceptions=True)


# --- copying -------------------------------------------------------------------------------------


@dataclass(slots=True)
class TableResult:
    """One table's outcome: rows copied by this run, and both sides' digests."""

    copied: int = 0
    skipped: int = 0
    """Partitions already done by an earlier run."""
    source: Digest | None = None
    dest: Digest | None = None

    @property
    def identical(self) -> bool:
        return (
            self.source is not None
            and self.dest is not None
            and (
                self.source.rows,
                self.source.total,
            )
            == (self.dest.rows, self.dest.total)
        )


@dataclass(slots=True)
class MigrationReport:
    """What a migration did, table by table (:data:`VERIFIED` order)."""

    source: str
    dest: str
    tables: dict[str, TableResult]
    elapsed_s: float

    @property
    def copied(self) -> int:
        return sum(t.copied for t in self.tables.values())

    @property
    def identical(self) -> bool:
        return all(t.identical for t in self.tables.values())

    def render(self) -> str:
        """The summary printed at the end: one line per table."""
        lines = [
            f"migrated {self.source} -> {self.dest} in {self.elapsed_s:.1f} s",
            f"{'table':<16}{'copied':>12}{'source rows':>14}{'dest rows':>14}  {'content hash':<18}status",
        ]
        for name, t in self.tables.items():
            src, dst = t.source or Digest(), t.dest or Digest()
            status = "ok" if t.identical else f"DIFFERS (dest {dst.hexdigest})"
            lines.append(
                f"{name:<16}{t.copied:>12,}{src.rows:>14,}{dst.rows:>14,}  {src.hexdigest:<18}{status}"
            )
        verdict = "identical" if self.identical else "NOT identical"
        lines.append(f"{len(self.tables)} tables, {self.copied:,} rows copied, content {verdict}")
        return "\n".join(lines)


Write = Callable[[pa.Table, "CheckpointWrite | None"], Awaitable[None]]


async def _pour(
    batches: AsyncGenerator[pa.Table, None], write: Write, done: CheckpointWrite, progress: Progress
) -> int:
    """Write every batch, the last one with ``done`` (the progress checkpoint); return rows.

    One batch is held back so that the last can carry the checkpoint; an empty stream still
    records ``done`` (through ``write`` of an empty table: the caller's writer puts it alone).
    """
    held: pa.Table | None = None
    rows = 0
    async with aclosing(batches) as stream:
        async for batch in stream:
            if not batch.num_rows:
                continue
            if held is not None:
                await write(held, None)
                progress.add(held.num_rows)
            held = batch
            rows += batch.num_rows
    await write(held if held is not None else pa.table({}), done)
    if held is not None:
        progress.add(held.num_rows)
    return rows


def _writer(dest: Storage, table: str, partition: int) -> Write:
    """How a batch of ``table`` goes into ``dest``, with the progress checkpoint when given."""

    async def write(batch: pa.Table, checkpoint: CheckpointWrite | None) -> None:
        if not batch.num_rows:
            if checkpoint is not None:
                await dest.put_checkpoint(*checkpoint)
            return
        if table == "features":
            # Rows of an older feature schema that the stage could not fill in stay as stored.
            await dest.write_features(batch, checkpoint=checkpoint, allow_missing_inputs=True)
        elif table == "predictions":
            await dest.write_predictions(batch, checkpoint=checkpoint)
        elif table == "outcomes":
            await dest.write_outcomes(batch, checkpoint=checkpoint)
        else:
            # The cache and the quarantine take no checkpoint: the rows first, then the
            # progress. A crash in between redoes the partition, and their puts are upserts.
            if table == "cache":
                hashes = batch.column("feature_hash").to_pylist()
                probabilities = batch.column("probability").to_pylist()
                await dest.cache.put(partition, dict(zip(hashes, probabilities, strict=True)))
            else:
                await dest.quarantine.put(entries_from_table(batch))
            if checkpoint is not None:
                await dest.put_checkpoint(*checkpoint)

    return write


def _partition_rows(source: Storage, table: str, partition: int) -> AsyncGenerator[pa.Table, None]:
    if table == "features":
        return source.read_feature_history(seasons=[partition])
    if table == "predictions":
        return source.read_predictions(season=partition, role=None)
    if table == "outcomes":
        return source.read_outcomes(season=partition)
    if table == "cache":
        return source.cache.read_entries(model_version=partition)
    return _quarantine_rows(source, partition)


async def _quarantine_rows(source: Storage, season: int) -> AsyncGenerator[pa.Table, None]:
    yield entries_table(await source.quarantine.entries(season=season))


@dataclass(slots=True)
class Migration:
    """One run of ``storage migrate`` over two open stores."""

    source: Storage
    dest: Storage
    record: ProgressRecord
    stream: IO[str]
    results: dict[str, TableResult] = field(default_factory=lambda: {n: TableResult() for n in VERIFIED})

    async def copy_tables(self) -> None:
        """Copy each partition of each table not yet done, in :data:`COPIED` order."""
        plan = await self.source.stored_rows()
        for table in COPIED:
            for partition in sorted(plan.get(table, {})):
                result = self.results[table]
                if self.record.is_done(table, partition):
                    result.skipped += 1
                    continue
                record = self.record.with_done(table, partition)
                progress = Progress(f"copy {table} {partition}", self.stream)
                try:
                    rows = await _pour(
                        _partition_rows(self.source, table, partition),
                        _writer(self.dest, table, partition),
                        record.checkpoint(),
                        progress,
                    )
                except BaseException:
                    progress.abort()
                    raise
                progress.done(f"{rows:,} rows")
                self.record = record
                result.copied += rows
                log.info("storage.migrate.partition_copied", table=table, partition=partition, rows=rows)

    async def copy_checkpoints(self) -> None:
        """Copy every checkpoint but the progress record (last: a destination cut off earlier
        never holds a watermark whose rows are missing), then mark them done."""
        if self.record.is_done(CHECKPOINTS, 0):
            self.results[CHECKPOINTS].skipped += 1
            return
        names = [n for n in await self.source.checkpoint_names() if n != PROGRESS_CHECKPOINT]
        for name in names:
            value = await self.source.get_checkpoint(name)
            if value is not None:
                await self.dest.put_checkpoint(name, value)
        self.record = self.record.with_done(CHECKPOINTS, 0)
        await self.dest.put_checkpoint(*self.record.checkpoint())
        self.results[CHECKPOINTS].copied += len(names)
        log.info("storage.migrate.checkpoints_copied", checkpoints=len(names))

    async def verify(self) -> None:
        """Digest every table on both sides at once (two streams, one batch each in memory)."""
        for name in VERIFIED:
            label = Progress(f"verify {name}", self.stream)
            source, dest = await asyncio.gather(
                content_digest(table_stream(self.source, name)), content_digest(table_stream(self.dest, name))
            )
            label.add(source.rows)
            label.done("ok" if (source.rows, source.total) == (dest.rows, dest.total) else "DIFFERS")
            self.results[name].source, self.results[name].dest = source, dest


async def migrate(
    source_cfg: StorageConfig,
    dest_cfg: StorageConfig,
    *,
    leadership: LeadershipConfig | None = None,
    stream: IO[str] | None = None,
) -> MigrationReport:
    """Copy every table and checkpoint of ``source_cfg``'s store into ``dest_cfg``'s, resuming
    a run cut off earlier, then verify both sides table by table.

    Idempotent: a finished migration run again copies nothing and verifies again.
    ``stream`` gets the progress lines when it is a terminal (default: stderr). The run leads
    both stores (``leadership``: the lease settings, as a daemon's ``[leadership]``) and fences
    its writes into the destination with its term.

    Raises:
        MigrationError: an ``auto`` backend, the same store on both sides, a side led by a
            daemon, or a destination holding other data (nothing is written then).
        StorageError: a backend failed (the run may be repeated: it resumes).
    """
    stream = stream if stream is not None else sys.stderr
    source_where, dest_where = describe(source_cfg), describe(dest_cfg)
    if source_where == dest_where:
        raise MigrationError(f"source and destination are the same store ({source_where})")
    lease = leadership or LeadershipConfig()
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        # Storage first: opening creates a fresh Postgres schema (with its leadership table).
        source = await stack.enter_async_context(open_storage(source_cfg))
        dest = await stack.enter_async_context(open_storage(dest_cfg))
        led = [
            await stack.enter_async_context(leading(source_cfg, lease, "source", source_where)),
            await stack.enter_async_context(leading(dest_cfg, lease, "destination", dest_where)),
        ]
        await fence_storage(dest, led[1], await led[1].acquire())  # acquire(): its token, again

        async def work() -> Migration:
            record = await load_progress(dest, source_where, dest_where=dest_where)
            log.info(
                "storage.migrate.started", source=source_where, dest=dest_where, resumed=bool(record.done)
            )
            run = Migration(source=source, dest=dest, record=record, stream=stream)
            await run.copy_tables()
            await run.copy_checkpoints()
            await run.verify()
            return run

        run = await _while_leading(led, work())
    report = MigrationReport(source_where, dest_where, run.results, time.monotonic() - started)
    log.info(
        "storage.migrate.finished",
        source=source_where,
        dest=dest_where,
        copied=report.copied,
        identical=report.identical,
        elapsed_s=round(report.elapsed_s, 3),
    )
    return report


async def command(args: argparse.Namespace) -> int:
    """``scorebeater storage migrate``: print the summary; exit 1 when verification fails."""
    from scorebeater.config import load_config  # noqa: PLC0415 - the CLI's lazy import

    source_cfg, dest_cfg = load_config(args.source).storage, load_config(args.dest).storage
    if args.batch_rows is not None:
        source_cfg = replace(source_cfg, batch_rows=args.batch_rows)
        dest_cfg = replace(dest_cfg, batch_rows=args.batch_rows)
    report = await migrate(source_cfg, dest_cfg, leadership=load_config(args.source).leadership)
    print(report.render())  # noqa: T201 - this command's output
    if not report.identical:
        differ = [name for name, t in report.tables.items() if not t.identical]
        raise MigrationError(
            f"verification failed: {', '.join(differ)} differ between source and destination "
            "(did a daemon write to the source during or since the migration? stop it and migrate "
            "into an empty store again)"
        )
    return 0
