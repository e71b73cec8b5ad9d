"""Scoring feature rows: the one path from feature rows to stored predictions.

The prediction stage (new rows) and the refeed stage (every player's latest row) both score
through a :class:`Scorer`, so they pin versions, use the cache and store rows the same way:

- **pinning**: a run pins one model version at its start (the configured label's version,
  else the highest AVAILABLE one) and sends every request of the run to it, so one refeed is
  never scored by two models; every prediction row records it;
- **inputs**: a model gets exactly the inputs its ``serving_default`` signature declares
  (read once per version), so a model trained on fewer inputs than the rows hold (an older
  version) keeps working. A model taking an input this daemon does not compute is refused
  when pinned (a configuration error: the run fails). A row lacking an input the model takes
  (stored before the input existed, and not filled in since: see
  :meth:`~scorebeater.stages.features.FeaturesStage._backfill`) is never sent as 0: it is
  skipped, the rest of its batch is scored, and the run counts it (:class:`Skipped`,
  ``records_rejected{kind="feature_row", reason="missing_inputs"}``) and logs it by season;
- **cache**: a row whose (feature hash, model version) pair is cached is not sent to the
  model; newly scored pairs are cached;
- **storing**: predictions and new cache entries are upserted, keyed by (player, season,
  as-of, version), so storing the same rows twice changes nothing;
- **roles**: a scorer scores for one role (:data:`~scorebeater.storage.base.PREDICTION_ROLES`):
  the ``champion`` pins ``[tfserving] version_label`` (the prediction and refeed stages), the
  ``challenger`` pins ``[tfserving] challenger_label`` (the shadow stage, through its own
  client); every stored row records its role. The cache is keyed by version, so both roles
  share it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.errors import FatalError, StageError
from scorebeater.inputs import INPUT_NAMES
from scorebeater.metrics import Metrics, observe_many
from scorebeater.stages.base import StageContext
from scorebeater.storage.base import (
    FEATURES_SCHEMA_VERSION,
    PREDICTION_ROLES,
    PREDICTIONS_SCHEMA,
    UTC_TS,
)

log = structlog.get_logger(__name__)

SKIPPED_KIND = "feature_row"
SKIPPED_REASON = "missing_inputs"
"""``records_rejected``'s labels of a feature row skipped because it lacks inputs the model takes."""
SKIPPED_HINT = (
    "these rows were stored before scorebeater computed these inputs (a feature schema older "
    f"than {FEATURES_SCHEMA_VERSION}). The feature stage fills them in once, when it loads the "
    "season (a followed season: [scheduler] seasons); rows it cannot fill (no previous season "
    "now, or previous-season totals revised since it stored them: see features.rows_backfilled) "
    "stay unscored by this model. To score them, pin a version that does not take these inputs "
    "([tfserving] version_label)"
)
"""What the log line of skipped rows tells an operator."""


STORED_COLUMNS = ("stored_probability", "stored_progress")
"""Columns a backend may append to feature rows it reads for a refeed: the probability and
progress already stored for the row's key, feature hash and as-of time by the pinned version
(null: none stored). Postgres does (``read_latest_features_with_stored``)."""


@dataclass(slots=True)
class Skipped:
    """Feature rows not scored because they lack inputs the pinned model takes, by season.

    They were stored before scorebeater computed those inputs (an older feature schema), and
    the feature stage could not fill them in (the player has no previous season now, or his
    previous-season totals were revised since), or has not loaded their season since.
    """

    rows: Counter[int] = field(default_factory=Counter)
    missing: dict[int, set[str]] = field(default_factory=dict)
    """The inputs the season's skipped rows lack."""

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def add(self, other: Skipped) -> None:
        self.rows.update(other.rows)
        for season, names in other.missing.items():
            self.missing.setdefault(season, set()).update(names)

    @classmethod
    def of(cls, rows: pa.Table, names: tuple[str, ...]) -> Skipped:
        """The tally of ``rows`` (each lacks one or more of ``names``)."""
        skipped = cls()
        seasons = rows.column("season")
        for season in pc.unique(seasons).to_pylist():
            part = rows.filter(pc.equal(seasons, season))
            skipped.rows[season] = part.num_rows
            skipped.missing[season] = {n for n in names if part.column(n).null_count}
        return skipped

    def report(self, *, stage: str, model: str, metrics: Metrics) -> None:
        """Count the skipped rows and log them, one line per season."""
        for season in sorted(self.rows):
            count = self.rows[season]
            metrics.records_rejected.labels(SKIPPED_KIND, SKIPPED_REASON).inc(count)
            log.warning(
                "predictions.rows_skipped",
                stage=stage,
                model=model,
                season=season,
                rows=count,
                missing_inputs=[n for n in INPUT_NAMES if n in self.missing.get(season, ())],
                reason=SKIPPED_REASON,
                hint=SKIPPED_HINT,
            )


