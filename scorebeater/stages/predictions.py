"""The prediction stage (the design note's ``predictions_updater_service``): new rows.

Each run scores exactly the feature rows the feature stage committed since the last run
(taken from the hand-off), so every stored feature row gets one prediction, whatever the
timing of polls, crashes and restarts. When the hand-off says a reconcile is due (the first
run after a start, or after a failed feature run whose write may have committed unseen), the
run first scores every stored feature row that has no prediction yet. Full re-predictions of
every player are the refeed stage's (:mod:`scorebeater.stages.refeed`); both score through
:class:`~scorebeater.stages.scoring.Scorer`: a row lacking an input the pinned model takes
(stored before the input existed and not filled in since) is skipped, counted and logged by
season, never a failed run. Each batch whose predictions are stored is handed to the shadow
challenger through the hand-off (rule 8), after the store: the champion never waits for it.
"""

from __future__ import annotations

import time

import pyarrow as pa
import structlog

from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff
from scorebeater.stages.scoring import Scorer, Skipped
from scorebeater.storage.base import FEATURES_SCHEMA

log = structlog.get_logger(__name__)

FEATURE_KEY = ["player_id", "season", "as_of_seq"]
FEATURE_KEY_TYPES = {name: FEATURES_SCHEMA.field(name).type for name in FEATURE_KEY}


class PredictionsStage:
    """Scores newly committed feature rows through TF Serving and stores the probabilities."""

    name = "predictions"

    def __init__(self, ctx: StageContext, handoff: Handoff, scorer: Scorer) -> None:
        self._ctx = ctx
        self._handoff = handoff
        self._scorer = scorer

    @property
    def pinned_version(self) -> int | None:
        """The model version the latest prediction or refeed run pinned."""
        return self._scorer.pinned_version

    def status(self) -> dict[str, object]:
        """The pinned version and the committed rows waiting for a run."""
        return {
            "pinned_model_version": self.pinned_version,
            "pending_rows": self._handoff.pending_rows,
        }

    async def run(self, run_id: str) -> dict[str, object]:
        """One run: reconcile if due, then every committed batch waiting in the hand-off."""
        del run_id  # bound into the log context by the runner
        with self._handoff.prediction_run():
            version = await self._scorer.pin(self.name)
            summary: dict[str, object] = {"model_version": version}
            skipped = Skipped()
            try:
                if self._handoff.take_reconcile():
                    try:
                        summary["recovered_rows"] = await self._reconcile(version, skipped)
                    except BaseException:
                        self._handoff.reconcile_failed()
                        raise
                batches = self._handoff.take_committed()
                try:
                    scored = 0
                    for batch in batches:
                        done = await self._scorer.score_and_store(
                            batch.rows, version, mode="diff", stage=self.name
                        )
                        scored += done.rows
                        skipped.add(done.skipped)
                        self._handoff.champion_stored(batch.rows, version)
                        self._ctx.metrics.update_latency.observe(time.monotonic() - batch.seen_at)
                except BaseException:
                    # Put back what was not stored; re-storing a stored batch is an idempotent upsert.
                    self._handoff.put_back(batches)
                    raise
            finally:
                self._scorer.report_skipped(skipped, version, stage=self.name)
            summary["diff_rows"] = scored
            summary["skipped_rows"] = skipped.total
            return summary

    async def _reconcile(self, version: int, skipped: Skipped) -> int:
        """Score every stored feature row that has no prediction yet (adding those the model
        cannot score to ``skipped``); returns the rows scored.

        An anti-join in Arrow (the predicted keys are held as three columns, 16 bytes a row),
        and the missing rows are scored batch by batch as the history streams by, so memory
        stays bounded by one batch however much was left unpredicted.
        """
        storage = self._ctx.storage
        parts = [table.select(FEATURE_KEY) async for table in storage.read_predictions()]
        predicted = (
            pa.concat_tables(parts).group_by(FEATURE_KEY).aggregate([])
            if parts
            else pa.table({k: pa.array([], FEATURE_KEY_TYPES[k]) for k in FEATURE_KEY})
        )
        missing = 0
        async for table in storage.read_feature_history():
            todo = (
                table.join(predicted, keys=FEATURE_KEY, join_type="left anti")
                if predicted.num_rows
                else table
            )
            if todo.num_rows:
                # The join may reorder columns; keep the schema's order.
                todo = todo.select(table.column_names)
                done = await self._scorer.score_and_store(todo, version, mode="diff", stage=self.name)
                missing += done.rows
                skipped.add(done.skipped)
                self._handoff.champion_stored(todo, version)
        if missing:
            log.info("predictions.reconciled", rows=missing)
        return missing
