"""The validation stage (the design note's ``predictions_validator_service``).

Ground truth arrives two ways, and every stored outcome says which:

- **early**: the moment a player's running FTM passes his previous season's total he has
  beaten it, whatever happens next. Found from the stored feature history: the first as-of
  point where ``ftm > prev_ftm``. (Running FTM is play-by-play; the official total can differ
  by a free throw or two, so a season-final outcome replaces an early one.)
- **final**: once the Score API says the regular season is final, its official season totals
  decide every predicted player: ``FTM(S) > FTM(S-1)``.

Realized model quality is computed on *final* labels only (early labels are all positive,
and would flatter any model in-season), per model version and season-progress bucket, over
every stored prediction of a season with final outcomes, and exported as gauges. Label
coverage is exported per resolution, so a dashboard shows how much of the picture is known.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater import quality
from scorebeater.errors import ScoreApiNotFound
from scorebeater.inputs import PROGRESS_BUCKETS, progress_bucket_index
from scorebeater.metrics import CALIBRATION_BINS
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff, features_checkpoint_name
from scorebeater.storage.base import OUTCOMES_SCHEMA, UTC_TS

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class SeasonLabels:
    """Per-season bookkeeping the stage keeps between runs."""

    final_stored: bool = False
    retrain_requested: bool = False


class ValidationStage:
    """Stores outcomes and exports realized model quality.

    Reads from the hand-off whether a season may be finalized; hands off each season whose
    final outcomes it stored (once per season, for retraining).
    """

    name = "validation"

    def __init__(
        self,
        ctx: StageContext,
        handoff: Handoff,
        *,
        seasons: Callable[[], Awaitable[list[int]]],
    ) -> None:
        """``seasons`` gives the seasons to validate: the feature stage's followed seasons."""
        self._ctx = ctx
        self._handoff = handoff
        self._seasons = seasons
        self._state: dict[int, SeasonLabels] = {}

    def status(self) -> dict[str, object]:
        """Per season seen: whether its final outcomes are stored."""
        return {str(season): {"final_outcomes_stored": s.final_stored} for season, s in self._state.items()}

    async def run(self, run_id: str) -> dict[str, object]:
        """Store new outcomes for the followed seasons, then recompute realized metrics."""
        del run_id
        early = final = 0
        seasons = await self._seasons()
        for season in seasons:
            state = self._state.get(season)
            if state is None:
                # After a restart: a season whose final outcomes were committed stays done (and
                # is not retrained again).
                done = await self._ctx.storage.get_checkpoint(f"validation.{season}") is not None
                state = self._state[season] = SeasonLabels(final_stored=done, retrain_requested=done)
            early += await self._early_positives(season)
            if not state.final_stored:
                stored = await self._final_outcomes(season)
                if stored is not None:
                    final += stored
                    state.final_stored = True
                    if not state.retrain_requested:
                        state.retrain_requested = True
                        self._handoff.final_labels_stored(season)
        report = await self._export_metrics(seasons)
        return {"early_outcomes": early, "final_outcomes": final, **report}

    async def _early_positives(self, season: int) -> int:
        """Store an ``early`` outcome for every player whose running FTM passed his previous total."""
        ctx = self._ctx
        known: set[int] = set()
        async for table in ctx.storage.read_outcomes(season=season):
            known.update(table.column("player_id").to_pylist())
        first: dict[int, tuple[int, object, float, float]] = {}
        async for table in ctx.storage.read_feature_history(seasons=[season]):
            passed = pc.greater(table.column("ftm"), table.column("prev_ftm"))
            hits = table.filter(passed)
            for pid, seq, at, ftm, prev in zip(
                hits.column("player_id").to_pylist(),
                hits.column("as_of_seq").to_pylist(),
                hits.column("as_of_time").to_pylist(),
                hits.column("ftm").to_pylist(),
                hits.column("prev_ftm").to_pylist(),
                strict=True,
            ):
                if pid in known:
                    continue
                if pid not in first or seq < first[pid][0]:
                    first[pid] = (seq, at, ftm, prev)
        if not first:
            return 0
        pids = sorted(first)
        table = pa.table(
            {
                "player_id": pa.array(pids, pa.int64()),
                "season": pa.array([season] * len(pids), pa.int32()),
                "beat": pa.array([True] * len(pids)),
                "resolution": pa.array(["early"] * len(pids)),
                "resolved_seq": pa.array([first[p][0] for p in pids], pa.int32()),
                "resolved_at": pa.array([first[p][1] for p in pids], UTC_TS),
                "ftm": pa.array([round(first[p][2]) for p in pids], pa.int32()),
                "prev_ftm": pa.array([round(first[p][3]) for p in pids], pa.int32()),
            },
            schema=OUTCOMES_SCHEMA,
        )
        await ctx.storage.write_outcomes(table)
        log.info("validation.early_positives", season=season, players=len(pids))
        return len(pids)

    async def _final_outcomes(self, season: int) -> int | None:
        """Store final outcomes once the season is final; ``None`` while it is not."""
        ctx = self._ctx
        info = await ctx.scores.season(season)
        if not self._handoff.season_ready_for_validation(
            season,
            regular_season_final=info.regular_season_final,
            features_checkpoint=await ctx.storage.get_checkpoint(features_checkpoint_name(season)),
        ):
            log.debug("validation.season_not_ready", season=season)
            return None
        latest: dict[int, tuple[int, float]] = {}
        async for table in ctx.storage.read_latest_features(season=season):
            for pid, seq, prev in zip(
                table.column("player_id").to_pylist(),
                table.column("as_of_seq").to_pylist(),
                table.column("prev_ftm").to_pylist(),
                strict=True,
            ):
                latest[pid] = (seq, prev)
        official: dict[int, int] = {}
        try:
            async for t in ctx.scores.season_totals(season):
                official[t.player_id] = t.ftm
        except ScoreApiNotFound as exc:
            # Not published yet: the season is final but its totals are not. Any other error
            # (a revoked token, an outage beyond the retry budget) fails the run, visibly.
            log.warning("validation.totals_unavailable", season=season, error=str(exc))
            return None
        pids = sorted(p for p in latest if p in official)
        missing = len(latest) - len(pids)
        if missing:
            log.warning("validation.players_without_official_totals", season=season, players=missing)
        if not pids:
            return 0
        now = ctx.clock.now()
        table = pa.table(
            {
                "player_id": pa.array(pids, pa.int64()),
                "season": pa.array([season] * len(pids), pa.int32()),
                "beat": pa.array([official[p] > latest[p][1] for p in pids]),
                "resolution": pa.array(["final"] * len(pids)),
                "resolved_seq": pa.array([latest[p][0] for p in pids], pa.int32()),
                "resolved_at": pa.array([now] * len(pids), UTC_TS),
                "ftm": pa.array([official[p] for p in pids], pa.int32()),
                "prev_ftm": pa.array([round(latest[p][1]) for p in pids], pa.int32()),
            },
            schema=OUTCOMES_SCHEMA,
        )
        await ctx.storage.write_outcomes(table, checkpoint=(f"validation.{season}", b'{"final": true}'))
        log.info("validation.final_outcomes", season=season, players=len(pids))
        return len(pids)

    async def _export_metrics(self, seasons: list[int]) -> dict[str, object]:
        """Recompute and export realized quality over the followed seasons' predictions.

        Columnar: predictions stream in batches and are joined with the final outcomes in
        Arrow, so a refeed-sized store (a million rows per run) costs joins, not Python loops.
        """
        key = ["player_id", "season"]
        labels = await self._labels(seasons)
        final = labels.filter(pc.equal(labels.column("resolution"), "final")).select([*key, "beat"])
        predicted_parts: list[pa.Table] = []
        scored_parts: list[pa.Table] = []
        for season in seasons:
            async for table in self._ctx.storage.read_predictions(season=season):
                predicted_parts.append(table.select(key).group_by(key).aggregate([]))
                if final.num_rows:
                    joined = table.select([*key, "model_version", "probability", "progress"]).join(
                        final, keys=key, join_type="inner"
                    )
                    scored_parts.append(joined.select(["model_version", "probability", "beat", "progress"]))
        predicted = (
            pa.concat_tables(predicted_parts).group_by(key).aggregate([])
            if predicted_parts
            else pa.table({"player_id": pa.array([], pa.int64()), "season": pa.array([], pa.int32())})
        )
        counts = _count_by_resolution(labels)
        covered = _count_by_resolution(predicted.join(labels, keys=key, join_type="inner"))
        by_version: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if scored_parts:
            scored = pa.concat_tables(scored_parts)
            versions = scored.column("model_version").to_numpy()
            probs = scored.column("probability").to_numpy()
            beats = scored.column("beat").to_numpy(zero_copy_only=False).astype(np.bool_)
            progress = scored.column("progress").to_numpy().astype(np.float64)
            for version in np.unique(versions):
                mask = versions == version
                by_version[int(version)] = (probs[mask], beats[mask], progress[mask])
        return self._export(counts, covered, predicted.num_rows, by_version)

    async def _labels(self, seasons: list[int]) -> pa.Table:
        parts = [
            table.select(["player_id", "season", "beat", "resolution"])
            for season in seasons
            async for table in self._ctx.storage.read_outcomes(season=season)
        ]
        if parts:
            return pa.concat_tables(parts)
        return pa.table(
            {
                "player_id": pa.array([], pa.int64()),
                "season": pa.array([], pa.int32()),
                "beat": pa.array([], pa.bool_()),
                "resolution": pa.array([], pa.string()),
            }
        )

    def _export(
        self,
        counts: dict[str, int],
        covered: dict[str, int],
        n_predicted: int,
        by_version: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> dict[str, object]:
        m = self._ctx.metrics
        for resolution in ("early", "final"):
            m.outcomes_stored.labels(resolution).set(counts[resolution])
            m.label_coverage.labels(resolution).set(covered[resolution] / n_predicted if n_predicted else 0.0)
        m.predictions_awaiting_label.set(n_predicted - covered["final"])

        gauges = (
            m.eval_roc_auc,
            m.eval_brier,
            m.eval_log_loss,
            m.eval_ece,
            m.eval_accuracy,
            m.eval_rows,
            m.eval_positive_ratio,
            m.eval_outcomes,
            m.calibration_predicted,
            m.calibration_observed,
            m.calibration_count,
        )
        for g in gauges:
            g.clear()
        report: dict[str, object] = {}
        for version, (probs, ys, progress) in sorted(by_version.items()):
            share = progress_bucket_index(progress)
            v = str(version)
            version_report: dict[str, dict[str, float]] = {}
            for bucket in ("all", *PROGRESS_BUCKETS):
                mask = (
                    np.ones(probs.size, np.bool_)
                    if bucket == "all"
                    else share == PROGRESS_BUCKETS.index(bucket)
                )
                if not mask.any():
                    continue
                y, p = ys[mask], probs[mask]
                scores = quality.summary(y, p)
                version_report[bucket] = scores
                for gauge, key in (
                    (m.eval_roc_auc, "roc_auc"),
                    (m.eval_brier, "brier"),
                    (m.eval_log_loss, "log_loss"),
                    (m.eval_ece, "ece"),
                    (m.eval_accuracy, "accuracy"),
                ):
                    if not math.isnan(scores[key]):
                        gauge.labels(v, bucket).set(scores[key])
                m.eval_rows.labels(v, bucket).set(scores["n"])
                m.eval_positive_ratio.labels(v, bucket).set(float(y.mean()))
                c = quality.confusion(y, p)
                for outcome in ("tp", "fp", "tn", "fn"):
                    m.eval_outcomes.labels(v, bucket, outcome).set(getattr(c, outcome))
            for name, b in zip(CALIBRATION_BINS, quality.reliability_bins(ys, probs), strict=True):
                m.calibration_count.labels(v, name).set(b.count)
                if b.count:
                    m.calibration_predicted.labels(v, name).set(b.mean_prob)
                    m.calibration_observed.labels(v, name).set(b.frac_positive)
            report[v] = version_report
        m.validation_last_success.set(time.time())
        summary: dict[str, object] = {
            "labelled_versions": sorted(by_version),
            "outcomes": counts,
            "predicted_player_seasons": n_predicted,
        }
        if report:
            summary["metrics"] = report
        return summary


def _count_by_resolution(table: pa.Table) -> dict[str, int]:
    """Rows of ``table`` per outcome resolution (``early``/``final``), zeros included."""
    counts = {"early": 0, "final": 0}
    if table.num_rows:
        for item in pc.value_counts(table.column("resolution")).to_pylist():
            counts[item["values"]] = int(item["counts"])
    return counts
