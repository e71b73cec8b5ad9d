"""Reading a table's live rows out of its committed segments.

A partition whose segments cannot share a key (one commit, or disjoint key bounds) is read as
it is. Otherwise a first pass reads only the key and rank columns of its segments, picks the
winning row of each key (:func:`~scorebeater.storage.objects.tables.winner_indices`), and the
second pass streams the full rows through that mask; segments fetched for the first pass are
kept for the second up to ``_SOURCE_REUSE_BYTES``. Everything streams in tables of at most
``batch_rows`` rows; Parquet decoding runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scorebeater.errors import StorageError
from scorebeater.storage.objects.manifest import Partitions, Segment
from scorebeater.storage.objects.store import ObjectStore
from scorebeater.storage.objects.tables import TableSpec, winner_indices

_SOURCE_REUSE_BYTES = 64 * 1024 * 1024
"""A deduplicating scan keeps segments it already fetched up to this size for its second pass."""

RowFilter = Callable[[pa.Table], pa.Table]
Latest = tuple[tuple[str, ...], tuple[str, ...]]
"""Keep one row per group (first columns) after deduplication: the highest by the others."""
Select = tuple[str, object]
"""Keep only the rows whose column (first) equals the value; ``latest`` is picked among them."""


async def read_columns(
    objects: ObjectStore,
    segment: Segment,
    columns: Sequence[str],
    keep: dict[str, pa.NativeFile],
    spec: TableSpec | None = None,
) -> pa.Table:
    """Some columns of a whole segment; its source goes into ``keep`` while there is room.

    A segment older than ``spec``'s schema version lacks the columns added since
    (:attr:`TableSpec.added`): they read back as the constant its rows stand for.
    """
    absent = {
        name: value
        for name, version, value in (spec.added if spec is not None else ())
        if name in columns and segment.schema_version < version
    }
    source = await objects.open_input(segment.key)
    present = [c for c in columns if c not in absent]
    table = await asyncio.to_thread(pq.read_table, source, columns=present)
    if absent and spec is not None:
        fields = [spec.schema.field(c) if c in absent else table.schema.field(c) for c in columns]
        arrays = [
            pa.repeat(pa.scalar(absent[f.name], f.type), table.num_rows)
            if f.name in absent
            else table.column(f.name)
            for f in fields
        ]
        table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    if sum(s.size() for s in keep.values()) + segment.size <= _SOURCE_REUSE_BYTES:
        keep[segment.key] = source
    return table


async def _survivors(
    objects: ObjectStore,
    spec: TableSpec,
    segments: Sequence[Segment],
    keep: dict[str, pa.NativeFile],
    *,
    latest: Latest | None = None,
    select: Select | None = None,
) -> list[np.ndarray | None]:
    """Per segment, a mask of the rows that win (``None``: all of them); with ``latest``,
    only the rows ``select`` keeps compete for a group."""
    overlapping = any(not a.disjoint(b) for i, a in enumerate(segments) for b in segments[i + 1 :])
    if not overlapping and latest is None:
        return [None] * len(segments)
    selected = (select[0],) if select is not None and latest is not None else ()
    columns = list(
        dict.fromkeys(
            (*spec.local_key, *spec.rank_columns, *(latest[0] + latest[1] if latest else ()), *selected)
        )
    )
    keys = pa.concat_tables([await read_columns(objects, s, columns, keep, spec) for s in segments])

    def masks() -> np.ndarray:
        mask = np.zeros(keys.num_rows, dtype=bool)
        mask[winner_indices(keys, spec.local_key, spec.rank(keys) if spec.rank else [])] = True
        if latest is not None:
            index = np.flatnonzero(mask)
            if select is not None:
                chosen = pc.equal(keys.column(select[0]).take(pa.array(index)), select[1])
                index = index[chosen.to_numpy(zero_copy_only=False)]
            survivors = keys.take(pa.array(index))
            best = winner_indices(survivors, latest[0], [survivors.column(c) for c in latest[1]])
            mask[:] = False
            mask[index[best]] = True
        return mask

    mask = await asyncio.to_thread(masks)
    bounds = np.cumsum([0, *(s.rows for s in segments)])
    if bounds[-1] != keys.num_rows:
        raise StorageError(f"{objects.where}: segment row counts disagree with the manifest in {spec.name}")
    return [mask[bounds[i] : bounds[i + 1]] for i in range(len(segments))]


async def _segment_batches(
    objects: ObjectStore,
    spec: TableSpec,
    segment: Segment,
    keep: dict[str, pa.NativeFile],
    batch_rows: int,
) -> AsyncIterator[pa.Table]:
    source = keep.pop(segment.key, None)
    if source is None:
        source = await objects.open_input(segment.key)
    try:
        reader = await asyncio.to_thread(pq.ParquetFile, source)
        batches = reader.iter_batches(batch_size=batch_rows)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            yield _as_table(batch, spec, segment.schema_version)
    finally:
        source.close()


async def scan_partition(
    objects: ObjectStore,
    spec: TableSpec,
    segments: Sequence[Segment],
    *,
    batch_rows: int,
    row_filter: RowFilter | None = None,
    latest: Latest | None = None,
    select: Select | None = None,
) -> AsyncIterator[pa.Table]:
    """The live rows of one partition's ``segments`` (those ``select`` keeps), in tables of at
    most ``batch_rows`` rows (possibly empty after ``row_filter``)."""
    keep: dict[str, pa.NativeFile] = {}
    try:
        masks = await _survivors(objects, spec, segments, keep, latest=latest, select=select)
        for segment, mask in zip(segments, masks, strict=True):
            async for table in _live_batches(objects, spec, segment, keep, batch_rows=batch_rows, mask=mask):
                if select is not None:
                    table = table.filter(pc.equal(table.column(select[0]), select[1]))  # noqa: PLW2901
                yield row_filter(table) if row_filter else table
    finally:
        for source in keep.values():
            source.close()


async def _live_batches(
    objects: ObjectStore,
    spec: TableSpec,
    segment: Segment,
    keep: dict[str, pa.NativeFile],
    *,
    batch_rows: int,
    mask: np.ndarray | None,
) -> AsyncGenerator[pa.Table, None]:
    """One segment's rows that ``mask`` keeps (``None``: all), in its order, batch by batch."""
    if mask is not None and not mask.any():
        return
    offset = 0
    async for table in _segment_batches(objects, spec, segment, keep, batch_rows):
        if mask is not None:
            part = mask[offset : offset + table.num_rows]
            offset += table.num_rows
            table = table if part.all() else table.filter(pa.array(part))  # noqa: PLW2901
        yield table


