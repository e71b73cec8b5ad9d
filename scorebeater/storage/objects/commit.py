"""Writing to the object store's tables: segments, commits, compaction and garbage collection.

A :class:`Committer` owns the store's view of its newest manifest. A write deduplicates its
rows and cuts them into segments (in a worker thread), uploads them a few at a time, then
commits by creating the next manifest generation exclusively; on a conflict with another
writer the commit is redone on top of the newer manifest. A partition that grows past its
``max_segments`` is compacted after the write, and objects that no manifest references are
collected once they are older than the grace period. See :mod:`scorebeater.storage.objects`
for the protocol as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from scorebeater.errors import Fenced, StorageError, StorageNotFound
from scorebeater.storage.base import CheckpointWrite, check_checkpoint
from scorebeater.storage.inflight import InFlight
from scorebeater.storage.objects.manifest import (
    KEEP_MANIFESTS,
    MANIFEST_DIR,
    Manifest,
    Segment,
    generation_of,
    manifest_key,
)
from scorebeater.storage.objects.scan import (
    UnsortedSegment,
    rebatch,
    scan_partition,
    scan_partition_in_key_order,
)
from scorebeater.storage.objects.store import ObjectExists, ObjectStore, ParquetSource, check_key
from scorebeater.storage.objects.tables import (
    ROW_GROUP_ROWS,
    SEGMENT_MAX_ROWS,
    TABLES,
    TableSpec,
    key_bounds,
    merge_bounds,
    ordered_winners,
    parquet_options,
    split_segments,
)

log = structlog.get_logger(__name__)

DEFAULT_GC_GRACE_S = 3600.0
"""Unreferenced objects younger than this are left alone: an in-flight write or a reader of an
older manifest may still need them."""
_COMMIT_ATTEMPTS = 8
_UPLOAD_CONCURRENCY = 4
"""Segments encoded and stored at once by one write: each encodes in a worker thread (pyarrow
releases the GIL) while the others upload, so encoding overlaps I/O on every backend."""
_OWN_FILE = re.compile(r"part-[0-9a-f]{32}-[0-9]{4}\.parquet|\.tmp-[0-9a-f]{32}")
"""Names the engine (and the local store's temporary files) create under table directories."""


@dataclass(frozen=True, slots=True)
class _Pending:
    spec: TableSpec
    partition: str
    key: str
    rows: pa.Table
    bounds: dict[str, tuple[Any, Any]]


class _Abandon(Exception):
    """A compaction whose inputs changed under it: drop it."""


class Committer:
    """Reads the newest manifest of one object store and commits new generations on top.

    Safe for concurrent use by the tasks of one event loop: commits are serialised by a lock;
    :meth:`snapshot` never waits for a commit. ``objects`` may be replaced between calls (the
    tests inject faults that way).
    """

    def __init__(self, objects: ObjectStore, *, batch_rows: int, gc_grace_s: float) -> None:
        self.objects = objects
        self.manifest = Manifest()
        """The newest manifest this process has seen (read or committed)."""
        self._batch_rows = batch_rows
        self._gc_grace_s = gc_grace_s
        self._commit_lock = asyncio.Lock()
        self.commits = InFlight(objects.where)
        """Commits running (:meth:`commit`); drained when the storage closes."""
        self.fencing_token: int | None = None
        """The leadership term this process commits under (``None``: not fenced)."""

    # --- the manifest -----------------------------------------------------------------------

    async def snapshot(self) -> Manifest:
        """The newest committed manifest (one listing; one read when it changed).

        Raises:
            StorageError: the manifest is corrupt, or writers keep replacing it faster than
                it can be read.
        """
        for _ in range(3):
            listed = await self.objects.list_prefix(f"{MANIFEST_DIR}/")
            generations = [g for g in (generation_of(o.key) for o in listed) if g is not None]
            newest = max(generations, default=0)
            if newest <= self.manifest.generation:
                return self.manifest
            key = manifest_key(newest)
            try:
                data = await self.objects.get(key)
            except StorageNotFound:
                continue  # pruned by a writer between list and get: list again
            manifest = Manifest.from_json(data, f"{self.objects.where}/{key}")
            if manifest.generation > self.manifest.generation:
                self.manifest = manifest
            return self.manifest
        raise StorageError(f"{self.objects.where}: manifests keep changing under the reader")

    async def commit(self, mutate: Callable[[Manifest], Manifest], commit_id: str) -> Manifest:
        """Create the next manifest generation from ``mutate(newest)``; redo on a conflict.

        Runs to its end even if the caller is cancelled (:class:`InFlight`): the outcome of
        a generation's creation is then logged rather than left unknown.

        Idempotent per ``commit_id``: if the newest manifest is already that commit (an
        earlier attempt landed although its reply was lost), nothing is written again.

        Fencing: with a :attr:`fencing_token`, the new manifest records it, and a base manifest
        with a newer token (a later leader has committed) rejects the commit. Generations are
        created exclusively, so a commit of an older term either lands before the newer
        leader's first generation (which then builds on it) or loses the race, rereads and is
        fenced: it can never land after.

        Raises:
            Fenced: the newest manifest carries a newer leadership term than ours.
            StorageError: lost ``_COMMIT_ATTEMPTS`` races in a row to another writer.
        """
        # The token in force now: a commit that outlives its caller keeps the term it began under.
        run = functools.partial(self._commit, mutate, commit_id, self.fencing_token)
        return await self.commits.run("commit", run)

    async def _commit(
        self, mutate: Callable[[Manifest], Manifest], commit_id: str, token: int | None
    ) -> Manifest:
        async with self._commit_lock:
            for _ in range(_COMMIT_ATTEMPTS):
                base = self.manifest
                if base.commit == commit_id:
                    return base  # an earlier, interrupted attempt did land
                if token is not None and base.fencing_token > token:
                    raise Fenced(token, base.fencing_token)
                new = dataclasses.replace(
                    mutate(base), generation=base.generation + 1, commit=commit_id, parent=base.commit
                )
                if token is not None:
                    new = dataclasses.replace(new, fencing_token=max(token, base.fencing_token))
                try:
                    await self.objects.put(manifest_key(new.generation), new.to_json(), exclusive=True)
                except ObjectExists:
                    log.warning(
                        "storage.commit_conflict", where=self.objects.where, generation=new.generation
                    )
                    await self.snapshot()
                    continue
                if not await self._landed_newest(new):
                    continue
                self.manifest = new
                if new.generation > KEEP_MANIFESTS:
                    await self._prune(new.generation - KEEP_MANIFESTS)
                return new
        raise StorageError(f"{self.objects.where}: commit lost {_COMMIT_ATTEMPTS} races to another writer")

    async def _landed_newest(self, new: Manifest) -> bool:
        """Whether the generation just created is the store's state (or a successor's base).

        An exclusive create cannot tell a free name from a pruned one: a writer whose cached
        base is more than :data:`KEEP_MANIFESTS` generations old (a leader paused while its
        successor committed) recreates a deleted generation's name, and the create succeeds
        although newer generations exist. Readers never see it (they take the highest), but
        the writer would believe it committed. So list once more: a higher generation means
        our commit is the newest only if the next one was built on it (``parent``); otherwise
        it is an orphan, removed here, and the commit is redone on the newest manifest (where a
        newer leader's token fences it).
        """
        listed = await self.objects.list_prefix(f"{MANIFEST_DIR}/")
        higher = sorted(
            g for g in (generation_of(o.key) for o in listed) if g is not None and g > new.generation
        )
        if not higher:
            return True
        if higher[0] == new.generation + 1:
            try:
                data = await self.objects.get(manifest_key(higher[0]))
            except StorageNotFound:
                data = None
            if data is not None:
                successor = Manifest.from_json(data, f"{self.objects.where}/{manifest_key(higher[0])}")
                if successor.parent == new.commit:
                    return True
        log.warning(
            "storage.commit_orphaned",
            where=self.objects.where,
            generation=new.generation,
            newest=higher[-1],
            reason="a pruned generation's name was recreated by a writer with a stale base",
        )
        with contextlib.suppress(StorageError):
            await self.objects.delete([manifest_key(new.generation)])
        await self.snapshot()
        return False

    async def claim(self, token: int | None) -> None:
        """Commit under leadership term ``token`` from now on (``None``: unfenced).

        Commits one marker generation carrying ``token`` at once, so the previous leader's
        next commit is fenced even if this one writes nothing for a while. Idempotent.

        Raises:
            Fenced: the store already records a newer term. StorageError,
                StorageUnavailable: the marker commit failed.
        """
        self.fencing_token = token
        if token is None:
            return
        await self.snapshot()
        if self.manifest.fencing_token != token:
            await self.commit(lambda m: m, f"term-{token}-{uuid.uuid4().hex}")
        log.info("storage.fencing_claimed", where=self.objects.where, term=token)

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

        Not fenced: every process that opens the store sweeps it, standbys included. A leader's
        uploaded segments could only be swept if it paused for the grace period (an hour)
        between their upload and its commit; a pause that long exceeds its lease, so a standby
        has taken over and that commit is fenced anyway (and without a standby, nothing else
        opens the store to sweep it).
        """
        manifest = await self.snapshot()
        live = manifest.segment_keys()
        cutoff = time.time() - (self._gc_grace_s if grace_s is None else grace_s)
        doomed = []
        prefixes = [prefix] if prefix else [f"{MANIFEST_DIR}/", *(f"{t.name}/" for t in TABLES)]
        for info in [i for p in prefixes for i in await self.objects.list_prefix(p)]:
            name = info.key.rsplit("/", 1)[-1]
            if info.key.startswith(f"{MANIFEST_DIR}/"):
                generation = generation_of(info.key)
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

    # --- writing ----------------------------------------------------------------------------

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
            segments[p.key] = Segment(
                p.key, p.rows.num_rows, source.size, commit_id, p.bounds, p.spec.schema_version
            )

        # Largest first: the long encodes start early instead of trailing at the end.
        order = sorted(pending, key=lambda p: -p.rows.num_rows)
        await first_error([functools.partial(store, p) for p in order], _UPLOAD_CONCURRENCY)
        return [segments[p.key] for p in pending]

    async def write(
        self, tables: Sequence[tuple[TableSpec, pa.Table]], checkpoint: CheckpointWrite | None
    ) -> None:
        """Upsert conformed rows into their tables, with the checkpoint, in one commit.

        Nothing to write and no checkpoint: no commit. Partitions grown past their
        ``max_segments`` are compacted afterwards (a failure there is only logged).

        Raises:
            StorageError: a bad checkpoint, or the store failed (``StorageUnavailable``);
                the store is then as it was, but for unreferenced segments.
        """
        if checkpoint is not None:
            check_checkpoint(*checkpoint)
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

        manifest = await self.commit(mutate, commit_id)
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

    # --- compaction -------------------------------------------------------------------------

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
        segments = (await self.snapshot()).partitions(spec.name).get(partition, ())
        start = 0 if everything else compaction_run([s.rows for s in segments])
        run = segments[start:]
        if len(run) < 2:  # noqa: PLR2004 - merging one segment is a no-op
            return False
        commit_id = uuid.uuid4().hex
        try:
            # In key order, like every committed segment: page reads prune row groups by it.
            rows_in = scan_partition_in_key_order(self.objects, spec, run, batch_rows=self._batch_rows)
            data, rows, bounds = await _encode_stream(spec, rebatch(rows_in, self._batch_rows))
        except UnsortedSegment:
            # A segment merged by a compaction older than the ordered merge: sort this run in
            # memory, once (the result is sorted and merges by streaming from then on).
            tables = [t async for t in scan_partition(self.objects, spec, run, batch_rows=self._batch_rows)]
            merged = await asyncio.to_thread(lambda: ordered_winners(pa.concat_tables(tables), spec))
            data, rows, bounds = await _encode_stream(spec, _batches_of(merged, self._batch_rows))
        key = check_key(f"{spec.name}/{partition}/part-{commit_id}-0000.parquet")
        # Older segments' rows come upgraded out of the scan: the merged one is current.
        segment = Segment(key, rows, len(data), commit_id, bounds, spec.schema_version)
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
            await self.commit(mutate, commit_id)
        except _Abandon:
            await self.objects.delete([key])
            return False
        log.info(
            "storage.compacted", table=spec.name, partition=partition, segments=len(run), rows=segment.rows
        )
        await self.collect_garbage(f"{spec.name}/{partition}/")
        return True


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


async def _batches_of(table: pa.Table, batch_rows: int) -> AsyncIterator[pa.Table]:
    for offset in range(0, table.num_rows, batch_rows):
        yield table.slice(offset, batch_rows)


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
