"""The prediction cache of the object-store backends: the ``cache`` table, one partition per
model version, kept in memory between lookups."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.storage.base import cache_rows, check_model_version
from scorebeater.storage.objects.commit import Committer
from scorebeater.storage.objects.manifest import Manifest
from scorebeater.storage.objects.scan import read_columns, scan, scan_partition
from scorebeater.storage.objects.tables import CACHE

log = structlog.get_logger(__name__)


class ObjectPredictionCache:
    """``PredictionCache`` over the ``cache`` table of an object store.

    Get it as ``ObjectTableStorage.cache``; it commits through the storage's
    :class:`~scorebeater.storage.objects.commit.Committer`, so cache writes serialise with
    every other write of the store.
    """

    def __init__(self, committer: Committer, *, batch_rows: int) -> None:
        self._committer = committer
        self._batch_rows = batch_rows
        self._memo: dict[int, dict[str, pa.Table]] = {}

    async def get(self, model_version: int, feature_hashes: Sequence[str]) -> dict[str, float]:
        """Cached probabilities of these hashes under ``model_version`` (hits only).

        The version's segments are kept in memory between calls (a refeed asks in chunks),
        keyed by immutable segment names, so a call after a write reads only new segments.
        Keeps at most two versions.

        Raises:
            StorageError: a bad model version. StorageUnavailable: the store is unreachable.
        """
        version = check_model_version(model_version)
        if not feature_hashes:
            return {}
        manifest = await self._committer.snapshot()
        segments = manifest.partitions(CACHE.name).get(CACHE.partition_name(version), ())
        memo = self._memo.pop(version, {})
        loaded = {}
        for segment in segments:
            table = memo.get(segment.key)
            if table is None:
                columns = ["feature_hash", "probability"]
                table = await read_columns(self._committer.objects, segment, columns, {})
            loaded[segment.key] = table
        self._memo = {**dict(list(self._memo.items())[-1:]), version: loaded}
        return await asyncio.to_thread(_probe, list(loaded.values()), feature_hashes)

    async def put(self, model_version: int, entries: Mapping[str, float]) -> None:
        """Add or replace entries for ``model_version`` (one commit; none when empty).

        Raises:
            StorageError: a bad model version or entries. StorageUnavailable: as for writes.
        """
        await self._committer.write([(CACHE, cache_rows(model_version, entries))], None)

    async def read_entries(self, *, model_version: int | None = None) -> AsyncGenerator[pa.Table, None]:
        """Every live entry (``CACHE_SCHEMA``), or ``model_version``'s, partition by partition,
        in tables of at most ``batch_rows`` rows.

        Raises:
            StorageError: a bad model version. StorageUnavailable: the store is unreachable.
        """
        versions = None if model_version is None else [check_model_version(model_version)]
        partitions = (await self._committer.snapshot()).partitions(CACHE.name)
        async for table in scan(
            self._committer.objects, CACHE, partitions, versions, batch_rows=self._batch_rows
        ):
            yield table

    async def clear(self) -> int:
        """Drop every cache entry (all model versions) in one commit; return how many there were."""
        partitions = (await self._committer.snapshot()).partitions(CACHE.name)
        count = 0
        for segments in partitions.values():
            async for table in scan_partition(
                self._committer.objects, CACHE, segments, batch_rows=self._batch_rows
            ):
                count += table.num_rows
        doomed = {s.key for segments in partitions.values() for s in segments}

        def mutate(base: Manifest) -> Manifest:
            manifest = base
            for name, segments in base.partitions(CACHE.name).items():
                manifest = manifest.with_partition(
                    CACHE.name, name, tuple(s for s in segments if s.key not in doomed)
                )
            return manifest

        await self._committer.commit(mutate, uuid.uuid4().hex)
        self._memo.clear()
        log.info("storage.cache_cleared", entries=count)
        return count


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
