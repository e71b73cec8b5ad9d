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
Those metrics are the champion's (the served predictions, role ``champion``).

With a shadow challenger (``[tfserving] challenger_label``), the challenger's latest version is
compared with the champion's latest on exactly the same rows: the feature rows both predicted
(joined on player, season and as-of point) with a final outcome, per progress bucket
(``shadow_eval_*``, ``shadow_auc_gain``), and how far apart the two are on those rows and on
each player's latest pair (``shadow_flip_ratio``: disagreement at 0.5, ``shadow_abs_diff_mean``).
The comparison is handed to the promotion stage (:class:`~scorebeater.stages.handoff.ShadowComparison`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from prometheus_client import Gauge

from scorebeater import quality
from scorebeater.errors import ScoreApiNotFound
from scorebeater.inputs import PROGRESS_BUCKETS, progress_bucket_index
from scorebeater.metrics import CALIBRATION_BINS, Metrics
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff, ShadowComparison, features_checkpoint_name
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
                # The time he was known to have beaten his mark: kept when the final row comes.
                "resolved_early_seq": pa.array([first[p][0] for p in pids], pa.int32()),
                "resolved_early_at": pa.array([first[p][1] for p in pids], UTC_TS),
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
        # Each player's last point of the season: what the final row resolves (its seq and the
        # game time, like an early row's: event time, not the time this run happened).
        latest: dict[int, tuple[int, float, datetime]] = {}
        async for table in ctx.storage.read_latest_features(season=season):
            for pid, seq, prev, at in zip(
                table.column("player_id").to_pylist(),
                table.column("as_of_seq").to_pylist(),
                table.column("prev_ftm").to_pylist(),
                table.column("as_of_time").to_pylist(),
                strict=True,
            ):
                latest[pid] = (seq, prev, at)
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
        table = pa.table(
            {
                "player_id": pa.array(pids, pa.int64()),
                "season": pa.array([season] * len(pids), pa.int32()),
                "beat": pa.array([official[p] > latest[p][1] for p in pids]),
                "resolution": pa.array(["final"] * len(pids)),
                "resolved_seq": pa.array([latest[p][0] for p in pids], pa.int32()),
                "resolved_at": pa.array([latest[p][2] for p in pids], UTC_TS),
                "ftm": pa.array([official[p] for p in pids], pa.int32()),
                "prev_ftm": pa.array([round(latest[p][1]) for p in pids], pa.int32()),
                # Null: storage keeps the stored early row's time (players resolved early).
                "resolved_early_seq": pa.nulls(len(pids), pa.int32()),
                "resolved_early_at": pa.nulls(len(pids), UTC_TS),
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
        scan = _ShadowScan()
        for season in seasons:
            # Every role in one read: the challenger's rows feed the shadow comparison only.
            async for every in self._ctx.storage.read_predictions(season=season, role=None):
                scan.observe(every)
                table = every.filter(pc.equal(every.column("role"), "champion"))
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
        summary = self._export(counts, covered, predicted.num_rows, by_version)
        shadow = await self._shadow(seasons, scan, final)
        if shadow is not None:
            summary["shadow"] = shadow
        return summary

    async def _shadow(
        self, seasons: list[int], scan: _ShadowScan, final: pa.Table
    ) -> dict[str, object] | None:
        """Compare the latest challenger version with the latest champion version on the rows
        both predicted; export it, hand it to the promotion stage, and return its summary
        (``None``, gauges cleared, while there is nothing to compare).

        The challenger's rows were kept by the first pass; the champion's are read again,
        only when a challenger exists, and only the rows the challenger also predicted kept.
        The comparison is handed over even without labelled rows (a new challenger), so the
        promotion stage never judges a challenger that was replaced.
        """
        versions = scan.versions()
        if versions is None:
            for g in _shadow_gauges(self._ctx.metrics):
                g.clear()
            return None
        champion_version, challenger_version = versions
        challenger = scan.challenger_rows(challenger_version)
        parts: list[pa.Table] = []
        for season in seasons:
            async for table in self._ctx.storage.read_predictions(season=season, role="champion"):
                mine = table.filter(pc.equal(table.column("model_version"), champion_version))
                if mine.num_rows:
                    champion = mine.select([*SHADOW_KEY, "probability", "progress"]).rename_columns(
                        [*SHADOW_KEY, "champion", "progress"]
                    )
                    parts.append(champion.join(challenger, keys=SHADOW_KEY, join_type="inner"))
        pairs = pa.concat_tables(parts) if parts else _empty_pairs()
        report = shadow_report(champion_version, challenger_version, pairs, final)
        self._export_shadow(report)
        everything = report.buckets.get("all")
        self._handoff.shadow_compared(
            ShadowComparison(
                champion_version=champion_version,
                challenger_version=challenger_version,
                labelled_rows=report.labelled.rows,
                champion=_metric_values(everything[0]) if everything else {},
                challenger=_metric_values(everything[1]) if everything else {},
                flip_rate=report.labelled.flip_rate,
                mean_abs_diff=report.labelled.mean_abs_diff,
                computed_at=time.time(),
            )
        )
        return report.summary()

    def _export_shadow(self, report: ShadowReport) -> None:
        """Replace the shadow gauges with ``report``'s (synchronously: a scrape sees one or the other)."""
        m = self._ctx.metrics
        for g in _shadow_gauges(m):
            g.clear()
        versions = {"champion": str(report.champion_version), "challenger": str(report.challenger_version)}
        for bucket, pair in report.buckets.items():
            for role, scores in zip(("champion", "challenger"), pair, strict=True):
                v = versions[role]
                for gauge, name in _shadow_metric_gauges(m):
                    if not math.isnan(scores[name]):
                        gauge.labels(v, role, bucket).set(scores[name])
                m.shadow_eval_rows.labels(v, role, bucket).set(scores["n"])
            gain = pair[1]["roc_auc"] - pair[0]["roc_auc"]
            if not math.isnan(gain):
                m.shadow_auc_gain.labels(bucket).set(gain)
        v = versions["challenger"]
        for rows, d in (("labelled", report.labelled), ("latest", report.latest)):
            if d.rows:
                m.shadow_flip_ratio.labels(v, "challenger", rows).set(d.flip_rate)
                m.shadow_abs_diff_mean.labels(v, "challenger", rows).set(d.mean_abs_diff)

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


# --- the shadow comparison: champion and challenger on the same rows -----------------------

SHADOW_KEY = ["player_id", "season", "as_of_seq"]
"""A feature row: the champion's and the challenger's predictions of it are a pair."""
SHADOW_METRICS = ("roc_auc", "brier", "log_loss", "ece", "accuracy")
THRESHOLD = 0.5
"""The decision threshold of the flip rate (the accuracy's: positive when ``p >= 0.5``)."""


class _ShadowScan:
    """What the metrics pass keeps for the comparison: each role's latest version (the
    version of its most recently stored prediction) and the challenger's rows (narrow)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[datetime, int]] = {}
        self._challenger: list[pa.Table] = []

    def observe(self, table: pa.Table) -> None:
        roles = table.column("role")
        for role in ("champion", "challenger"):
            part = table.filter(pc.equal(roles, role))
            if not part.num_rows:
                continue
            at = pc.max(part.column("predicted_at"))
            newest = part.filter(pc.equal(part.column("predicted_at"), at))
            # Newest first by time, then by version (two versions stored in one batch).
            candidate = (at.as_py(), int(pc.max(newest.column("model_version")).as_py()))
            held = self._latest.get(role)
            if held is None or candidate > held:
                self._latest[role] = candidate
            if role == "challenger":
                self._challenger.append(part.select([*SHADOW_KEY, "model_version", "probability"]))

    def versions(self) -> tuple[int, int] | None:
        """``(champion, challenger)`` latest versions; ``None`` unless both exist and differ."""
        champion, challenger = self._latest.get("champion"), self._latest.get("challenger")
        if champion is None or challenger is None or champion[1] == challenger[1]:
            return None
        return champion[1], challenger[1]

    def challenger_rows(self, version: int) -> pa.Table:
        """The challenger's ``version`` rows: the key and its probability as ``challenger``."""
        rows = pa.concat_tables(self._challenger)
        rows = rows.filter(pc.equal(rows.column("model_version"), version))
        return rows.select([*SHADOW_KEY, "probability"]).rename_columns([*SHADOW_KEY, "challenger"])


def _empty_pairs() -> pa.Table:
    return pa.table(
        {
            "player_id": pa.array([], pa.int64()),
            "season": pa.array([], pa.int32()),
            "as_of_seq": pa.array([], pa.int32()),
            "champion": pa.array([], pa.float64()),
            "progress": pa.array([], pa.float32()),
            "challenger": pa.array([], pa.float64()),
        }
    )


@dataclass(frozen=True, slots=True)
class Disagreement:
    """How far two versions' probabilities of the same rows are apart."""

    rows: int
    flip_rate: float
    """Share of the rows on which exactly one of the two says positive (``p >= 0.5``); nan without rows."""
    mean_abs_diff: float
    """Mean ``|p_challenger - p_champion|``; nan without rows."""


def disagreement(champion: np.ndarray, challenger: np.ndarray) -> Disagreement:
    """The :class:`Disagreement` of two probability arrays of the same rows (same order)."""
    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"champion and challenger must have the same rows, got {a.shape} and {b.shape}")
    if a.size == 0:
        return Disagreement(0, math.nan, math.nan)
    flips = (a >= THRESHOLD) != (b >= THRESHOLD)
    return Disagreement(int(a.size), float(flips.mean()), float(np.abs(a - b).mean()))


def compare_on_same_rows(
    y: np.ndarray, champion: np.ndarray, challenger: np.ndarray, progress: np.ndarray
) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """``quality.summary`` of both versions on exactly the same labelled rows, per bucket
    (``all`` and each progress bucket that has rows): ``bucket -> (champion, challenger)``."""
    index = progress_bucket_index(progress)
    out: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
    for bucket in ("all", *PROGRESS_BUCKETS):
        mask = np.ones(y.size, np.bool_) if bucket == "all" else index == PROGRESS_BUCKETS.index(bucket)
        if mask.any():
            out[bucket] = (
                quality.summary(y[mask], champion[mask]),
                quality.summary(y[mask], challenger[mask]),
            )
    return out


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """One comparison of the champion's and the challenger's versions."""

    champion_version: int
    challenger_version: int
    buckets: dict[str, tuple[dict[str, float], dict[str, float]]]
    """On the labelled pairs (:func:`compare_on_same_rows`)."""
    labelled: Disagreement
    latest: Disagreement
    """On each player-season's latest pair (highest as-of point both predicted), labelled or not."""

    def summary(self) -> dict[str, object]:
        """The run summary's ``shadow`` entry (JSON-able; nan metrics left out)."""
        return {
            "champion_version": self.champion_version,
            "challenger_version": self.challenger_version,
            "labelled_rows": self.labelled.rows,
            "latest_rows": self.latest.rows,
            "flip_ratio": {
                "labelled": _finite(self.labelled.flip_rate),
                "latest": _finite(self.latest.flip_rate),
            },
            "abs_diff_mean": {
                "labelled": _finite(self.labelled.mean_abs_diff),
                "latest": _finite(self.latest.mean_abs_diff),
            },
            "metrics": {
                bucket: {"champion": _metric_values(pair[0]), "challenger": _metric_values(pair[1])}
                for bucket, pair in self.buckets.items()
            },
        }


def shadow_report(
    champion_version: int, challenger_version: int, pairs: pa.Table, final: pa.Table
) -> ShadowReport:
    """Compare the two versions over ``pairs`` (``SHADOW_KEY``, ``champion``, ``challenger``,
    ``progress``: one row per feature row both predicted) with ``final`` outcomes
    (``player_id``, ``season``, ``beat``)."""
    labelled = pairs.join(
        final.select(["player_id", "season", "beat"]), keys=["player_id", "season"], join_type="inner"
    )
    y = labelled.column("beat").to_numpy(zero_copy_only=False).astype(np.bool_)
    a = labelled.column("champion").to_numpy().astype(np.float64)
    b = labelled.column("challenger").to_numpy().astype(np.float64)
    progress = labelled.column("progress").to_numpy().astype(np.float64)
    newest = (
        pairs.group_by(["player_id", "season"])
        .aggregate([("as_of_seq", "max")])
        .rename_columns(["player_id", "season", "as_of_seq"])
    )
    latest = pairs.join(newest, keys=SHADOW_KEY, join_type="inner")
    return ShadowReport(
        champion_version=champion_version,
        challenger_version=challenger_version,
        buckets=compare_on_same_rows(y, a, b, progress),
        labelled=disagreement(a, b),
        latest=disagreement(
            latest.column("champion").to_numpy().astype(np.float64),
            latest.column("challenger").to_numpy().astype(np.float64),
        ),
    )


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _metric_values(scores: dict[str, float]) -> dict[str, float]:
    """The comparison metrics of a ``quality.summary`` (nan ones left out)."""
    return {name: scores[name] for name in SHADOW_METRICS if not math.isnan(scores[name])}


def _shadow_metric_gauges(m: Metrics) -> tuple[tuple[Gauge, str], ...]:
    return (
        (m.shadow_eval_roc_auc, "roc_auc"),
        (m.shadow_eval_brier, "brier"),
        (m.shadow_eval_log_loss, "log_loss"),
        (m.shadow_eval_ece, "ece"),
        (m.shadow_eval_accuracy, "accuracy"),
    )


def _shadow_gauges(m: Metrics) -> tuple[Gauge, ...]:
    return (
        *(g for g, _ in _shadow_metric_gauges(m)),
        m.shadow_eval_rows,
        m.shadow_auc_gain,
        m.shadow_flip_ratio,
        m.shadow_abs_diff_mean,
    )
