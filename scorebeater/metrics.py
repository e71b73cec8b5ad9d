"""Every Prometheus object the daemon exports, held by one :class:`Metrics` per registry.

Names follow Prometheus conventions: the ``scorebeater_`` prefix, base units (``_seconds``,
``_ratio``), ``_total`` for counters, timestamps rather than ages (``*_timestamp_seconds``;
dashboards compute ``time() - metric``). Labels are bounded: ``stage``, ``outcome``,
``endpoint``, ``code``, ``mode``, ``model_version``, ``bucket`` (``all`` and the four
season-progress buckets), ``bin`` (ten calibration bins), ``kind``, ``reason``, ``state``,
``role`` (champion, challenger), ``rows`` (labelled, latest), ``input`` (the model's raw inputs
and ``probability``), ``reference`` (training, last_season), ``trigger``, ``label`` (a
models.config version label), ``replica`` (a TF Serving URL from the config); never a player
or game id.
Known label values are pre-initialised so series exist (as 0) before the first event.

Tests pass a fresh ``CollectorRegistry`` so nothing leaks between them.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scorebeater.inputs import PROGRESS_BUCKETS

STAGES = ("features", "predictions", "refeed", "validation", "shadow", "promotion")
"""Stages whose series exist from the start (``retrain`` exists only when enabled)."""
STAGE_OUTCOMES = ("success", "error")
EVAL_BUCKETS = ("all", *PROGRESS_BUCKETS)
CALIBRATION_BINS = tuple(f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10))
SCORE_API_ENDPOINTS = ("games", "boxscore", "season", "seasons", "totals")
TFSERVING_APIS = ("predict", "status", "metadata")
PREDICTION_MODES = ("diff", "refeed")
QUARANTINE_KINDS = ("box_score",)
QUARANTINE_STATES = ("open", "retry", "skipped", "resolved")
"""The dead-letter table's kinds and states (``storage.quarantine``'s; a test keeps them equal)."""
MODEL_ROLES = ("champion", "challenger")
DRIFT_REFERENCES = ("training", "last_season")
"""``scorebeater_drift_psi``'s references: the champion's training rows, last season."""
SHADOW_FAILURE_REASONS = ("unavailable", "not_found", "bad_request", "model_error", "storage", "other")
"""``shadow_failures_total``'s reasons: the TF Serving error kinds, storage, anything else."""
PROMOTION_TRIGGERS = ("operator", "auto")
PROMOTION_OUTCOMES = ("promoted", "refused")
"""``scorebeater_promotions_total``'s labels: who moved the label, and whether it moved."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SCORE_BUCKETS = tuple(i / 10 for i in range(1, 11))


class Metrics:
    """The daemon's metrics. One instance per registry; attributes are the Prometheus objects."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:  # noqa: PLR0915 - one statement per metric
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # --- pipeline health --------------------------------------------------------------
        self.stage_runs = Counter(
            "scorebeater_stage_runs_total", "Stage iterations by outcome.", ["stage", "outcome"], registry=r
        )
        self.stage_duration = Histogram(
            "scorebeater_stage_duration_seconds",
            "Wall time of one stage iteration.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.stage_last_success = Gauge(
            "scorebeater_stage_last_success_timestamp_seconds",
            "Unix time the stage last completed an iteration without error.",
            ["stage"],
            registry=r,
        )
        self.stage_in_progress = Gauge(
            "scorebeater_stage_in_progress",
            "1 while the stage is running an iteration.",
            ["stage"],
            registry=r,
        )
        self.stage_missed_runs = Counter(
            "scorebeater_stage_missed_runs_total",
            "Scheduled runs skipped because the previous run was still going.",
            ["stage"],
            registry=r,
        )
        self.watermark_seq = Gauge(
            "scorebeater_watermark_game_seq",
            "Game sequence number up to which the stage has committed (the current season).",
            ["stage"],
            registry=r,
        )
        self.watermark_time = Gauge(
            "scorebeater_watermark_timestamp_seconds",
            "Unix time (game final time) of the last game the stage has committed.",
            ["stage"],
            registry=r,
        )

        # --- data -------------------------------------------------------------------------
        self.games_processed = Counter(
            "scorebeater_games_processed_total", "Final games whose box scores became features.", registry=r
        )
        self.feature_rows_written = Counter(
            "scorebeater_feature_rows_written_total", "Feature rows committed to storage.", registry=r
        )
        self.features_last_materialized = Gauge(
            "scorebeater_features_last_materialized_timestamp_seconds",
            "Unix time feature rows were last committed.",
            registry=r,
        )
        self.records_rejected = Counter(
            "scorebeater_records_rejected_total",
            "External records rejected by validation, and stored feature rows left unfilled or unscored "
            "for lacking inputs (kind feature_row), by kind and reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.quarantined = Gauge(
            "scorebeater_quarantined_records",
            "Records set aside in the dead-letter table, by kind and state (open: waiting for an "
            "operator; a season completes once its quarantined games are skipped or resolved).",
            ["kind", "state"],
            registry=r,
        )

        # --- Score API ----------------------------------------------------------------------
        self.score_api_requests = Counter(
            "scorebeater_score_api_requests_total",
            "Score API requests by endpoint and HTTP status (code 0: no response).",
            ["endpoint", "code"],
            registry=r,
        )
        self.score_api_duration = Histogram(
            "scorebeater_score_api_request_duration_seconds",
            "Score API request latency, one attempt.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.score_api_retries = Counter(
            "scorebeater_score_api_retries_total", "Score API retries scheduled.", registry=r
        )
        self.score_api_last_success = Gauge(
            "scorebeater_scores_last_fetch_success_timestamp_seconds",
            "Unix time of the last successful Score API response.",
            registry=r,
        )

        # --- TF Serving ---------------------------------------------------------------------
        self.tfserving_requests = Counter(
            "scorebeater_tfserving_requests_total",
            "TF Serving requests by API and HTTP status (code 0: no response).",
            ["api", "code"],
            registry=r,
        )
        self.tfserving_duration = Histogram(
            "scorebeater_tfserving_request_duration_seconds",
            "TF Serving request latency, one attempt.",
            ["api"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tfserving_retries = Counter(
            "scorebeater_tfserving_retries_total", "TF Serving retries scheduled.", registry=r
        )
        self.model_available = Gauge(
            "scorebeater_model_available",
            "1 when the pinned model version is AVAILABLE on the model server, else 0.",
            registry=r,
        )
        # ``backend``: the storage backend the replicas elect on (bounded: local, s3, postgres).
        self.leader = Gauge(
            "scorebeater_leader",
            "1 while this replica leads its store and runs the stages, 0 while it is a standby.",
            ["backend"],
            registry=r,
        )
        self.leadership_term = Gauge(
            "scorebeater_leadership_term",
            "The leadership term (fencing token) this replica leads; 0 while a standby.",
            ["backend"],
            registry=r,
        )
        self.model_info = Gauge(
            "scorebeater_model_info",
            "1 for the model version the prediction stage last pinned.",
            ["model_name", "model_version"],
            registry=r,
        )
        self._replica_metrics(r)

        # --- predictions --------------------------------------------------------------------
        self.predictions = Counter(
            "scorebeater_predictions_total", "Predictions stored, by mode.", ["mode"], registry=r
        )
        self.prediction_score = Histogram(
            "scorebeater_prediction_score",
            "Distribution of stored probabilities.",
            buckets=_SCORE_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter(
            "scorebeater_prediction_cache_requests_total",
            "Prediction cache lookups (one per row).",
            registry=r,
        )
        self.cache_hits = Counter(
            "scorebeater_prediction_cache_hits_total", "Prediction cache lookups that hit.", registry=r
        )
        self.predictions_last_written = Gauge(
            "scorebeater_predictions_last_written_timestamp_seconds",
            "Unix time predictions were last committed.",
            registry=r,
        )
        self.update_latency = Histogram(
            "scorebeater_prediction_update_latency_seconds",
            "From the feature stage seeing a final game to its players' predictions stored.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        # --- realized model quality (validation) --------------------------------------------
        q = ["model_version", "bucket"]
        self.eval_roc_auc = Gauge(
            "scorebeater_eval_roc_auc", "Realized ROC AUC (final labels).", q, registry=r
        )
        self.eval_brier = Gauge("scorebeater_eval_brier_score", "Realized Brier score.", q, registry=r)
        self.eval_log_loss = Gauge("scorebeater_eval_log_loss", "Realized log loss.", q, registry=r)
        self.eval_ece = Gauge(
            "scorebeater_eval_expected_calibration_error", "Realized ECE, 10 equal-width bins.", q, registry=r
        )
        self.eval_accuracy = Gauge(
            "scorebeater_eval_accuracy", "Realized accuracy at threshold 0.5.", q, registry=r
        )
        self.eval_rows = Gauge(
            "scorebeater_eval_rows",
            "Labelled prediction rows the realized metrics are computed on.",
            q,
            registry=r,
        )
        self.eval_outcomes = Gauge(
            "scorebeater_eval_outcomes",
            "Confusion counts at threshold 0.5 (outcome: tp, fp, tn, fn).",
            [*q, "outcome"],
            registry=r,
        )
        self.eval_positive_ratio = Gauge(
            "scorebeater_eval_label_positive_ratio",
            "Share of labelled rows whose player beat.",
            q,
            registry=r,
        )
        cb = ["model_version", "bin"]
        self.calibration_predicted = Gauge(
            "scorebeater_eval_calibration_bin_predicted_ratio",
            "Mean predicted probability in the calibration bin.",
            cb,
            registry=r,
        )
        self.calibration_observed = Gauge(
            "scorebeater_eval_calibration_bin_observed_ratio",
            "Observed share of positives in the calibration bin.",
            cb,
            registry=r,
        )
        self.calibration_count = Gauge(
            "scorebeater_eval_calibration_bin_rows", "Rows in the calibration bin.", cb, registry=r
        )
        self.label_coverage = Gauge(
            "scorebeater_label_coverage_ratio",
            "Share of predicted player-seasons with a ground-truth outcome, by resolution.",
            ["resolution"],
            registry=r,
        )
        self.outcomes_stored = Gauge(
            "scorebeater_outcomes_stored",
            "Stored ground-truth outcomes by resolution.",
            ["resolution"],
            registry=r,
        )
        self.predictions_awaiting_label = Gauge(
            "scorebeater_predictions_awaiting_label",
            "Predicted player-seasons without a final outcome yet.",
            registry=r,
        )
        self.validation_last_success = Gauge(
            "scorebeater_eval_last_computed_timestamp_seconds",
            "Unix time the realized metrics were last computed.",
            registry=r,
        )
        self._shadow_metrics(r)
        self._promotion_metrics(r)
        self._monitoring_metrics(r)

        self._initialise()

    def _replica_metrics(self, r: CollectorRegistry) -> None:
        # ``replica``: a URL from [tfserving] base_url (bounded by the config).
        self.tfserving_replica_requests = Counter(
            "scorebeater_tfserving_replica_requests_total",
            "TF Serving request attempts by replica.",
            ["replica"],
            registry=r,
        )
        self.tfserving_replica_errors = Counter(
            "scorebeater_tfserving_replica_errors_total",
            "TF Serving attempts a replica failed (no response, 429/5xx, version missing).",
            ["replica"],
            registry=r,
        )
        self.tfserving_replica_ejections = Counter(
            "scorebeater_tfserving_replica_ejections_total",
            "Replicas taken out of the balance for a cool-down, by replica.",
            ["replica"],
            registry=r,
        )
        self.tfserving_healthy_replicas = Gauge(
            "scorebeater_tfserving_healthy_replicas",
            "TF Serving replicas receiving requests (not ejected), as the champion's client sees them.",
            registry=r,
        )

    def _initialise(self) -> None:
        for stage in STAGES:
            for outcome in STAGE_OUTCOMES:
                self.stage_runs.labels(stage, outcome)
            self.stage_duration.labels(stage)
            self.stage_in_progress.labels(stage)
            self.stage_missed_runs.labels(stage)
            self.stage_last_success.labels(stage)
            self.watermark_seq.labels(stage)
            self.watermark_time.labels(stage)
        for endpoint in SCORE_API_ENDPOINTS:
            self.score_api_duration.labels(endpoint)
        for api in TFSERVING_APIS:
            self.tfserving_duration.labels(api)
        for mode in PREDICTION_MODES:
            self.predictions.labels(mode)
        for resolution in ("early", "final"):
            self.label_coverage.labels(resolution)
            self.outcomes_stored.labels(resolution)
        for kind in QUARANTINE_KINDS:
            for state in QUARANTINE_STATES:
                self.quarantined.labels(kind, state)
        self._initialise_learning_loop()

    def _initialise_learning_loop(self) -> None:
        for role in MODEL_ROLES:
            self.model_role_version.labels(role)
        for reason in SHADOW_FAILURE_REASONS:
            self.shadow_failures.labels(reason)
        for trigger in PROMOTION_TRIGGERS:
            for outcome in PROMOTION_OUTCOMES:
                self.promotions.labels(trigger, outcome)

    # --- shadow challenger ------------------------------------------------------------
    def _shadow_metrics(self, r: CollectorRegistry) -> None:
        """The shadow challenger's metrics (validation and shadow stages)."""
        # The champion and the challenger on the SAME labelled rows (final outcomes), per
        # progress bucket; then how far apart they are (labelled rows, and each player's
        # latest pair of the followed seasons).
        sq = ["model_version", "role", "bucket"]
        self.shadow_eval_roc_auc = Gauge(
            "scorebeater_shadow_eval_roc_auc",
            "ROC AUC of each role's version on the rows both versions predicted (final labels).",
            sq,
            registry=r,
        )
        self.shadow_eval_brier = Gauge(
            "scorebeater_shadow_eval_brier",
            "Brier score on the rows both versions predicted.",
            sq,
            registry=r,
        )
        self.shadow_eval_log_loss = Gauge(
            "scorebeater_shadow_eval_log_loss",
            "Log loss on the rows both versions predicted.",
            sq,
            registry=r,
        )
        self.shadow_eval_ece = Gauge(
            "scorebeater_shadow_eval_ece",
            "ECE (10 equal-width bins) on the rows both versions predicted.",
            sq,
            registry=r,
        )
        self.shadow_eval_accuracy = Gauge(
            "scorebeater_shadow_eval_accuracy",
            "Accuracy at 0.5 on the rows both versions predicted.",
            sq,
            registry=r,
        )
        self.shadow_eval_rows = Gauge(
            "scorebeater_shadow_eval_rows",
            "Labelled rows both versions predicted (the same for both roles).",
            sq,
            registry=r,
        )
        sd = ["model_version", "role", "rows"]
        self.shadow_flip_ratio = Gauge(
            "scorebeater_shadow_flip_ratio",
            "Share of rows on which the challenger and the champion disagree at 0.5 "
            "(rows: labelled, or latest: each player's latest pair).",
            sd,
            registry=r,
        )
        self.shadow_abs_diff_mean = Gauge(
            "scorebeater_shadow_abs_diff_mean",
            "Mean absolute difference of the challenger's and the champion's probabilities.",
            sd,
            registry=r,
        )
        self.shadow_auc_gain = Gauge(
            "scorebeater_shadow_auc_gain",
            "Challenger ROC AUC minus champion ROC AUC on the same labelled rows.",
            ["bucket"],
            registry=r,
        )
        self.model_role_version = Gauge(
            "scorebeater_model_role_version",
            "The model version currently in each role (0: none; challenger 0: no shadow scoring).",
            ["role"],
            registry=r,
        )
        self.shadow_predictions = Counter(
            "scorebeater_shadow_predictions_total", "Challenger predictions stored.", registry=r
        )
        self.shadow_failures = Counter(
            "scorebeater_shadow_failures_total",
            "Failed shadow runs, by reason (the champion is never affected).",
            ["reason"],
            registry=r,
        )

    # --- promotion ----------------------------------------------------------------------
    def _promotion_metrics(self, r: CollectorRegistry) -> None:
        """The promotion metrics (scorebeater.promotion)."""
        # Label moves in models.config (operator: `scorebeater promote` or the admin API; auto:
        # the policy). A CLI run in another process counts in its own process, not here; the
        # label gauge is refreshed whenever the daemon reads the file.
        self.promotions = Counter(
            "scorebeater_promotions_total",
            "Promotions (label moves) by trigger (operator, auto) and outcome (promoted; refused: "
            "the version was not AVAILABLE, unknown, or no models.config is configured).",
            ["trigger", "outcome"],
            registry=r,
        )
        self.model_label_version = Gauge(
            "scorebeater_model_label_version",
            "The model version each label of models.config names, as the daemon last wrote or read it.",
            ["label"],
            registry=r,
        )
        self.last_promotion = Gauge(
            "scorebeater_last_promotion_timestamp_seconds",
            "Unix time of the last promotion this daemon made (0: none since it started).",
            registry=r,
        )

    # --- drift and estimated performance (monitoring) ----------------------------------------
    def _monitoring_metrics(self, r: CollectorRegistry) -> None:
        """The monitoring stage's gauges (scorebeater.stages.monitoring), pre-initialised."""
        self.drift_psi = Gauge(
            "scorebeater_drift_psi",
            "Population stability index of the current season's latest rows, per raw input and "
            "'probability', against the champion's training rows at the same season progress "
            "(reference=training) or last season at the same point (reference=last_season).",
            ["input", "reference"],
            registry=r,
        )
        self.drift_rows = Gauge(
            "scorebeater_drift_rows",
            "Reference rows the drift PSI is computed against (0: no comparison).",
            ["reference"],
            registry=r,
        )
        self.drift_reference_available = Gauge(
            "scorebeater_drift_reference_available",
            "1 when the champion version has a drift reference (assets.extra/reference.json), else 0.",
            registry=r,
        )
        self.estimated_roc_auc = Gauge(
            "scorebeater_estimated_roc_auc",
            "ROC AUC expected from the calibrated probabilities alone (CBPE), on each player's "
            "latest champion prediction of the current season.",
            ["model_version", "bucket"],
            registry=r,
        )
        self.estimated_accuracy = Gauge(
            "scorebeater_estimated_accuracy",
            "Accuracy at 0.5 expected from the calibrated probabilities alone (CBPE).",
            ["model_version", "bucket"],
            registry=r,
        )
        self.estimated_rows = Gauge(
            "scorebeater_estimated_rows",
            "Predictions the estimated metrics are computed on.",
            ["model_version", "bucket"],
            registry=r,
        )
        for reference in DRIFT_REFERENCES:
            self.drift_rows.labels(reference)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe every value of ``values`` in an unlabelled histogram, vectorised.

    prometheus_client has no bulk observe, and a refeed stores a million probabilities: one
    ``observe`` call each would cost seconds. This counts bucket hits with numpy and adds them
    through the histogram's own counters (the same ones ``observe`` increments).
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    bounds = np.asarray(histogram._upper_bounds)  # noqa: SLF001 - no public bulk API
    # observe() counts a value in the first bucket whose upper bound is >= the value.
    idx = np.searchsorted(bounds, finite, side="left")
    counts = np.bincount(idx, minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts, strict=False):  # noqa: SLF001
        if count:
            bucket.inc(int(count))
    histogram._sum.inc(float(finite.sum()))  # noqa: SLF001