@dataclass(frozen=True, slots=True)
class Scored:
    """Predictions for a table of feature rows, ready to store."""

    predictions: pa.Table
    probabilities: np.ndarray
    new_cache_entries: dict[str, float]
    skipped: Skipped = field(default_factory=Skipped)
    """Rows of the table that are not among ``predictions``: they lack inputs the model takes."""
    unchanged: np.ndarray | None = None
    """Per row of ``predictions``, whether the very same prediction is stored already (known
    when the feature rows came with their stored predictions: :data:`STORED_COLUMNS`); such
    rows are not written again."""

    @property
    def rows(self) -> int:
        return int(self.predictions.num_rows)


class Scorer:
    """Pins a model version, scores feature rows (cache first) and stores predictions for one role."""

    def __init__(self, ctx: StageContext, *, role: str = "champion") -> None:
        """``role``: ``champion`` or ``challenger``; ``ctx.model`` is the client this role's
        requests go through (the challenger's own, so its outage never holds the champion's
        connections)."""
        if role not in PREDICTION_ROLES:
            raise ValueError(f"role must be one of {PREDICTION_ROLES}, got {role!r}")
        self._ctx = ctx
        self.role = role
        self.pinned_version: int | None = None
        """The version the latest run pinned (``None`` before the first)."""
        self._cache_writes = asyncio.Lock()

    @property
    def label(self) -> str | None:
        """The label this role pins (``None``: the highest AVAILABLE version; the challenger
        always has one when it is configured)."""
        tf = self._ctx.cfg.tfserving
        return (tf.version_label if self.role == "champion" else tf.challenger_label) or None

    async def pin(self, stage: str) -> int:
        """Pin the version for one run of ``stage``, and check it takes only known inputs.

        Raises:
            ModelNotFound, ModelUnavailable: no version can be pinned (the run fails and retries).
            StageError: the version takes an input this daemon does not compute
                (:meth:`model_inputs`).
        """
        ctx = self._ctx
        version = await ctx.model.pin_version(self.label)
        if version != self.pinned_version:
            # The client exports model_info/model_available; a change of version is news.
            log.info(
                "predictions.version_changed",
                role=self.role,
                model_version=version,
                previous=self.pinned_version,
            )
            self.pinned_version = version
        await self.model_inputs(version, stage=stage)
        ctx.metrics.model_role_version.labels(self.role).set(version)
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

    async def score_and_store(self, table: pa.Table, version: int, *, mode: str, stage: str) -> Scored:
        """Score ``table``'s feature rows (cache first) and upsert their predictions."""
        scored = await self.score(table, version, use_cache=True, stage=stage)
        await self.store(scored, version, mode=mode)
        return scored

    async def score(self, table: pa.Table, version: int, *, use_cache: bool, stage: str) -> Scored:
        """Probabilities for ``table``'s rows: cache hits, the rest from the model (``version``).

        Rows lacking an input the model takes are left out (``Scored.skipped``): a null input
        is never sent as 0.

        Raises:
            StageError: (of ``stage``) the model takes an input this daemon does not compute.
        """
        ctx = self._ctx
        names = await self.model_inputs(version, stage=stage)
        table, skipped = split_unscorable(table, names)
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
            columns = {
                name: subset.column(name).to_numpy(zero_copy_only=False).astype(np.float32) for name in names
            }
            from_model = await ctx.model.predict(columns, version=version)
            probs[miss_idx] = from_model
            missed = hashes if miss_idx.size == n else [hashes[i] for i in miss_idx.tolist()]
            new_entries = dict(zip(missed, from_model.tolist(), strict=True))
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
                "predicted_at": pa.repeat(pa.scalar(ctx.clock.now(), UTC_TS), n),
                "role": pa.repeat(pa.scalar(self.role, pa.string()), n),
            },
            schema=PREDICTIONS_SCHEMA,
        )
        return Scored(
            predictions=predictions,
            probabilities=probs,
            new_cache_entries=new_entries,
            skipped=skipped,
            unchanged=_unchanged(table, probs, progress),
        )

    async def _put_cache(self, version: int, entries: dict[str, float]) -> None:
        """Add cache entries, one batch at a time: batches stored concurrently (the refeed's)
        may share hashes (two players, the same inputs), and two transactions inserting the
        same keys in different orders could deadlock. Predictions of concurrent batches have
        disjoint keys and need no such order."""
        async with self._cache_writes:
            await self._ctx.storage.cache.put(version, entries)

    def report_skipped(self, skipped: Skipped, version: int, *, stage: str) -> None:
        """Count and log the rows a run of ``stage`` skipped (:class:`Skipped`), if any."""
        skipped.report(
            stage=stage, model=f"{self._ctx.model.model_name} v{version}", metrics=self._ctx.metrics
        )

    async def store(self, scored: Scored, version: int, *, mode: str) -> None:
        """Upsert the predictions and the new cache entries (concurrently: independent writes).

        Safe to run for several batches at once (the refeed does): their cache entries are
        written one batch at a time. Idempotent. ``mode`` (``diff``/``refeed``) labels the
        champion's predictions counter; the challenger's rows count in
        ``shadow_predictions_total`` only (the served model's metrics stay the champion's).
        """
        ctx = self._ctx
        if scored.rows == 0:
            return
        predictions = scored.predictions
        if scored.unchanged is not None and scored.unchanged.any():
            predictions = predictions.filter(pa.array(~scored.unchanged))
        writes = [ctx.storage.write_predictions(predictions)] if predictions.num_rows else []
        if scored.new_cache_entries:
            writes.append(self._put_cache(version, scored.new_cache_entries))
        try:
            async with asyncio.TaskGroup() as tg:
                for write in writes:
                    tg.create_task(write)
        except ExceptionGroup as group:
            # The first failure as itself (StorageUnavailable, ...), not as a group; a fatal
            # one (Fenced: another replica leads now) first, so it stops the daemon instead of
            # being retried as a sibling's transient failure.
            fatal = [e for e in group.exceptions if isinstance(e, FatalError)]
            raise (fatal or group.exceptions)[0] from None
        if self.role != "champion":
            ctx.metrics.shadow_predictions.inc(scored.rows)
            return
        ctx.metrics.predictions.labels(mode).inc(scored.rows)
        observe_many(ctx.metrics.prediction_score, scored.probabilities)
        ctx.metrics.predictions_last_written.set(time.time())


