"""Parquet tables over an object store: the engine behind the local and S3 backends.

Both backends keep the same layout under their root (a directory, or an S3 prefix)::

    _manifest/<generation:020d>.json            one per commit; the newest is the store's state
    features/season=<S>/part-<commit>-<n>.parquet
    features_latest/season=<S>/...              each player-season's latest feature row
    predictions/season=<S>/...   outcomes/season=<S>/...   cache/model_version=<V>/...

**Commits.** A write first uploads its Parquet segments, then commits by creating the next
manifest generation with one exclusive create (S3 ``If-None-Match: *``; locally a hard link
of a fsynced temporary file, which fails if the name exists). The manifest lists every live
segment of every partition, in commit order, and the checkpoints, so rows and a checkpoint
passed with them become visible together. Readers read only segments listed in the newest
manifest: an interrupted write leaves at most unreferenced segments, which a later garbage
collection removes once they are older than ``gc_grace_s``.

**Writers.** The design assumes one writer process (the daemon). A second writer is detected,
not corrupted: its exclusive create of an existing generation fails, and the commit is redone
on top of the newer manifest (appends commute; a compaction whose inputs changed is dropped).
A cancellation that lands during the commit request itself may still commit (as a database
``COMMIT`` whose reply is lost): the write is then wholly visible, never partially.

**Upserts.** Each segment is unique by key. Across segments of a partition the row from the
later commit wins, after an optional rank (an outcome's ``final`` beats ``early``; the latest
feature row has the highest ``as_of_seq``). Partitions whose segments come from one commit are
read without deduplication; otherwise a key-columns-only pass picks the winning rows first.
A partition with more than ``max_segments`` segments is compacted: its newest small segments
are merged into one (size-tiered, so a large base segment is not rewritten on every merge).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import itertools
import operator
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from scorebeater.errors import StorageError, StorageNotFound
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

log = structlog.get_logger(__name__)

MANIFEST_DIR = "_manifest"
PING_KEY = "_ping"
MANIFEST_FORMAT = 1
KEEP_MANIFESTS = 4
"""Older generations kept so a reader in another process can finish loading the one it listed."""
DEFAULT_GC_GRACE_S = 3600.0
"""Unreferenced objects younger than this are left alone: an in-flight write or a reader of an
older manifest may still need them."""
_COMMIT_ATTEMPTS = 8
_UPLOAD_CONCURRENCY = 4
"""Segments encoded and stored at once by one write: each encodes in a worker thread (pyarrow
releases the GIL) while the others upload, so encoding overlaps I/O on every backend."""
SEGMENT_MAX_ROWS = 262_144
"""A partition larger than this is written as several segments (disjoint by key, one commit),
so a single large partition still encodes on every core and uploads in parallel."""
ROW_GROUP_ROWS = 65_536
"""Rows per Parquet row group: a reader holds one group at a time, and a streamed upload can
send a part as soon as enough groups are encoded."""
_UNIQUE_STRINGS = frozenset({"feature_hash"})
"""String columns with (nearly) one value per row: a dictionary would only cost time."""
_SOURCE_REUSE_BYTES = 64 * 1024 * 1024
"""A deduplicating scan keeps segments it already fetched up to this size for its second pass."""

_OWN_FILE = re.compile(r"part-[0-9a-f]{32}-[0-9]{4}\.parquet|\.tmp-[0-9a-f]{32}")
"""Names the engine (and the local store's temporary files) create under table directories."""
_KEY_PART = re.compile(r"[A-Za-z0-9_.=-]{1,200}")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``StorageError``.

    Keys are ``/``-separated parts of ``[A-Za-z0-9_.=-]``, never ``.`` or ``..``, never
    absolute: joined to a local root or an S3 prefix they cannot point outside it.
    """
    parts = key.split("/")
    if not key or any(not _KEY_PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise StorageError(f"unsafe object key {key!r}")
    return key


# --- the object store -------------------------------------------------------------------------


class ObjectExists(StorageError):
    """An exclusive create found the key already present (another commit got there first)."""


class ObjectSource(Protocol):
    """An object's bytes, produced on demand into an output stream."""

    size: int
    """Bytes written by the last ``write_to`` (0 before)."""

    def write_to(self, sink: pa.NativeFile) -> None:
        """Write the whole object into ``sink`` (leaving it open). CPU-bound: called in a
        worker thread; raises whatever the encoder or the sink raises."""
        ...


class ParquetSource:
    """A table encoded as one Parquet object with :func:`parquet_options` when stored."""

    def __init__(self, table: pa.Table, spec: TableSpec) -> None:
        self.table = table
        self.spec = spec
        self.size = 0

    def write_to(self, sink: pa.NativeFile) -> None:
        start = sink.tell()
        pq.write_table(self.table, sink, row_group_size=ROW_GROUP_ROWS, **parquet_options(self.spec))
        self.size = sink.tell() - start


def render(data: bytes | ObjectSource) -> bytes:
    """The object's bytes in memory (for a store that needs them whole). CPU: worker thread."""
    if isinstance(data, bytes):
        return data
    sink = pa.BufferOutputStream()
    data.write_to(sink)
    return bytes(sink.getvalue())


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    """Relative to the store's root, ``/``-separated."""
    size: int
    """Bytes."""
    modified: float
    """Last modification, POSIX seconds."""


class ObjectStore(Protocol):
    """Bytes by validated key under one root (a directory or an S3 prefix).

    Every method raises ``StorageUnavailable`` when the store cannot be reached (I/O error,
    network, auth, 5xx) and ``StorageError`` for other failures, ``from`` the driver's error.
    """

    where: str
    """Human-readable location for logs and errors (no credentials)."""

    async def put(self, key: str, data: bytes | ObjectSource, *, exclusive: bool = False) -> None:
        """Store ``data`` at ``key``, atomically: readers see the old object or the new one.

        ``data`` is bytes, or an :class:`ObjectSource` whose ``write_to`` the store calls once,
        in a worker thread, with the stream the object's bytes go to (a temporary file, or the
        parts of an S3 upload), so a large object is never held whole. If the source raises or
        the put is cancelled, nothing appears at ``key`` (an S3 multipart upload is aborted).
        With ``exclusive`` the put fails with ``ObjectExists`` if ``key`` exists.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The object's bytes; ``StorageNotFound`` if absent."""
        ...

    async def open_input(self, key: str) -> pa.NativeFile:
        """A random-access Arrow file over the object (for Parquet); ``StorageNotFound`` if absent."""
        ...

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (ending in ``/``), in key order."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; absent keys are not an error (idempotent)."""
        ...


# --- manifests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One committed Parquet object, unique by its table's key."""

    key: str
    rows: int
    size: int
    commit: str
    """Id of the commit that wrote it: segments of one commit never overlap by key."""
    bounds: Mapping[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    """Smallest and largest value of each in-partition key column: two segments that are
    disjoint on any key column cannot share a key, so reading them needs no deduplication."""

    def disjoint(self, other: Segment) -> bool:
        return self.commit == other.commit or any(
            name in other.bounds and (hi < other.bounds[name][0] or other.bounds[name][1] < lo)
            for name, (lo, hi) in self.bounds.items()
        )


Partitions = Mapping[str, tuple[Segment, ...]]


@dataclass(frozen=True, slots=True)
class Manifest:
    """The store's committed state: live segments per table and partition, and checkpoints."""

    generation: int = 0
    commit: str = ""
    tables: Mapping[str, Partitions] = dataclasses.field(default_factory=dict)
    checkpoints: Mapping[str, bytes] = dataclasses.field(default_factory=dict)

    def partitions(self, table: str) -> Partitions:
        return self.tables.get(table, {})

    def segment_keys(self) -> set[str]:
        return {s.key for parts in self.tables.values() for segs in parts.values() for s in segs}

    def with_partition(self, table: str, partition: str, segments: tuple[Segment, ...]) -> Manifest:
        parts = dict(self.partitions(table))
        if segments:
            parts[partition] = segments
        else:
            parts.pop(partition, None)
        tables = dict(self.tables)
        tables[table] = parts
        return dataclasses.replace(self, tables=tables)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": MANIFEST_FORMAT,
                "generation": self.generation,
                "commit": self.commit,
                "tables": {
                    t: {p: [_segment_doc(s) for s in segs] for p, segs in parts.items()}
                    for t, parts in self.tables.items()
                },
                "checkpoints": {n: base64.b64encode(v).decode() for n, v in self.checkpoints.items()},
            }
        )

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = orjson.loads(data)
            if doc["format"] != MANIFEST_FORMAT:
                raise StorageError(f"{where}: unsupported manifest format {doc['format']!r}")
            tables = {
                t: {p: tuple(Segment(**check_segment(s)) for s in segs) for p, segs in parts.items()}
                for t, parts in doc["tables"].items()
            }
            checkpoints = {
                check_checkpoint_name(n): base64.b64decode(v, validate=True)
                for n, v in doc["checkpoints"].items()
            }
            return cls(int(doc["generation"]), str(doc["commit"]), tables, checkpoints)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageError(f"{where}: corrupt manifest: {exc!r}") from exc


