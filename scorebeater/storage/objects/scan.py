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
from collections.abc import AsyncIterator, Callable, Collection, Sequence

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
            if mask is not None and not mask.any():
                continue
            offset = 0
            async for table in _segment_batches(objects, spec, segment, keep, batch_rows):
                if mask is not None:
                    part = mask[offset : offset + table.num_rows]
                    offset += table.num_rows
                    table = table if part.all() else table.filter(pa.array(part))  # noqa: PLW2901
                if select is not None:
                    table = table.filter(pc.equal(table.column(select[0]), select[1]))  # noqa: PLW2901
                yield row_filter(table) if row_filter else table
    finally:
        for source in keep.values():
            source.close()


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
