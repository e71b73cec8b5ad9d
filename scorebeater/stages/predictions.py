"""The prediction stage (the design note's ``predictions_updater_service``).

Two modes share one scoring path:

- **diff**: score exactly the feature rows the feature stage committed since the last run
  (handed over in memory; rebuilt from storage after a restart by finding feature rows that
  have no prediction yet), so every stored feature row gets one prediction, whatever the
  timing of polls, crashes and restarts;
- **refeed**: score every player's latest feature row. Unchanged (feature vector, model
  version) pairs come from the prediction cache; clearing the cache first forces every row
  through the model.

Every run pins one model version at its start (the configured label's version, else the
highest AVAILABLE one) and sends every request of the run to that version, so one refeed is
never scored by two models; every prediction row records it. Writes are idempotent upserts
keyed by (player, season, as-of, version).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.inputs import INPUT_NAMES
from scorebeater.metrics import observe_many
from scorebeater.stages.base import CommittedFeatures, StageContext
from scorebeater.storage.base import FEATURES_SCHEMA, PREDICTIONS_SCHEMA, UTC_TS

log = structlog.get_logger(__name__)

FEATURE_KEY_TYPES = {name: FEATURES_SCHEMA.field(name).type for name in ("player_id", "season", "as_of_seq")}


@dataclass(frozen=True, slots=True)
class RefeedRequest:
    clear_cache: bool = False


class PredictionsStage:
    """Scores feature rows through TF Serving and stores the probabilities."""

    name = "predictions"

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx
        self._pending: list[CommittedFeatures] = []
        self._refeed: RefeedRequest | None = None
        self._reconciled = False
        self.pinned_version: int | None = None

    def reconcile_next_run(self) -> None:
        """Make the next run look in storage for feature rows without predictions.

        Called when the feature stage may have committed rows it could not hand over.
        """
        self._reconciled = False

    def submit(self, batch: CommittedFeatures) -> None:
        """Queue committed feature rows for the next diff run (called by the feature stage)."""
        self._pending.append(batch)

    def request_refeed(self, *, clear_cache: bool = False) -> None:
        """Make the next run a full refeed; ``clear_cache`` drops the cache first."""
        previous = self._refeed
        self._refeed = RefeedRequest(clear_cache=clear_cache or bool(previous and previous.clear_cache))

    @property
    def pending_rows(self) -> int:
        return sum(b.rows.num_rows for b in self._pending)

    async def run(self, run_id: str) -> dict[str, object]:
        """One run: a refeed if one was requested, then the pending diff."""
        del run_id
        ctx = self._ctx
        version = await ctx.model.pin_version(ctx.cfg.tfserving.version_label or None)
        if version != self.pinned_version:
            # The client exports model_info/model_available; a change of version is news.
            log.info("predictions.version_changed", model_version=version, previous=self.pinned_version)
            self.pinned_version = version
        summary: dict[str, object] = {"model_version": version}
        if not self._reconciled:
            summary["recovered_rows"] = await self._reconcile(version)
            self._reconciled = True
        if self._refeed is not None:
            request, self._refeed = self._refeed, None
            try:
                summary["refeed"] = await self._run_refeed(version, request)
            except BaseException:
                self.request_refeed(clear_cache=request.clear_cache)
                raise
        batches, self._pending = self._pending, []
        try:
            scored = 0
            for batch in batches:
                scored += await self._score_and_store(batch.rows, version, mode="diff")
                ctx.metrics.update_latency.observe(time.monotonic() - batch.seen_at)
        except BaseException:
            # Put back what was not stored; re-storing a stored batch is an idempotent upsert.
            self._pending[:0] = batches
            raise
        summary["diff_rows"] = scored
        return summary

    async def _run_refeed(self, version: int, request: RefeedRequest) -> dict[str, int]:
        ctx = self._ctx
        cleared = await ctx.storage.cache_clear() if request.clear_cache else 0
        rows = 0
        started = time.perf_counter()
        # Right after a clear every lookup would miss: skip them. Batch k's writes overlap
        # batch k+1's read and scoring, with at most one batch of writes in flight.
        use_cache = not request.clear_cache
        storing: asyncio.Task[None] | None = None
        try:
            # A failed batch must release the backend's cursor now, not at garbage collection.
            async with contextlib.aclosing(ctx.storage.read_latest_features()) as tables:
                async for table in tables:
                    scored = await self._score(table, version, use_cache=use_cache)
                    if storing is not None:
                        await storing
                    storing = asyncio.create_task(self._store(scored, version, mode="refeed"))
                    rows += scored.rows
            if storing is not None:
                await storing
        finally:
            if storing is not None and not storing.done():
                storing.cancel()
                await asyncio.gather(storing, return_exceptions=True)
        elapsed = time.perf_counter() - started
        log.info(
            "predictions.refeed_completed",
            rows=rows,
            cache_cleared=cleared,
            duration_s=round(elapsed, 3),
            rows_per_s=round(rows / elapsed) if elapsed > 0 else None,
        )
        return {"rows": rows, "cache_cleared": cleared}

    async def _reconcile(self, version: int) -> int:
        """After a restart: score every stored feature row that has no prediction yet.

        An anti-join in Arrow (the predicted keys are held as three columns, 16 bytes a row),
        and the missing rows are scored batch by batch as the history streams by, so memory
        stays bounded by one batch however much was left unpredicted.
        """
        ctx = self._ctx
        key = ["player_id", "season", "as_of_seq"]
        parts = [table.select(key) async for table in ctx.storage.read_predictions()]
        predicted = (
            pa.concat_tables(parts).group_by(key).aggregate([])
            if parts
            else pa.table({k: pa.array([], FEATURE_KEY_TYPES[k]) for k in key})
        )
        missing = 0
        async for table in ctx.storage.read_feature_history():
            todo = table.join(predicted, keys=key, join_type="left anti") if predicted.num_rows else table
            if todo.num_rows:
                # The join may reorder columns; keep the schema's order.
                missing += await self._score_and_store(todo.select(table.column_names), version, mode="diff")
        if missing:
            log.info("predictions.reconciled", rows=missing)
        return missing

    async def _score_and_store(
        self, table: pa.Table, version: int, *, mode: str, use_cache: bool = True
    ) -> int:
        """Score ``table``'s feature rows (cache first) and upsert their predictions."""
        scored = await self._score(table, version, use_cache=use_cache)
        await self._store(scored, version, mode=mode)
        return scored.rows

    async def _score(self, table: pa.Table, version: int, *, use_cache: bool) -> _Scored:
        """Probabilities for ``table``'s rows: cache hits, the rest from the model."""
        ctx = self._ctx
        n = table.num_rows
        hashes = table.column("feature_hash").to_pylist()
        probs = np.full(n, np.nan)
        if use_cache and n:
            cached = await ctx.storage.cache_get(version, hashes)
            ctx.metrics.cache_requests.inc(n)
            ctx.metrics.cache_hits.inc(len(cached))
            if cached:
                for i, h in enumerate(hashes):
                    hit = cached.get(h)
                    if hit is not None:
                        probs[i] = hit
        miss_idx = np.flatnonzero(np.isnan(probs))
        new_entries: dict[str, float] = {}
        if miss_idx.size:
            subset = table.take(pa.array(miss_idx)) if miss_idx.size < n else table
            columns = {
                name: subset.column(name).to_numpy(zero_copy_only=False).astype(np.float32)
                for name in INPUT_NAMES
            }
            from_model = await ctx.model.predict(columns, version=version)
            probs[miss_idx] = from_model
            new_entries = dict(zip((hashes[i] for i in miss_idx), from_model.tolist(), strict=True))
        progress = pc.divide(
            pc.cast(table.column("team_games"), pa.float32()),
            pc.max_element_wise(
                pc.cast(table.column("season_games"), pa.float32()), pa.scalar(1.0, pa.float32())
            ),
        )
        predictions = pa.table(
            {
                "player_id": table.column("player_id"),
                "season": table.column("season"),
                "as_of_seq": table.column("as_of_seq"),
                "as_of_time": table.column("as_of_time"),
                "model_version": pa.array(np.full(n, version, dtype=np.int64)),
                "probability": pa.array(probs),
                "feature_hash": table.column("feature_hash"),
                "progress": progress,
                "predicted_at": pa.array([ctx.clock.now()] * n, UTC_TS),
            },
            schema=PREDICTIONS_SCHEMA,
        )
        return _Scored(predictions=predictions, probabilities=probs, new_cache_entries=new_entries)

    async def _store(self, scored: _Scored, version: int, *, mode: str) -> None:
        """Upsert the predictions and the new cache entries (concurrently: independent writes)."""
        ctx = self._ctx
        if scored.rows == 0:
            return
        writes = [ctx.storage.write_predictions(scored.predictions)]
        if scored.new_cache_entries:
            writes.append(ctx.storage.cache_put(version, scored.new_cache_entries))
        async with asyncio.TaskGroup() as tg:
            for write in writes:
                tg.create_task(write)
        ctx.metrics.predictions.labels(mode).inc(scored.rows)
        observe_many(ctx.metrics.prediction_score, scored.probabilities)
        ctx.metrics.predictions_last_written.set(time.time())


@dataclass(frozen=True, slots=True)
class _Scored:
    predictions: pa.Table
    probabilities: np.ndarray
    new_cache_entries: dict[str, float]

    @property
    def rows(self) -> int:
        return int(self.predictions.num_rows)
