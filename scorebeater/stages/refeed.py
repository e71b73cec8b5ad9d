"""The refeed stage: re-score every player's latest feature row.

Runs on ``scheduler.refeed_cron`` (e.g. nightly) and whenever a refeed is requested through
the hand-off (``POST /v1/refeed``, ``scorebeater once --stage refeed``). Unchanged (feature
vector, model version) pairs come from the prediction cache; a request with ``clear_cache``
drops the cache first and so forces every row through the model. It shares its runner lock
with the prediction stage: the two never write predictions at the same time.

Reading, scoring and storing overlap: a reader task reads the next batch while this one is
scored and the previous one stored (:data:`READ_AHEAD`, :data:`STORES_IN_FLIGHT`). A backend
that can read each row's stored prediction with it (:class:`ReadsStoredPredictions`: Postgres)
lets the refeed leave unchanged predictions unwritten; the result is the same as upserting
them (an upsert of an equal row changes nothing), without an index probe and a row lock per
row. A feature hash already cached by an earlier batch of the run is not written twice.

Every stored season's rows are scored, followed or not. A row lacking an input the pinned model
takes (stored before the input existed and not filled in since) is skipped, counted and logged
by season (:class:`~scorebeater.stages.scoring.Skipped`); it never fails the refeed. Each
stored batch is handed to the shadow challenger (hand-off rule 8).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

import pyarrow as pa
import structlog

from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff, RefeedRequest
from scorebeater.stages.scoring import STORED_COLUMNS, Scored, Scorer, Skipped

log = structlog.get_logger(__name__)

READ_AHEAD = 1
"""Batches read ahead of the one being scored (Postgres also buffers up to 16 MB of the
stream below that). Measured at 1M players, 2 and 2 here were no faster on Postgres than 1
and 1, and raised the local backend's peak RSS by about 190 MB."""
STORES_IN_FLIGHT = 1
"""Batches being stored while the next ones are read and scored."""


@runtime_checkable
class ReadsStoredPredictions(Protocol):
    """A storage that reads latest feature rows together with their stored predictions
    (Postgres: a join in the same scan, far cheaper than upserting each unchanged row)."""

    def read_latest_features_with_stored(
        self, *, model_version: int, role: str = "champion"
    ) -> AsyncGenerator[pa.Table, None]:
        """Every season's latest feature rows with :data:`~scorebeater.stages.scoring.STORED_COLUMNS`
        appended (null where the version's prediction of the row is not stored)."""
        ...