def _unchanged(rows: pa.Table, probabilities: np.ndarray, progress: pa.ChunkedArray) -> np.ndarray | None:
    """Whether each row's prediction is stored already with the same probability and progress
    (``None``: ``rows`` do not say what is stored). A stored probability equals a new one
    exactly when the model gave the same value (float64 both ways, stored as read)."""
    if STORED_COLUMNS[0] not in rows.column_names:
        return None
    stored_probability, stored_progress = (rows.column(name) for name in STORED_COLUMNS)
    same = pc.and_(pc.equal(stored_probability, pa.array(probabilities)), pc.equal(stored_progress, progress))
    known: np.ndarray = pc.fill_null(same, pa.scalar(value=False)).to_numpy(zero_copy_only=False)
    return known


def split_unscorable(rows: pa.Table, names: tuple[str, ...]) -> tuple[pa.Table, Skipped]:
    """``rows`` less those lacking one of ``names`` (null: stored before the input existed),
    and the tally of those."""
    null: pa.ChunkedArray | None = None
    for name in names:
        column = rows.column(name)
        if column.null_count:
            null = pc.is_null(column) if null is None else pc.or_(null, pc.is_null(column))
    if null is None:
        return rows, Skipped()
    return rows.filter(pc.invert(null)), Skipped.of(rows.filter(null), names)