_MERGE_MIN_BATCH_ROWS = 8_192
"""The smallest batch :func:`scan_partition_in_key_order` reads from one segment at a time."""


def _check_in_order(
    spec: TableSpec, table: pa.Table, previous: tuple[Any, ...] | None
) -> tuple[Any, ...] | None:
    """The key of ``table``'s last row (``previous`` if it has none), once checked that its
    rows ascend by the whole key (:attr:`TableSpec.local_key`) from ``previous`` on (the last key
    of the same segment's previous batch).

    Raises:
        UnsortedSegment: they do not.
    """
    n = table.num_rows
    if not n:
        return previous
    columns = [table.column(name) for name in spec.local_key]
    first = tuple(c[0].as_py() for c in columns)
    if previous is not None and first < previous:
        raise UnsortedSegment(f"{spec.name}: a segment is not in key order")
    undecided = np.ones(n - 1, dtype=bool)  # neighbours equal on the columns compared so far
    for column in columns:
        if not undecided.any():
            break
        after, before = column.slice(1), column.slice(0, n - 1)
        if (undecided & pc.less(after, before).to_numpy(zero_copy_only=False)).any():
            raise UnsortedSegment(f"{spec.name}: a segment is not in key order")
        undecided &= pc.equal(after, before).to_numpy(zero_copy_only=False)
    return tuple(c[n - 1].as_py() for c in columns)