class RefeedStage:
    """Scores every player's latest feature row with one pinned version."""

    name = "refeed"

    def __init__(self, ctx: StageContext, handoff: Handoff, scorer: Scorer) -> None:
        self._ctx = ctx
        self._handoff = handoff
        self._scorer = scorer

    def status(self) -> dict[str, object]:
        """Whether a refeed is waiting, and with which options."""
        return {"requested": self._handoff.status()["refeed_requested"]}

    async def run(self, run_id: str) -> dict[str, object]:
        """One refeed: the one requested, else a plain one (a cron slot)."""
        del run_id  # bound into the log context by the runner
        request = self._handoff.take_refeed()
        try:
            version = await self._scorer.pin(self.name)
            return {"model_version": version, **await self._refeed(version, request)}
        except BaseException:
            self._handoff.refeed_failed(request)
            raise

    async def _refeed(self, version: int, request: RefeedRequest) -> dict[str, int]:
        ctx = self._ctx
        cleared = await ctx.storage.cache.clear() if request.clear_cache else 0
        rows = 0
        skipped = Skipped()
        started = time.perf_counter()
        # Right after a clear every lookup would miss: skip them.
        use_cache = not request.clear_cache
        # Three overlapping steps (a pipeline): a reader task reads batches ahead into a
        # bounded queue, this task scores them, and up to STORES_IN_FLIGHT batches are being
        # stored (on their own pooled connections) meanwhile. Memory stays bounded by about
        # READ_AHEAD + 1 + STORES_IN_FLIGHT batches, plus `cached` (about 64 bytes a player).
        batches: asyncio.Queue[pa.Table | None] = asyncio.Queue(maxsize=READ_AHEAD)
        reader = asyncio.create_task(self._read(batches, version))
        storing: collections.deque[asyncio.Task[None]] = collections.deque()
        cached: set[int] = set()  # hash() of every feature hash this run has cached
        try:
            while (table := await _next(batches, reader)) is not None:
                scored = await self._scorer.score(table, version, use_cache=use_cache, stage=self.name)
                scored = _new_to_run(scored, cached)
                table = table.drop_columns([c for c in STORED_COLUMNS if c in table.column_names])
                while len(storing) >= STORES_IN_FLIGHT:
                    await storing.popleft()
                storing.append(asyncio.create_task(self._store(scored, table, version)))
                rows += scored.rows
                skipped.add(scored.skipped)
            while storing:
                await storing.popleft()
            await reader
        finally:
            pending = [t for t in (reader, *storing) if not t.done()]
            for task in pending:
                task.cancel()
            # Wait for them (their errors are this run's, already raised or superseded), so
            # none is running when the run is reported over (a store cancelled inside its
            # commit leaves that commit to end on its own, before any later commit:
            # storage.inflight).
            await asyncio.gather(reader, *storing, return_exceptions=True)
            self._scorer.report_skipped(skipped, version, stage=self.name)
        elapsed = time.perf_counter() - started
        log.info(
            "predictions.refeed_completed",
            rows=rows,
            skipped_rows=skipped.total,
            cache_cleared=cleared,
            duration_s=round(elapsed, 3),
            rows_per_s=round(rows / elapsed) if elapsed > 0 else None,
        )
        return {"rows": rows, "skipped_rows": skipped.total, "cache_cleared": cleared}

    async def _read(self, batches: asyncio.Queue[pa.Table | None], version: int) -> None:
        """Every latest feature row into ``batches``, then ``None``; waits while it is full.

        With their stored predictions by ``version`` when the backend can join them
        (:class:`ReadsStoredPredictions`): unchanged predictions are then not rewritten.
        """
        storage = self._ctx.storage
        reading = (
            storage.read_latest_features_with_stored(model_version=version, role=self._scorer.role)
            if isinstance(storage, ReadsStoredPredictions)
            else storage.read_latest_features()
        )
        # Closed here, in the task that iterates it, so the backend's cursor is released at
        # once when the run fails or is cancelled.
        async with contextlib.aclosing(reading) as tables:
            async for table in tables:
                await batches.put(table)
        await batches.put(None)

    async def _store(self, scored: Scored, table: pa.Table, version: int) -> None:
        """Store one batch's predictions, then hand its feature rows to the shadow challenger."""
        await self._scorer.store(scored, version, mode="refeed")
        self._handoff.champion_stored(table, version)


def _new_to_run(scored: Scored, cached: set[int]) -> Scored:
    """``scored`` without the cache entries an earlier batch of this run already wrote.

    Two players with the same inputs share a feature hash; a second write of that hash, in a
    later batch, would hit the key the first one stored, and the backend would take its
    slower conflict path for that batch and the next ones (on Postgres: staging and
    ``ON CONFLICT`` instead of a straight ``COPY``). Same hash, same version: the same
    probability, so dropping the repeat loses nothing. ``cached`` holds Python's 64-bit
    ``hash()`` of each hash, not the strings (a fraction of the memory); two hashes colliding
    there only leave one entry out of the cache, a later miss, never a wrong probability.
    """
    entries = scored.new_cache_entries
    if not entries:
        return scored
    # Set and dict operations over whole batches (C loops), not a Python step per entry.
    hashes = list(map(hash, entries))
    repeated = cached.intersection(hashes)
    cached.update(hashes)
    if not repeated:
        return scored
    fresh = dict(entries)
    by_hash = dict(zip(hashes, entries, strict=True))
    for h in repeated:
        del fresh[by_hash[h]]
    return dataclasses.replace(scored, new_cache_entries=fresh)


async def _next(batches: asyncio.Queue[pa.Table | None], reader: asyncio.Task[None]) -> pa.Table | None:
    """The next batch the reader queued (``None``: no more), or the reader's error."""
    if batches.empty() and reader.done():
        reader.result()  # raises the read's error; a reader that ended well has queued None
    get = asyncio.ensure_future(batches.get())
    try:
        await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        get.cancel()
        raise
    if get.done():
        return get.result()
    get.cancel()
    reader.result()  # the reader failed (or was cancelled) before queueing anything more
    return await batches.get()
