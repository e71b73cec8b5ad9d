"""The refeed stage: re-score every player's latest feature row.

Runs on ``scheduler.refeed_cron`` (e.g. nightly) and whenever a refeed is requested through
the hand-off (``POST /v1/refeed``, ``scorebeater once --stage refeed``). Unchanged (feature
vector, model version) pairs come from the prediction cache; a request with ``clear_cache``
drops the cache first and so forces every row through the model. It shares its runner lock
with the prediction stage: the two never write predictions at the same time.

Every stored season's rows are scored, followed or not. A row lacking an input the pinned model
takes (stored before the input existed and not filled in since) is skipped, counted and logged
by season (:class:`~scorebeater.stages.scoring.Skipped`); it never fails the refeed. Each
stored batch is handed to the shadow challenger (hand-off rule 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pyarrow as pa
import structlog

from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff, RefeedRequest
from scorebeater.stages.scoring import Scored, Scorer, Skipped

log = structlog.get_logger(__name__)


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
        # Right after a clear every lookup would miss: skip them. Batch k's writes overlap
        # batch k+1's read and scoring, with at most one batch of writes in flight.
        use_cache = not request.clear_cache
        storing: asyncio.Task[None] | None = None
        try:
            # A failed batch must release the backend's cursor now, not at garbage collection.
            async with contextlib.aclosing(ctx.storage.read_latest_features()) as tables:
                async for table in tables:
                    scored = await self._scorer.score(table, version, use_cache=use_cache, stage=self.name)
                    if storing is not None:
                        await storing
                    storing = asyncio.create_task(self._store(scored, table, version))
                    rows += scored.rows
                    skipped.add(scored.skipped)
            if storing is not None:
                await storing
        finally:
            if storing is not None and not storing.done():
                storing.cancel()
                await asyncio.gather(storing, return_exceptions=True)
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

    async def _store(self, scored: Scored, table: pa.Table, version: int) -> None:
        """Store one batch's predictions, then hand its feature rows to the shadow challenger."""
        await self._scorer.store(scored, version, mode="refeed")
        self._handoff.champion_stored(table, version)