def _segment_doc(segment: Segment) -> dict[str, Any]:
    doc = dataclasses.asdict(segment)
    doc["bounds"] = {name: list(bound) for name, bound in segment.bounds.items()}
    return doc


def check_segment(doc: dict[str, Any]) -> dict[str, Any]:
    bounds = {}
    for name, (lo, hi) in doc.get("bounds", {}).items():
        if type(lo) is not type(hi) or not isinstance(lo, int | str):
            raise ValueError(f"bad bounds for {name!r}")
        bounds[str(name)] = (lo, hi)
    return {
        "key": check_key(doc["key"]),
        "rows": int(doc["rows"]),
        "size": int(doc["size"]),
        "commit": str(doc["commit"]),
        "bounds": bounds,
    }


def manifest_key(generation: int) -> str:
    return f"{MANIFEST_DIR}/{generation:020d}.json"


def _generation_of(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    stem, _, ext = name.partition(".")
    return int(stem) if ext == "json" and stem.isdigit() else None


# --- tables -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one logical table is stored: schema, partition column, key and precedence."""

    name: str
    schema: pa.Schema
    partition: str
    key: tuple[str, ...]
    """The full upsert key (including the partition column)."""
    rank: Callable[[pa.Table], list[pa.Array]] | None = None
    """Values compared (descending) before commit order when two rows share a key."""
    rank_columns: tuple[str, ...] = ()
    max_segments: int = 32

    @property
    def local_key(self) -> tuple[str, ...]:
        """The key within one partition (the partition column is constant there)."""
        return tuple(k for k in self.key if k != self.partition)

    def partition_name(self, value: int) -> str:
        return f"{self.partition}={operator.index(value)}"

    def partition_value(self, name: str) -> int:
        return int(name.partition("=")[2])


def _final_first(table: pa.Table) -> list[pa.Array]:
    return [pc.cast(pc.equal(table.column("resolution"), "final"), pa.int8())]


def _latest_seq(table: pa.Table) -> list[pa.Array]:
    return [table.column("as_of_seq")]


FEATURES = TableSpec(name="features", schema=FEATURES_SCHEMA, partition="season", key=FEATURE_KEY)
FEATURES_LATEST = TableSpec(
    name="features_latest",
    schema=FEATURES_SCHEMA,
    partition="season",
    key=("player_id", "season"),
    rank=_latest_seq,
    rank_columns=("as_of_seq",),
    max_segments=8,
)
PREDICTIONS = TableSpec(name="predictions", schema=PREDICTIONS_SCHEMA, partition="season", key=PREDICTION_KEY)
OUTCOMES = TableSpec(
    name="outcomes",
    schema=OUTCOMES_SCHEMA,
    partition="season",
    key=OUTCOME_KEY,
    rank=_final_first,
    rank_columns=("resolution",),
    max_segments=8,
)
CACHE = TableSpec(
    name="cache",
    schema=CACHE_SCHEMA,
    partition="model_version",
    key=("feature_hash", "model_version"),
    max_segments=16,
)
TABLES = (FEATURES, FEATURES_LATEST, PREDICTIONS, OUTCOMES, CACHE)

_LATEST_PREDICTION = (("player_id",), ("as_of_seq", "model_version"))
"""``latest_only`` predictions: per player (in a season partition), highest seq, then version."""


def winner_indices(
    keys: pa.Table, key_columns: Sequence[str], rank: Sequence[pa.Array] = (), *, key_order: bool = False
) -> np.ndarray:
    """Row indices of the row that wins for each distinct key: ascending, or with
    ``key_order`` in ascending order of the key columns (compared in the order given).

    Highest ``rank`` values (compared in order) win; ties go to the later row. Vectorised:
    one Arrow sort, then a comparison of neighbours.
    """
    n = keys.num_rows
    if n == 0:
        return np.empty(0, dtype=np.int64)
    columns = {f"k{i}": keys.column(k) for i, k in enumerate(key_columns)}
    columns |= {f"r{i}": r for i, r in enumerate(rank)}
    columns["ord"] = pa.array(np.arange(n, dtype=np.int64))
    table = pa.table(columns)
    order = [(f"k{i}", "ascending") for i in range(len(key_columns))]
    order += [(f"r{i}", "descending") for i in range(len(rank))] + [("ord", "descending")]
    idx = pc.sort_indices(table, sort_keys=order)
    first = np.zeros(n, dtype=bool)
    first[0] = True
    for i in range(len(key_columns)):
        col = table.column(f"k{i}").take(idx)
        first[1:] |= pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    winners: np.ndarray = idx.to_numpy()[first]
    return winners if key_order else np.sort(winners)


def _presorted_winners(columns: Sequence[pa.ChunkedArray | pa.Array], n_key: int) -> np.ndarray | None:
    """Winners of rows already in non-decreasing order of ``columns`` (the ``n_key`` key
    columns, then the ranks), or ``None`` if they are not (or a column is not an integer).

    Rows usually arrive grouped and sorted (a stage writes player by player, game by game):
    a comparison of neighbours then replaces the sort. In such an order the last row of each
    key wins: it has the highest rank, and among equal ranks it is the later row.
    """
    if not all(pa.types.is_integer(c.type) for c in columns):
        return None
    arrays = [np.asarray(c.to_numpy()) for c in columns]
    n = len(arrays[0])
    undecided = np.ones(max(n - 1, 0), dtype=bool)
    key_equal = undecided
    for i, values in enumerate(arrays):
        before, after = values[:-1], values[1:]
        if (undecided & (after < before)).any():
            return None
        undecided = undecided & (after == before)
        if i == n_key - 1:
            key_equal = undecided
    return np.flatnonzero(np.append(~key_equal, True)) if n else np.empty(0, dtype=np.int64)


def ordered_winners(table: pa.Table, spec: TableSpec) -> pa.Table:
    """``table`` with one row per key of ``spec`` (the winner), ordered by partition, then key.

    CPU: runs in a worker thread. Already ordered input (the usual case) costs one pass.
    """
    keys = [spec.partition, *spec.local_key]
    rank = spec.rank(table) if spec.rank else []
    winners = _presorted_winners([*(table.column(k) for k in keys), *rank], len(keys))
    if winners is None:
        winners = winner_indices(table, keys, rank, key_order=True)
    elif len(winners) == table.num_rows:
        return table  # ordered, and no key twice
    return table.take(pa.array(winners))


def split_segments(spec: TableSpec, rows: pa.Table, max_rows: int) -> list[tuple[int, pa.Table]]:
    """Deduplicate ``rows`` and cut them into ``(partition value, slice)`` segments of at most
    ``max_rows`` rows: zero-copy slices of one ordered table, disjoint by key."""
    rows = ordered_winners(rows, spec)
    values = np.asarray(rows.column(spec.partition).to_numpy())
    edges = [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist(), len(values)]
    segments = []
    for start, end in itertools.pairwise(edges):
        step = -(-(end - start) // -(-(end - start) // max_rows))  # fewest pieces, even sizes
        segments += [
            (int(values[start]), rows.slice(offset, min(step, end - offset)))
            for offset in range(start, end, step)
        ]
    return segments


def compaction_run(rows: Sequence[int]) -> int:
    """Index where the run of segments to merge starts (the run always ends at the newest).

    Walking back from the newest segment, a segment joins while it is at most twice the rows
    gathered so far, so a large base segment stays untouched and merges stay geometric. If
    that leaves fewer than two segments, everything is merged.
    """
    gathered = 0
    start = len(rows)
    for i in range(len(rows) - 1, -1, -1):
        if gathered and rows[i] > 2 * gathered:
            break
        gathered += rows[i]
        start = i
    return start if len(rows) - start >= 2 else 0  # noqa: PLR2004 - a merge needs two segments


def parquet_options(spec: TableSpec) -> dict[str, Any]:
    """Writer options for ``spec``'s segments.

    Dictionaries only for repeated strings (names, ids; not hashes), byte-stream-split floats
    (they compress better and faster than with dictionaries), LZ4, and statistics only for
    the key columns (what readers prune on; the engine keeps its own key bounds).
    """
    schema = spec.schema
    strings = [f.name for f in schema if pa.types.is_string(f.type) and f.name not in _UNIQUE_STRINGS]
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    return {
        "use_dictionary": strings,
        "use_byte_stream_split": floats or False,
        "compression": "lz4",
        "write_statistics": list(spec.key),
    }


def key_bounds(table: pa.Table, columns: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Min and max of each column (empty for an empty table)."""
    if not table.num_rows:
        return {}
    bounds = {}
    for name in columns:
        extremes = pc.min_max(table.column(name))
        bounds[name] = (extremes["min"].as_py(), extremes["max"].as_py())
    return bounds


def merge_bounds(
    a: Mapping[str, tuple[Any, Any]], b: Mapping[str, tuple[Any, Any]]
) -> dict[str, tuple[Any, Any]]:
    if not a or not b:
        return dict(a or b)
    return {n: (min(a[n][0], b[n][0]), max(a[n][1], b[n][1])) for n in a}


def _as_table(batch: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if not table.schema.equals(schema):
        table = table.cast(schema)
    return table


async def rebatch(tables: AsyncIterator[pa.Table], batch_rows: int) -> AsyncIterator[pa.Table]:
    """Regroup tables of at most ``batch_rows`` rows into as few as possible, none larger."""
    pending: list[pa.Table] = []
    count = 0
    async for table in tables:
        if not table.num_rows:
            continue
        if count + table.num_rows > batch_rows and pending:
            yield pa.concat_tables(pending)
            pending, count = [], 0
        pending.append(table)
        count += table.num_rows
    if pending:
        yield pa.concat_tables(pending)


async def first_error(calls: Sequence[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run all calls, at most ``limit`` at a time; on a failure cancel the rest and raise it."""
    semaphore = asyncio.Semaphore(limit)

    async def run(call: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await call()

    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(run(call))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None


@dataclass(frozen=True, slots=True)
class _Pending:
    spec: TableSpec
    partition: str
    key: str
    rows: pa.Table
    bounds: dict[str, tuple[Any, Any]]


class _Abandon(Exception):
    """A compaction whose inputs changed under it: drop it."""


class ObjectTableStorage:
    """The ``Storage`` protocol over any ``ObjectStore`` (see the module docstring).

    Build it with :meth:`open`, which loads the newest manifest and collects garbage. Safe for
    concurrent use by the tasks of one event loop: commits are serialised, reads take a
    snapshot of the newest manifest and never block writers.
    """

    def __init__(self, objects: ObjectStore, *, batch_rows: int, gc_grace_s: float) -> None:
        self.objects = objects
        self._batch_rows = batch_rows
        self._gc_grace_s = gc_grace_s
        self._manifest = Manifest()
        self._commit_lock = asyncio.Lock()
        self._cache_memo: dict[int, dict[str, pa.Table]] = {}

    async def open(self) -> None:
        """Load the newest manifest and remove garbage older than the grace period."""
        await self._snapshot()
        await self.collect_garbage()
        log.info("storage.opened", where=self.objects.where, generation=self._manifest.generation)

    # --- manifest -------------------------------------------------------------------------

    async def _snapshot(self) -> Manifest:
        """The newest committed manifest (one listing; one read when it changed)."""
        for _ in range(3):
            listed = await self.objects.list_prefix(f"{MANIFEST_DIR}/")
            generations = [g for g in (_generation_of(o.key) for o in listed) if g is not None]
            newest = max(generations, default=0)
            if newest <= self._manifest.generation:
                return self._manifest
            key = manifest_key(newest)
            try:
                data = await self.objects.get(key)
            except StorageNotFound:
                continue  # pruned by a writer between list and get: list again
            manifest = Manifest.from_json(data, f"{self.objects.where}/{key}")
            if manifest.generation > self._manifest.generation:
                self._manifest = manifest
            return self._manifest
        raise StorageError(f"{self.objects.where}: manifests keep changing under the reader")

    async def _commit(self, mutate: Callable[[Manifest], Manifest], commit_id: str) -> Manifest:
        """Create the next manifest generation from ``mutate(newest)``; redo on a conflict."""
        async with self._commit_lock:
            for _ in range(_COMMIT_ATTEMPTS):
                base = self._manifest
                if base.commit == commit_id:
                    return base  # an earlier, interrupted attempt did land
                new = dataclasses.replace(mutate(base), generation=base.generation + 1, commit=commit_id)
                try:
                    await self.objects.put(manifest_key(new.generation), new.to_json(), exclusive=True)
                except ObjectExists:
                    log.warning(
                        "storage.commit_conflict", where=self.objects.where, generation=new.generation
                    )
                    await self._snapshot()
                    continue
                self._manifest = new
                if new.generation > KEEP_MANIFESTS:
                    await self._prune(new.generation - KEEP_MANIFESTS)
                return new
        raise StorageError(f"{self.objects.where}: commit lost {_COMMIT_ATTEMPTS} races to another writer")

    async def _prune(self, generation: int) -> None:
        # The commit has landed: failing to delete an old manifest must not fail the write
        # (garbage collection on the next open removes it).
        try:
            await self.objects.delete([manifest_key(generation)])
        except StorageError:
            log.warning("storage.manifest_prune_failed", generation=generation, exc_info=True)

    async def collect_garbage(self, prefix: str | None = None, *, grace_s: float | None = None) -> int:
        """Delete objects no manifest references, older than the grace period; return how many.

        Only the store's own names are considered (``_manifest/`` and the table directories:
        segments and temporary files), so a root shared with other files is safe. Old manifest
        generations beyond the kept few go too. Safe while writing: a segment being uploaded is
        younger than the grace period. ``prefix`` limits the sweep to one partition.
        """
        manifest = await self._snapshot()
        live = manifest.segment_keys()
        cutoff = time.time() - (self._gc_grace_s if grace_s is None else grace_s)
        doomed = []
        prefixes = [prefix] if prefix else [f"{MANIFEST_DIR}/", *(f"{t.name}/" for t in TABLES)]
        for info in [i for p in prefixes for i in await self.objects.list_prefix(p)]:
            name = info.key.rsplit("/", 1)[-1]
            if info.key.startswith(f"{MANIFEST_DIR}/"):
                generation = _generation_of(info.key)
                old = generation is not None and generation <= manifest.generation - KEEP_MANIFESTS
                stale_tmp = name.startswith(".tmp-") and info.modified < cutoff
                if old or stale_tmp:
                    doomed.append(info.key)
            elif _OWN_FILE.fullmatch(name) and info.key not in live and info.modified < cutoff:
                doomed.append(info.key)
        if doomed:
            await self.objects.delete(doomed)
            log.info("storage.garbage_collected", where=self.objects.where, objects=len(doomed))
        return len(doomed)

    # --- writing --------------------------------------------------------------------------

    @staticmethod
    def _prepare(spec: TableSpec, rows: pa.Table, commit_id: str) -> list[_Pending]:
        """Deduplicate and cut into segments (CPU: runs in a worker thread; no encoding yet)."""
        pending = []
        for n, (value, part) in enumerate(split_segments(spec, rows, SEGMENT_MAX_ROWS)):
            partition = spec.partition_name(value)
            key = check_key(f"{spec.name}/{partition}/part-{commit_id}-{n:04d}.parquet")
            pending.append(_Pending(spec, partition, key, part, key_bounds(part, spec.local_key)))
        return pending

    async def _store_segments(self, pending: Sequence[_Pending], commit_id: str) -> list[Segment]:
        """Encode and store every segment, ``_UPLOAD_CONCURRENCY`` at a time; first error wins.

        Each put encodes in a worker thread straight into the store's output stream (a
        temporary file, or an upload), so encoding overlaps the other segments' I/O and no
        segment is held encoded in memory beyond what the store buffers.
        """
        segments: dict[str, Segment] = {}

        async def store(p: _Pending) -> None:
            source = ParquetSource(p.rows, p.spec)
            await self.objects.put(p.key, source)
            segments[p.key] = Segment(p.key, p.rows.num_rows, source.size, commit_id, p.bounds)

        # Largest first: the long encodes start early instead of trailing at the end.
        order = sorted(pending, key=lambda p: -p.rows.num_rows)
        await first_error([functools.partial(store, p) for p in order], _UPLOAD_CONCURRENCY)
        return [segments[p.key] for p in pending]

    async def _write(
        self, tables: Sequence[tuple[TableSpec, pa.Table]], checkpoint: CheckpointWrite | None
    ) -> None:
        if checkpoint is not None:
            name, value = checkpoint
            check_checkpoint_name(name)
            if not isinstance(value, bytes):
                raise StorageError(f"checkpoint {name!r}: value must be bytes, got {type(value).__name__}")
        commit_id = uuid.uuid4().hex
        pending: list[_Pending] = []
        for spec, rows in tables:
            if rows.num_rows:
                pending += await asyncio.to_thread(self._prepare, spec, rows, commit_id)
        if not pending and checkpoint is None:
            return
        segments = await self._store_segments(pending, commit_id)
        added = [(p.spec, p.partition, s) for p, s in zip(pending, segments, strict=True)]

        def mutate(base: Manifest) -> Manifest:
            manifest = base
            for spec, partition, segment in added:
                current = manifest.partitions(spec.name).get(partition, ())
                manifest = manifest.with_partition(spec.name, partition, (*current, segment))
            if checkpoint is not None:
                manifest = dataclasses.replace(
                    manifest, checkpoints={**manifest.checkpoints, checkpoint[0]: checkpoint[1]}
                )
            return manifest

        manifest = await self._commit(mutate, commit_id)
        log.debug(
            "storage.committed",
            generation=manifest.generation,
            segments=len(segments),
            rows=sum(s.rows for s in segments),
            checkpoint=checkpoint[0] if checkpoint else None,
        )
        for spec, partition in dict.fromkeys((p.spec, p.partition) for p in pending):
            if len(manifest.partitions(spec.name).get(partition, ())) > spec.max_segments:
                await self._compact_quietly(spec, partition)

    async def _compact_quietly(self, spec: TableSpec, partition: str) -> None:
        # The write is committed; a failed compaction only costs read speed and is retried by
        # the next write to the partition, so it is logged rather than raised.
        try:
            await self.compact(spec, partition)
        except StorageError:
            log.warning("storage.compaction_failed", table=spec.name, partition=partition, exc_info=True)

    async def compact(self, spec: TableSpec, partition: str, *, everything: bool = False) -> bool:
        """Merge the partition's newest small segments (or all) into one; True if it did.

        Atomic through the manifest; abandoned if the segments changed meanwhile (then False).
        """
        segments = (await self._snapshot()).partitions(spec.name).get(partition, ())
        start = 0 if everything else compaction_run([s.rows for s in segments])
        run = segments[start:]
        if len(run) < 2:  # noqa: PLR2004 - merging one segment is a no-op
            return False
        commit_id = uuid.uuid4().hex
        data, rows, bounds = await self._encode_stream(
            spec, rebatch(self._scan_partition(spec, run), self._batch_rows)
        )
        key = check_key(f"{spec.name}/{partition}/part-{commit_id}-0000.parquet")
        segment = Segment(key, rows, len(data), commit_id, bounds)
        await self.objects.put(key, data)
        run_keys = [s.key for s in run]

        def mutate(base: Manifest) -> Manifest:
            current = base.partitions(spec.name).get(partition, ())
            keys = [s.key for s in current]
            for i in range(len(keys) - len(run_keys) + 1):
                if keys[i : i + len(run_keys)] == run_keys:
                    return base.with_partition(
                        spec.name, partition, (*current[:i], segment, *current[i + len(run_keys) :])
                    )
            raise _Abandon

        try:
            await self._commit(mutate, commit_id)
        except _Abandon:
            await self.objects.delete([key])
            return False
        log.info(
            "storage.compacted", table=spec.name, partition=partition, segments=len(run), rows=segment.rows
        )
        await self.collect_garbage(f"{spec.name}/{partition}/")
        return True

    @staticmethod
    async def _encode_stream(
        spec: TableSpec, tables: AsyncIterator[pa.Table]
    ) -> tuple[bytes, int, dict[str, tuple[Any, Any]]]:
        """Encode a stream of tables into one Parquet object; holds only the encoded bytes.

        Returns the bytes, the row count and the key bounds.
        """
        sink = pa.BufferOutputStream()
        writer = pq.ParquetWriter(sink, spec.schema, **parquet_options(spec))
        rows = 0
        bounds: dict[str, tuple[Any, Any]] = {}
        try:
            async for table in tables:
                await asyncio.to_thread(writer.write_table, table, ROW_GROUP_ROWS)
                rows += table.num_rows
                bounds = merge_bounds(bounds, key_bounds(table, spec.local_key))
        finally:
            await asyncio.to_thread(writer.close)
        return bytes(sink.getvalue()), rows, bounds

    # --- reading --------------------------------------------------------------------------

    async def _read_columns(
        self, segment: Segment, columns: Sequence[str], keep: dict[str, pa.NativeFile]
    ) -> pa.Table:
        source = await self.objects.open_input(segment.key)
        table = await asyncio.to_thread(pq.read_table, source, columns=list(columns))
        if sum(s.size() for s in keep.values()) + segment.size <= _SOURCE_REUSE_BYTES:
            keep[segment.key] = source
        return table

    async def _survivors(
        self,
        spec: TableSpec,
        segments: Sequence[Segment],
        keep: dict[str, pa.NativeFile],
        latest: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> list[np.ndarray | None]:
        """Per segment, a mask of the rows that win (``None``: all of them)."""
        overlapping = any(not a.disjoint(b) for i, a in enumerate(segments) for b in segments[i + 1 :])
        if not overlapping and latest is None:
            return [None] * len(segments)
        columns = list(
            dict.fromkeys((*spec.local_key, *spec.rank_columns, *(latest[0] + latest[1] if latest else ())))
        )
        keys = pa.concat_tables([await self._read_columns(s, columns, keep) for s in segments])

        def masks() -> np.ndarray:
            mask = np.zeros(keys.num_rows, dtype=bool)
            mask[winner_indices(keys, spec.local_key, spec.rank(keys) if spec.rank else [])] = True
            if latest is not None:
                index = np.flatnonzero(mask)
                survivors = keys.take(pa.array(index))
                best = winner_indices(survivors, latest[0], [survivors.column(c) for c in latest[1]])
                mask[:] = False
                mask[index[best]] = True
            return mask

        mask = await asyncio.to_thread(masks)
        bounds = np.cumsum([0, *(s.rows for s in segments)])
        if bounds[-1] != keys.num_rows:
            raise StorageError(
                f"{self.objects.where}: segment row counts disagree with the manifest in {spec.name}"
            )
        return [mask[bounds[i] : bounds[i + 1]] for i in range(len(segments))]

    async def _segment_batches(
        self, spec: TableSpec, segment: Segment, keep: dict[str, pa.NativeFile]
    ) -> AsyncIterator[pa.Table]:
        source = keep.pop(segment.key, None)
        if source is None:
            source = await self.objects.open_input(segment.key)
        try:
            reader = await asyncio.to_thread(pq.ParquetFile, source)
            batches = reader.iter_batches(batch_size=self._batch_rows)
            while (batch := await asyncio.to_thread(next, batches, None)) is not None:
                yield _as_table(batch, spec.schema)
        finally:
            source.close()

    async def _scan_partition(
        self,
        spec: TableSpec,
        segments: Sequence[Segment],
        row_filter: Callable[[pa.Table], pa.Table] | None = None,
        latest: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> AsyncIterator[pa.Table]:
        keep: dict[str, pa.NativeFile] = {}
        try:
            masks = await self._survivors(spec, segments, keep, latest)
            for segment, mask in zip(segments, masks, strict=True):
                if mask is not None and not mask.any():
                    continue
                offset = 0
                async for table in self._segment_batches(spec, segment, keep):
                    if mask is not None:
                        part = mask[offset : offset + table.num_rows]
                        offset += table.num_rows
                        table = table if part.all() else table.filter(pa.array(part))  # noqa: PLW2901
                    yield row_filter(table) if row_filter else table
        finally:
            for source in keep.values():
                source.close()

    async def _scan(
        self,
        spec: TableSpec,
        values: Collection[int] | None,
        row_filter: Callable[[pa.Table], pa.Table] | None = None,
        latest: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    ) -> AsyncIterator[pa.Table]:
        """The table's live rows in batches of at most ``batch_rows``, partition by partition."""
        partitions = (await self._snapshot()).partitions(spec.name)
        if values is not None:
            wanted = {spec.partition_name(v) for v in values}
            partitions = {p: s for p, s in partitions.items() if p in wanted}

        async def tables() -> AsyncIterator[pa.Table]:
            for name in sorted(partitions, key=spec.partition_value):
                async for table in self._scan_partition(spec, partitions[name], row_filter, latest):
                    yield table

        async for table in rebatch(tables(), self._batch_rows):
            yield table

    # --- the Storage protocol ---------------------------------------------------------------

    async def ping(self) -> None:
        """Write a tiny probe object; ``StorageUnavailable`` if the store is unreachable."""
        await self.objects.put(PING_KEY, b"ok")

    async def write_features(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert feature rows, and each player-season's latest row, in one commit."""
        rows = conform(rows, FEATURES_SCHEMA, "features")
        await self._write([(FEATURES, rows), (FEATURES_LATEST, rows)], checkpoint)

    async def read_latest_features(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's highest-``as_of_seq`` feature row per season (from ``features_latest``)."""
        row_filter = None
        if player_ids is not None:
            row_filter = _player_filter(pa.array([operator.index(p) for p in player_ids], pa.int64()))
        seasons = None if season is None else [season]
        async for table in self._scan(FEATURES_LATEST, seasons, row_filter):
            yield table

    async def read_feature_history(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every live feature row, season by season."""
        async for table in self._scan(FEATURES, seasons):
            yield table

    async def write_predictions(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert predictions by ``(player_id, season, as_of_seq, model_version)``."""
        rows = conform(rows, PREDICTIONS_SCHEMA, "predictions")
        await self._write([(PREDICTIONS, rows)], checkpoint)

    async def read_predictions(
        self, *, season: int | None = None, player_id: int | None = None, latest_only: bool = False
    ) -> AsyncGenerator[pa.Table, None]:
        """Live predictions, filtered; ``latest_only``: one per player-season."""
        row_filter = None
        if player_id is not None:
            row_filter = _player_filter(pa.array([operator.index(player_id)], pa.int64()))
        seasons = None if season is None else [season]
        latest = _LATEST_PREDICTION if latest_only else None
        async for table in self._scan(PREDICTIONS, seasons, row_filter, latest):
            yield table

    async def write_outcomes(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert outcomes; a ``final`` row beats an ``early`` one whatever the order."""
        rows = conform(rows, OUTCOMES_SCHEMA, "outcomes")
        bad = pc.invert(pc.is_in(rows.column("resolution"), value_set=pa.array(RESOLUTIONS)))
        if pc.any(bad).as_py():
            sample = rows.column("resolution").filter(bad)[0].as_py()
            raise StorageError(f"outcomes: column resolution must be one of {RESOLUTIONS}, got {sample!r}")
        await self._write([(OUTCOMES, rows)], checkpoint)

    async def read_outcomes(self, *, season: int | None = None) -> AsyncGenerator[pa.Table, None]:
        """Live outcomes, filtered by season when given."""
        async for table in self._scan(OUTCOMES, None if season is None else [season]):
            yield table

    async def export_training_set(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Feature history inner-joined with outcomes on ``(player_id, season)``."""
        labels = [
            t.select(["player_id", "season", "beat", "resolution"])
            async for t in self._scan(OUTCOMES, seasons)
        ]
        if not labels:
            return
        outcomes = pa.concat_tables(labels)
        labelled = {int(s) for s in pc.unique(outcomes.column("season")).to_pylist()}

        def join(batch: pa.Table) -> pa.Table:
            joined = batch.join(outcomes, keys=["player_id", "season"], join_type="inner")
            return pa.Table.from_arrays(
                [joined.column(n) for n in TRAINING_SCHEMA.names], schema=TRAINING_SCHEMA
            )

        async for batch in self._scan(FEATURES, labelled):
            yield await asyncio.to_thread(join, batch)

    async def cache_get(self, model_version: int, feature_hashes: Sequence[str]) -> dict[str, float]:
        """Cached probabilities of these hashes under ``model_version`` (hits only).

        The version's segments are kept in memory between calls (a refeed asks in chunks),
        keyed by immutable segment names, so a call after a write reads only new segments.
        """
        version = operator.index(model_version)
        if not feature_hashes:
            return {}
        segments = (await self._snapshot()).partitions(CACHE.name).get(CACHE.partition_name(version), ())
        memo = self._cache_memo.pop(version, {})
        loaded = {}
        for segment in segments:
            table = memo.get(segment.key)
            if table is None:
                table = await self._read_columns(segment, ["feature_hash", "probability"], {})
            loaded[segment.key] = table
        self._cache_memo = {**dict(list(self._cache_memo.items())[-1:]), version: loaded}
        return await asyncio.to_thread(_probe, list(loaded.values()), feature_hashes)

    async def cache_put(self, model_version: int, entries: Mapping[str, float]) -> None:
        """Add or replace entries for ``model_version`` (one commit)."""
        version = operator.index(model_version)
        if not entries:
            return
        rows = pa.table(
            {
                "feature_hash": pa.array(list(entries.keys()), pa.string()),
                "model_version": pa.array(np.full(len(entries), version, dtype=np.int64)),
                "probability": pa.array(list(entries.values()), pa.float64()),
            }
        )
        await self._write([(CACHE, conform(rows, CACHE_SCHEMA, "cache"))], None)

    async def cache_clear(self) -> int:
        """Drop every cache entry (all model versions) in one commit; return how many there were."""
        partitions = (await self._snapshot()).partitions(CACHE.name)
        count = 0
        for segments in partitions.values():
            async for table in self._scan_partition(CACHE, segments):
                count += table.num_rows
        doomed = {s.key for segments in partitions.values() for s in segments}

        def mutate(base: Manifest) -> Manifest:
            manifest = base
            for name, segments in base.partitions(CACHE.name).items():
                manifest = manifest.with_partition(
                    CACHE.name, name, tuple(s for s in segments if s.key not in doomed)
                )
            return manifest

        await self._commit(mutate, uuid.uuid4().hex)
        self._cache_memo.clear()
        log.info("storage.cache_cleared", entries=count)
        return count

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The last committed value of checkpoint ``name``, or ``None``."""
        check_checkpoint_name(name)
        return (await self._snapshot()).checkpoints.get(name)

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        """Atomically replace checkpoint ``name`` (one commit)."""
        await self._write([], (name, value))


def _player_filter(wanted: pa.Array) -> Callable[[pa.Table], pa.Table]:
    def keep(table: pa.Table) -> pa.Table:
        return table.filter(pc.is_in(table.column("player_id"), value_set=wanted))

    return keep


def _probe(tables: Sequence[pa.Table], feature_hashes: Sequence[str]) -> dict[str, float]:
    """Look hashes up in cache segments, newest first (CPU: runs in a worker thread)."""
    remaining = pc.unique(pa.array(feature_hashes, pa.string()))
    found: dict[str, float] = {}
    for table in reversed(tables):
        if not len(remaining):
            break
        hits = table.filter(pc.is_in(table.column("feature_hash"), value_set=remaining))
        if hits.num_rows:
            found.update(
                zip(
                    hits.column("feature_hash").to_pylist(),
                    hits.column("probability").to_pylist(),
                    strict=True,
                )
            )
            remaining = remaining.filter(
                pc.invert(pc.is_in(remaining, value_set=hits.column("feature_hash")))
            )
    return found