class UnsortedSegment(Exception):
    """A segment's rows are not in key order (one merged by a compaction older than
    :func:`scan_partition_in_key_order`): the caller sorts the rows itself instead."""


async def scan_partition_in_key_order(
    objects: ObjectStore, spec: TableSpec, segments: Sequence[Segment], *, batch_rows: int
) -> AsyncIterator[pa.Table]:
    """The live rows of one partition's ``segments`` in ascending key order: what a compaction
    writes, so that the merged segment is sorted like every committed one and its row groups'
    ``player_id`` ranges stay disjoint and ascending (the page reads prune by them).

    Segments disjoint on the first key column (the usual case: a refeed's or a season's batches
    of players) are streamed one after another in order of their bounds. Otherwise a streaming
    merge of the segments (each sorted by its key when committed), :func:`_merged`.

    Raises:
        UnsortedSegment: a segment's rows are not in key order.
    """
    lead = spec.local_key[0]
    keep: dict[str, pa.NativeFile] = {}
    streams: list[AsyncGenerator[pa.Table, None]] = []
    try:
        masks = await _survivors(objects, spec, segments, keep)
        live = [(seg, mask) for seg, mask in zip(segments, masks, strict=True) if mask is None or mask.any()]
        if all(lead in seg.bounds for seg, _ in live):
            live.sort(key=lambda pair: pair[0].bounds[lead][0])
            if all(a.bounds[lead][1] < b.bounds[lead][0] for (a, _), (b, _) in itertools.pairwise(live)):
                for seg, mask in live:
                    previous: tuple[Any, ...] | None = None
                    batches = _live_batches(objects, spec, seg, keep, batch_rows=batch_rows, mask=mask)
                    async with contextlib.aclosing(batches):
                        async for batch in batches:
                            previous = _check_in_order(spec, batch, previous)
                            yield batch
                return
        # One batch held per segment: together about ``batch_rows``, however many segments.
        per_segment = max(_MERGE_MIN_BATCH_ROWS, batch_rows // max(1, len(live)))
        streams = [
            _live_batches(objects, spec, seg, keep, batch_rows=per_segment, mask=mask) for seg, mask in live
        ]
        async for table in _merged(spec, streams):
            yield table
    finally:
        for stream in streams:
            await stream.aclose()
        for source in keep.values():
            source.close()


class _Held:
    """One merged stream's rows held but not yet emitted, and their first key column."""

    def __init__(self, spec: TableSpec, stream: AsyncIterator[pa.Table]) -> None:
        self.spec = spec
        self.stream = stream
        self.table = spec.schema.empty_table()
        self.keys: np.ndarray = np.empty(0)
        self.last: tuple[Any, ...] | None = None
        self.ended = False

    async def take(self) -> bool:
        """Append the stream's next non-empty batch to what is held; False at the stream's end."""
        while not self.ended:
            try:
                batch: pa.Table = await anext(self.stream)
            except StopAsyncIteration:
                self.ended = True
                break
            if batch.num_rows:
                self.last = _check_in_order(self.spec, batch, self.last)
                self.table = pa.concat_tables([self.table, batch]) if self.table.num_rows else batch
                self.keys = self.table.column(self.spec.local_key[0]).to_numpy()
                return True
        return False

    def cut(self, upto: Any) -> pa.Table:
        """Give up the held rows whose first key column is at most ``upto`` (zero-copy)."""
        at = int(np.searchsorted(self.keys, upto, side="right"))
        taken = self.table.slice(0, at)
        self.table, self.keys = self.table.slice(at), self.keys[at:]
        return taken


async def _merged(spec: TableSpec, streams: Sequence[AsyncIterator[pa.Table]]) -> AsyncIterator[pa.Table]:
    """The rows of ``streams`` (each in key order) in key order, holding about a batch of each.

    Each step: ``upto``, the smallest last first-key value of the held batches. A stream whose
    held rows end at ``upto`` takes its next batches in until they pass it (a player's rows may
    cross a batch boundary), so every stream then holds all its rows up to ``upto``. Those rows
    are cut off (zero-copy: each batch is sorted) and emitted, sorted by the whole key when
    they come from more than one stream.

    Raises:
        UnsortedSegment: a stream's rows are not in key order.
    """
    order = [(column, "ascending") for column in spec.local_key]
    held = [_Held(spec, stream) for stream in streams]

    def sorted_slice(parts: list[pa.Table]) -> pa.Table:
        return pa.concat_tables(parts).sort_by(order)

    while True:
        for h in held:
            if not h.table.num_rows:
                await h.take()
        active = [h for h in held if h.table.num_rows]
        if not active:
            return
        upto = min(h.keys[-1] for h in active)
        for h in active:
            while h.keys[-1] == upto and await h.take():
                pass
        parts = [part for h in active if (part := h.cut(upto)).num_rows]
        yield parts[0] if len(parts) == 1 else await asyncio.to_thread(sorted_slice, parts)


async def scan(
    objects: ObjectStore,
    spec: TableSpec,
    partitions: Partitions,
    values: Collection[int] | None,
    *,
    batch_rows: int,
    row_filter: RowFilter | None = None,
    latest: Latest | None = None,
    select: Select | None = None,
) -> AsyncIterator[pa.Table]:
    """The table's live rows in ``partitions`` (only those of partition ``values`` when given;
    only those ``select`` keeps), partition by partition, in as few tables of at most
    ``batch_rows`` rows as possible."""
    if values is not None:
        wanted = {spec.partition_name(v) for v in values}
        partitions = {p: s for p, s in partitions.items() if p in wanted}

    async def tables() -> AsyncIterator[pa.Table]:
        for name in sorted(partitions, key=spec.partition_value):
            async for table in scan_partition(
                objects,
                spec,
                partitions[name],
                batch_rows=batch_rows,
                row_filter=row_filter,
                latest=latest,
                select=select,
            ):
                yield table

    async for table in rebatch(tables(), batch_rows):
        yield table


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


def player_filter(wanted: pa.Array) -> RowFilter:
    """A row filter keeping the rows whose ``player_id`` is in ``wanted``."""

    def keep(table: pa.Table) -> pa.Table:
        return table.filter(pc.is_in(table.column("player_id"), value_set=wanted))

    return keep


def _as_table(batch: pa.RecordBatch | pa.Table, spec: TableSpec, version: int) -> pa.Table:
    """A segment's rows as ``spec.schema`` rows; a segment of an older schema version is
    upgraded (:attr:`TableSpec.upgrade`), one of a newer version refused."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    if version != spec.schema_version:
        if version > spec.schema_version or spec.upgrade is None:
            raise StorageError(
                f"{spec.name}: a segment of schema version {version}; this scorebeater reads "
                f"version {spec.schema_version}{' and older' if spec.upgrade else ''}: upgrade scorebeater"
            )
        return spec.upgrade(table, version)
    if not table.schema.equals(spec.schema):
        table = table.cast(spec.schema)
    return table


# --- key-range reads (a page of players) ------------------------------------------------------------

RANGE_COLUMN = "player_id"
"""The column range reads bound: the first of each paged table's key, so every segment is
sorted by it and its row groups' statistics give disjoint, ascending ranges of it."""
_METADATA_CACHE_ENTRIES = 256
"""Parsed Parquet footers kept (segments never change once written: a key is never reused).
A footer of a 262,144-row segment in 8,192-row groups is tens of KB."""
_metadata_cache: OrderedDict[tuple[str, str], tuple[pq.FileMetaData, list[tuple[float, float]]]] = (
    OrderedDict()
)
_metadata_lock = threading.Lock()


def _group_ranges(metadata: pq.FileMetaData) -> list[tuple[float, float]]:
    """Each row group's smallest and largest ``player_id`` (infinite where not recorded)."""
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    if RANGE_COLUMN not in names:
        return [(-math.inf, math.inf)] * metadata.num_row_groups
    index = names.index(RANGE_COLUMN)
    ranges = []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max:
            ranges.append((-math.inf, math.inf))
        else:
            ranges.append((stats.min, stats.max))
    return ranges


_FOOTER_GUESS_BYTES = 64 * 1024
"""The tail of a segment fetched for its footer (pyarrow's own first footer read is as long);
a longer footer costs a second request."""
_PARQUET_MAGIC = b"PAR1"


class _FetchedRanges:
    """A read-only file, for pyarrow (through ``pa.PythonFile``), over the byte ranges of one
    object fetched so far. Every read must lie within one fetched range (the reader fetches
    what it will read first); any other raises ``OSError``."""

    def __init__(self, size: int, where: str) -> None:
        self._size = size
        self._where = where
        self._pos = 0
        self._chunks: dict[int, bytes] = {}
        self.closed = False

    def add(self, start: int, data: bytes) -> None:
        self._chunks[start] = data

    def covers(self, start: int, end: int) -> bool:
        return any(s <= start and end <= s + len(d) for s, d in self._chunks.items())

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._size if size < 0 else min(self._size, self._pos + size)
        for start, data in self._chunks.items():
            if start <= self._pos and end <= start + len(data):
                out = data[self._pos - start : end - start]
                self._pos = end
                return out
        raise OSError(f"{self._where}: bytes [{self._pos}, {end}) were read before being fetched")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _group_span(metadata: pq.FileMetaData, group: int) -> tuple[int, int]:
    """The bytes ``[start, end)`` of row group ``group``: its column chunks are contiguous,
    and pyarrow reads them as one range."""
    rg = metadata.row_group(group)
    spans = []
    for j in range(rg.num_columns):
        column = rg.column(j)
        start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
        spans.append((start, start + column.total_compressed_size))
    return min(s for s, _ in spans), max(e for _, e in spans)


class _Groups:
    """One segment's row groups and their ``player_id`` ranges; the object opened on demand.

    On a store with ``ranged_reads`` (S3) nothing is fetched whole: the footer is a ranged
    request (none once cached) and each row group's bytes are fetched by :meth:`fetch` just
    before they are read, so a page transfers its row groups, not its segments.
    """

    def __init__(self, objects: ObjectStore, spec: TableSpec, segment: Segment) -> None:
        self.objects = objects
        self.spec = spec
        self.segment = segment
        self.source: pa.NativeFile | None = None
        self.file: pq.ParquetFile | None = None
        self.ranges: list[tuple[float, float]] = []
        self._fetched: _FetchedRanges | None = None

    async def open(self) -> None:
        """Open the object and read its footer (or take it from the cache).

        Raises:
            StorageNotFound: the segment is gone. StorageError: its footer is not Parquet's.
        """
        segment = self.segment
        cache_key = (self.objects.where, segment.key)
        with _metadata_lock:
            cached = _metadata_cache.get(cache_key)
            if cached is not None:
                _metadata_cache.move_to_end(cache_key)
        if self.objects.ranged_reads and segment.size > 0:
            self._fetched = _FetchedRanges(segment.size, f"{self.objects.where}/{segment.key}")
            self.source = pa.PythonFile(self._fetched, mode="r")
            if cached is None:
                await self._fetch_footer()
        else:
            self.source = await self.objects.open_input(segment.key)
        if cached is None:
            metadata = await asyncio.to_thread(pq.read_metadata, self.source)
            cached = (metadata, _group_ranges(metadata))
            with _metadata_lock:
                _metadata_cache[cache_key] = cached
                while len(_metadata_cache) > _METADATA_CACHE_ENTRIES:
                    _metadata_cache.popitem(last=False)
        self.file = pq.ParquetFile(self.source, metadata=cached[0])
        self.ranges = cached[1]

    async def _fetch_footer(self) -> None:
        assert self._fetched is not None  # noqa: S101 - ranged mode
        size, key = self.segment.size, self.segment.key
        tail_start = max(0, size - _FOOTER_GUESS_BYTES)
        [tail] = await self.objects.read_ranges(key, [(tail_start, size)])
        if len(tail) < 8 or tail[-4:] != _PARQUET_MAGIC:  # noqa: PLR2004 - length + magic
            raise StorageError(f"{self.objects.where}/{key}: not a Parquet object of {size} bytes")
        needed = int.from_bytes(tail[-8:-4], "little") + 8
        if needed > len(tail):  # a footer longer than the guess: fetch all of it at once
            start = max(0, size - needed)
            [head] = await self.objects.read_ranges(key, [(start, tail_start)])
            tail = head + tail
            tail_start = start
        self._fetched.add(tail_start, tail)

    async def fetch(self, groups: Sequence[int]) -> None:
        """Fetch row groups ``groups``' bytes (ranged stores; otherwise nothing to do), one
        request per run of adjacent groups, all at once. After :meth:`open`."""
        fetched, file = self._fetched, self.file
        if fetched is None or file is None:
            return
        spans: list[tuple[int, int]] = []
        for group in sorted(groups):
            start, end = _group_span(file.metadata, group)
            if fetched.covers(start, end):
                continue
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        if spans:
            for (start, _end), data in zip(
                spans, await self.objects.read_ranges(self.segment.key, spans), strict=True
            ):
                fetched.add(start, data)

    def read(self, groups: Sequence[int], columns: Sequence[str] | None) -> pa.Table:
        """Rows of row groups ``groups`` as ``spec.schema`` rows (``columns`` of them when
        given). Blocking: call it in a worker thread, after :meth:`open` and :meth:`fetch`."""
        assert self.file is not None  # noqa: S101 - opened first
        current = self.segment.schema_version == self.spec.schema_version
        wanted = list(columns) if columns is not None and current else None
        # An older segment is read whole and upgraded (its schema may lack columns).
        table = self.file.read_row_groups(list(groups), columns=wanted, use_threads=False)
        if wanted is None:
            table = _as_table(table, self.spec, self.segment.schema_version)
        return table if columns is None else table.select(list(columns))

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def _in_range(table: pa.Table, after: float, below: float) -> pa.Table:
    """The rows with ``after < player_id < below``."""
    ids = table.column(RANGE_COLUMN)
    mask = pc.greater(ids, pa.scalar(int(after), ids.type)) if math.isfinite(after) else None
    if math.isfinite(below):
        under = pc.less(ids, pa.scalar(int(below), ids.type))
        mask = under if mask is None else pc.and_(mask, under)
    return table if mask is None else table.filter(mask)


def _winners(spec: TableSpec, segments: Sequence[Segment], tables: Sequence[pa.Table]) -> pa.Table:
    """The live rows of ``tables`` (the same key range's rows of ``segments``, in order):
    each key's winning row, as the full scan picks it (rank, then the later commit)."""
    rows = pa.concat_tables(tables)
    overlapping = any(not a.disjoint(b) for i, a in enumerate(segments) for b in segments[i + 1 :])
    if not overlapping:
        return rows
    rank = spec.rank(rows) if spec.rank else []
    return rows.take(pa.array(winner_indices(rows, spec.local_key, rank)))


def _segment_lo(segment: Segment) -> float:
    bound = segment.bounds.get(RANGE_COLUMN)
    return -math.inf if bound is None else bound[0]


def _segment_hi(segment: Segment) -> float:
    bound = segment.bounds.get(RANGE_COLUMN)
    return math.inf if bound is None else bound[1]


async def read_range(
    objects: ObjectStore,
    spec: TableSpec,
    segments: Sequence[Segment],
    *,
    lo: int,
    hi: int,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The live rows of one partition's ``segments`` with ``lo <= player_id <= hi``.

    Reads only the segments whose key bounds reach into the range, and of those only the row
    groups whose ``player_id`` statistics do: time and memory grow with the range's rows and
    the row group size, not with the partition. ``columns`` (which must include the key and
    rank columns) narrows the rows read.
    """
    chosen = [s for s in segments if _segment_lo(s) <= hi and _segment_hi(s) >= lo]
    groups = [_Groups(objects, spec, s) for s in chosen]

    def wanted(g: _Groups) -> list[int]:
        return [i for i, (a, b) in enumerate(g.ranges) if a <= hi and b >= lo]

    def collect() -> pa.Table:
        tables = [_in_range(g.read(want, columns), lo - 1, hi + 1) for g in groups if (want := wanted(g))]
        return _winners(spec, chosen, tables) if tables else _empty(spec, columns)

    try:
        try:  # task groups: a failure cancels the other requests at once
            async with asyncio.TaskGroup() as tg:
                for g in groups:
                    tg.create_task(g.open())
            async with asyncio.TaskGroup() as tg:
                for g in groups:
                    tg.create_task(g.fetch(wanted(g)))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return await asyncio.to_thread(collect)  # one hop: the reads are small
    finally:
        for g in groups:
            g.close()


def _empty(spec: TableSpec, columns: Sequence[str] | None) -> pa.Table:
    schema = spec.schema if columns is None else pa.schema([spec.schema.field(c) for c in columns])
    return schema.empty_table()


async def read_first_players(
    objects: ObjectStore,
    spec: TableSpec,
    segments: Sequence[Segment],
    *,
    after: int | None,
    players: Callable[[pa.Table], int],
    enough: int,
) -> pa.Table:
    """The live rows of every player above ``after`` and below some bound, up to where
    ``players(rows)`` (the number of players those live rows make, e.g. those with a
    champion row) reaches ``enough``, or of all players above ``after``.

    Every row of each player returned is there (a player's rows may span row groups: a
    player counts only once no unread row group can hold his id). Row groups are read in
    ascending order of their lowest ``player_id``, one at a time, from whichever segment's next
    group starts lowest; a segment whose key bounds lie below ``after`` is never opened, one whose bounds
    start above the bound reached is not either. So a page costs O(its rows + a row group per
    segment it touches), whatever the partition's size.
    """
    start: float = -math.inf if after is None else after
    live = [s for s in segments if _segment_hi(s) > start]
    groups = [_Groups(objects, spec, s) for s in live]
    # Per segment, its groups that reach past ``start`` in ascending order of their lowest id,
    # and how many of them are read. A segment written by a commit or a compaction is sorted,
    # so this is its groups' own order; one compacted before compactions kept the key order
    # has groups whose ranges overlap, and is still read right (more groups per page).
    order: list[list[int] | None] = [None] * len(groups)  # None: not opened yet
    done = [0] * len(groups)
    read: list[list[pa.Table]] = [[] for _ in groups]

    def next_lo(i: int) -> float:
        """A lower bound of the ids of segment ``i``'s rows not read yet (inf: none left)."""
        todo = order[i]
        if todo is None:
            return max(_segment_lo(live[i]), start)
        return groups[i].ranges[todo[done[i]]][0] if done[i] < len(todo) else math.inf

    def read_and_count(i: int | None, at: int, bound: float) -> tuple[pa.Table, int]:
        """Read segment ``i``'s group ``at`` (if any); the live rows of the complete players
        (below ``bound``) and how many players they make. One worker-thread hop per group."""
        if i is not None:
            read[i].append(_in_range(groups[i].read([at], None), start, math.inf))
        tables = [_in_range(t, start, bound) for ts in read for t in ts]
        if not tables:
            return spec.schema.empty_table(), 0
        rows = _winners(spec, live, tables)
        return rows, players(rows)

    try:
        while True:
            i = min(range(len(groups)), key=next_lo, default=None)
            if i is None or not math.isfinite(next_lo(i)):  # every segment read to its end
                return (await asyncio.to_thread(read_and_count, None, 0, math.inf))[0]
            todo = order[i]
            if todo is None:
                await groups[i].open()
                ranges = groups[i].ranges
                order[i] = sorted(
                    (j for j, (_, b) in enumerate(ranges) if b > start), key=lambda j: ranges[j][0]
                )
                continue
            at = todo[done[i]]
            done[i] += 1
            bound = min(next_lo(j) for j in range(len(groups)))
            await groups[i].fetch([at])
            rows, count = await asyncio.to_thread(read_and_count, i, at, bound)
            if count >= enough or not math.isfinite(bound):
                return rows
    finally:
        for g in groups:
            g.close()
