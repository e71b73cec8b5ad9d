"""Scoring feature rows: the one path from feature rows to stored predictions.

The prediction stage (new rows) and the refeed stage (every player's latest row) both score
through a :class:`Scorer`, so they pin versions, use the cache and store rows the same way:

- **pinning**: a run pins one model version at its start (the configured label's version,
  else the highest AVAILABLE one) and sends every request of the run to it, so one refeed is
  never scored by two models; every prediction row records it;
- **inputs**: a model gets exactly the inputs its ``serving_default`` signature declares
  (read once per version), so a model trained on fewer inputs than the rows hold (an older
  version) keeps working. A model taking an input this daemon does not compute is refused
  when pinned; a row lacking an input the model takes (stored before the input existed) is
  refused, naming the season and the input, never sent as 0;
- **cache**: a row whose (feature hash, model version) pair is cached is not sent to the
  model; newly scored pairs are cached;
- **storing**: predictions and new cache entries are upserted, keyed by (player, season,
  as-of, version), so storing the same rows twice changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.errors import StageError
from scorebeater.inputs import INPUT_NAMES
from scorebeater.metrics import observe_many
from scorebeater.stages.base import StageContext
from scorebeater.storage.base import FEATURES_SCHEMA_VERSION, PREDICTIONS_SCHEMA, UTC_TS

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Scored:
    """Predictions for a table of feature rows, ready to store."""

    predictions: pa.Table
    probabilities: np.ndarray
    new_cache_entries: dict[str, float]

    @property
    def rows(self) -> int:
        return int(self.predictions.num_rows)


class Scorer:
    """Pins a model version, scores feature rows (cache first) and stores predictions."""

    def __init__(self, ctx: StageContext) -> None:
        self._ctx = ctx
        self.pinned_version: int | None = None
        """The version the latest run pinned (``None`` before the first)."""

    async def pin(self, stage: str) -> int:
        """Pin the version for one run of ``stage``, and check it takes only known inputs.

        Raises:
            ModelNotFound, ModelUnavailable: no version can be pinned (the run fails and retries).
            StageError: the version takes an input this daemon does not compute
                (:meth:`model_inputs`).
        """
        ctx = self._ctx
        version = await ctx.model.pin_version(ctx.cfg.tfserving.version_label or None)
        if version != self.pinned_version:
            # The client exports model_info/model_available; a change of version is news.
            log.info("predictions.version_changed", model_version=version, previous=self.pinned_version)
            self.pinned_version = version
        await self.model_inputs(version, stage=stage)
        return version

    async def model_inputs(self, version: int, *, stage: str) -> tuple[str, ...]:
        """The inputs ``version``'s signature declares, in ``INPUT_NAMES`` order: what it is sent.

        Raises:
            StageError: (of ``stage``) the signature declares an input this daemon does not
                compute, named with the model version.
            ModelNotFound, ModelUnavailable, TFServingError: the metadata cannot be read.
        """
        model = self._ctx.model
        declared = (await model.signature(version)).inputs
        unknown = sorted(set(declared) - set(INPUT_NAMES))
        if unknown:
            raise StageError(
                stage,
                f"model {model.model_name} v{version} takes input(s) {unknown} that this scorebeater "
                f"does not compute (it computes {', '.join(INPUT_NAMES)}): pin a version that takes "
                "only those ([tfserving] version_label), or upgrade scorebeater",
            )
        return tuple(name for name in INPUT_NAMES if name in declared)

    async def score_and_store(self, table: pa.Table, version: int, *, mode: str, stage: str) -> int:
        """Score ``table``'s feature rows (cache first) and upsert their predictions; returns rows."""
        scored = await self.score(table, version, use_cache=True, stage=stage)
        await self.store(scored, version, mode=mode)
        return scored.rows

    async def score(self, table: pa.Table, version: int, *, use_cache: bool, stage: str) -> Scored:
        """Probabilities for ``table``'s rows: cache hits, the rest from the model (``version``).

        Raises:
            StageError: (of ``stage``) the model takes an input this daemon does not compute,
                or one that rows sent to it lack (:func:`check_present`).
        """
        ctx = self._ctx
        names = await self.model_inputs(version, stage=stage)
        n = table.num_rows
        hashes = table.column("feature_hash").to_pylist()
        probs = np.full(n, np.nan)
        if use_cache and n:
            cached = await ctx.storage.cache.get(version, hashes)
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
            check_present(subset, names, f"model {ctx.model.model_name} v{version}", stage=stage)
            columns = {
                name: subset.column(name).to_numpy(zero_copy_only=False).astype(np.float32) for name in names
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
        return Scored(predictions=predictions, probabilities=probs, new_cache_entries=new_entries)

    async def store(self, scored: Scored, version: int, *, mode: str) -> None:
        """Upsert the predictions and the new cache entries (concurrently: independent writes).

        Idempotent. ``mode`` (``diff``/``refeed``) labels the predictions counter.
        """
        ctx = self._ctx
        if scored.rows == 0:
            return
        writes = [ctx.storage.write_predictions(scored.predictions)]
        if scored.new_cache_entries:
            writes.append(ctx.storage.cache.put(version, scored.new_cache_entries))
        try:
            async with asyncio.TaskGroup() as tg:
                for write in writes:
                    tg.create_task(write)
        except ExceptionGroup as group:
            # The first failure as itself (StorageUnavailable, ...), not as a group.
            raise group.exceptions[0] from None
        ctx.metrics.predictions.labels(mode).inc(scored.rows)
        observe_many(ctx.metrics.prediction_score, scored.probabilities)
        ctx.metrics.predictions_last_written.set(time.time())


def check_present(rows: pa.Table, names: tuple[str, ...], model: str, *, stage: str) -> None:
    """Check that every row has every input in ``names`` (a null input is never sent as 0).

    Raises:
        StageError: (of ``stage``) naming the inputs, the seasons, how many rows lack them and
            what to do: rows stored before an input existed (an older feature schema) get it
            when the feature stage loads their season.
    """
    lacking = [name for name in names if rows.column(name).null_count]
    if not lacking:
        return
    null = pc.is_null(rows.column(lacking[0]))
    for name in lacking[1:]:
        null = pc.or_(null, pc.is_null(rows.column(name)))
    seasons = sorted(pc.unique(pc.filter(rows.column("season"), null)).to_pylist())
    raise StageError(
        stage,
        f"{model} takes input(s) {lacking}, which {pc.sum(null).as_py()} feature row(s) of season(s) "
        f"{seasons} lack: they were stored before scorebeater computed them (an older feature "
        f"schema than {FEATURES_SCHEMA_VERSION}). The feature stage fills them in when it loads a "
        "season: follow the season(s) ([scheduler] seasons) and let it run once; until then, pin a "
        "model version that does not take them ([tfserving] version_label)",
    )
