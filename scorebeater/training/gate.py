"""The promotion gate (TFX's Evaluator "blessing" + InfraValidator, in one process).

A staged candidate is blessed when all of these hold:

1. **infra**: it loads from its exported directory (``tf.saved_model.load``), has the
   ``serving_default`` signature with the named inputs and the ``probability`` output, and
   answers a predict with real rows: shape ``[rows, 1]``, finite values in ``[0, 1]``;
2. **value threshold**: its ECE on the evaluation seasons is at most ``gate.max_ece``;
3. **change thresholds** against the champion on the same rows: ROC AUC drops by at most
   ``max_auc_drop``, Brier and log loss rise by at most ``max_brier_increase`` /
   ``max_log_loss_increase``. When the daemon stored the champion's predictions of the
   evaluation seasons (:class:`StoredChampion`, from ``train --from-storage``), the champion
   is what it served: both are judged on exactly the rows it predicted (source
   ``stored_predictions``). Otherwise the champion is the highest published version; the
   first model has none. Both are judged on seasons they were not fitted on: a champion whose
   card says it was fitted on the evaluation seasons (a refit on everything) is represented by
   the metrics its own gate fold recorded on the same seasons and row count; without such a
   record the candidate is not blessed (``--force`` publishes it anyway).

The decision (both models' metrics, the tolerances, the verdict and its reasons) is a plain
dict written as ``blessing.json``; ``force`` publishes a rejected candidate and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from scorebeater.config import GateConfig
from scorebeater.inputs import INPUT_NAMES
from scorebeater.training.dataset import TrainingSet
from scorebeater.training.evaluate import ModelLoadError, ServedModel, bucket_metrics, json_table
from scorebeater.training.export import MODEL_CARD, PublishError, latest_version, read_extra

log = structlog.get_logger(__name__)

INFRA_ROWS = 256
"""Real rows sent through the serving signature by the infra check."""

BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"


@dataclass(frozen=True, slots=True)
class StoredChampion:
    """The champion as the daemon served it: its stored predictions of evaluation rows."""

    version: int
    rows: TrainingSet
    """The evaluation rows it predicted (final outcomes, every input)."""
    probability: np.ndarray
    """Its stored probability of each of :attr:`rows`."""


@dataclass(frozen=True, slots=True)
class GateDecision:
    """What the gate decided and why; ``as_dict()`` is the ``blessing.json`` content."""

    verdict: str
    publish: bool
    forced: bool
    reasons: list[str]
    eval_seasons: list[int]
    rows: int
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    tolerances: dict[str, Any]
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def infra_check(path: Path, rows: TrainingSet) -> tuple[ServedModel | None, list[str]]:
    """Load the exported model and predict ``INFRA_ROWS`` real rows through ``serving_default``.

    Returns the loaded model (``None`` if it did not load) and the problems found (empty: ok).
    """
    try:
        served = ServedModel(path)
    except ModelLoadError as exc:
        return None, [f"infra: {exc}"]
    if served.input_names != INPUT_NAMES:
        missing = [n for n in INPUT_NAMES if n not in served.input_names]
        return served, [f"infra: the candidate does not take input(s) {missing}"]
    sample = rows.take(np.arange(min(INFRA_ROWS, len(rows))))
    if len(sample) == 0:
        return served, ["infra: no rows to send through the serving signature"]
    try:
        out = served.raw(sample.inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the served graph fails the gate
        return served, [f"infra: predict through serving_default failed: {type(exc).__name__}: {exc}"]
    problems = []
    if out.shape != (len(sample), 1):
        problems.append(f"infra: output shape {list(out.shape)} is not [{len(sample)}, 1]")
    elif not np.all(np.isfinite(out)) or out.min() < 0.0 or out.max() > 1.0:
        problems.append("infra: outputs are not finite probabilities in [0, 1]")
    return served, problems


def _metric_problems(cand: Mapping[str, float], champ: Mapping[str, float], cfg: GateConfig) -> list[str]:
    problems = []
    checks = (
        ("roc_auc", -1.0, cfg.max_auc_drop, "drops"),
        ("brier", 1.0, cfg.max_brier_increase, "rises"),
        ("log_loss", 1.0, cfg.max_log_loss_increase, "rises"),
    )
    for metric, direction, tolerance, verb in checks:
        c, b = cand[metric], champ[metric]
        if math.isnan(c) or math.isnan(b):
            continue
        worse_by = direction * (c - b)
        if worse_by > tolerance:
            problems.append(
                f"{metric} {verb} by {worse_by:.4f} against the champion ({b:.4f} -> {c:.4f}); "
                f"tolerance {tolerance}"
            )
    return problems


def _champion_card(base_path: Path, version: int | None) -> dict[str, Any]:
    if version is None:
        return {}
    try:
        return read_extra(base_path / str(version), MODEL_CARD) or {}
    except PublishError as exc:
        log.warning("training.champion_card_unreadable", version=version, error=str(exc))
        return {}


def _against_stored(
    stored: StoredChampion, buckets: np.ndarray, cand_all: Mapping[str, float] | None, cfg: GateConfig
) -> tuple[dict[str, Any], list[str]]:
    """The champion as it served (its stored predictions: out of sample whatever it was fitted
    on), and the candidate's problems against it (none if the candidate was not scored)."""
    champion: dict[str, Any] = {
        "version": stored.version,
        "metrics": None,
        "source": "stored_predictions",
        "rows": len(stored.rows),
    }
    if cand_all is None:
        return champion, []
    table = {"mlp": bucket_metrics(stored.rows.label, stored.probability, buckets)}
    champion["metrics"] = json_table(table)["mlp"]
    return champion, _metric_problems(cand_all, table["mlp"]["all"], cfg)


def decide(
    candidate_dir: Path,
    base_path: Path,
    rows: TrainingSet,
    cfg: GateConfig,
    *,
    force: bool = False,
    stored: StoredChampion | None = None,
) -> GateDecision:
    """Judge the staged candidate at ``candidate_dir`` against the champion under ``base_path``.

    ``rows`` are the evaluation seasons' rows (both models are scored on exactly these), or,
    with ``stored``, only the rows of ``stored`` (the champion's stored predictions; the infra
    check still uses ``rows``). A champion that no longer loads is logged and treated as
    absent (recorded in the reasons). Never raises for a bad candidate: a failure is a
    ``NOT_BLESSED`` verdict with reasons.
    """
    tolerances = {
        "max_auc_drop": cfg.max_auc_drop,
        "max_brier_increase": cfg.max_brier_increase,
        "max_log_loss_increase": cfg.max_log_loss_increase,
        "max_ece": cfg.max_ece,
    }
    seasons = rows.seasons()
    served, reasons = infra_check(candidate_dir, rows)
    if stored is not None:
        rows = stored.rows  # judged on exactly the rows the champion predicted
    buckets = rows.progress_bucket()
    candidate: dict[str, Any] = {"path": str(candidate_dir), "metrics": None}
    cand_all: dict[str, float] | None = None
    if served is not None and not reasons:
        table = {"mlp": bucket_metrics(rows.label, served(rows), buckets)}
        cand_all = table["mlp"]["all"]
        candidate["metrics"] = json_table(table)["mlp"]
        if not math.isnan(cand_all["ece"]) and cand_all["ece"] > cfg.max_ece:
            reasons.append(f"ece {cand_all['ece']:.4f} exceeds max_ece {cfg.max_ece}")

    champion: dict[str, Any] | None = None
    champ_version = latest_version(base_path) if stored is None else stored.version
    champ_card = _champion_card(base_path, champ_version) if stored is None else {}
    fitted_on_eval = sorted(set(champ_card.get("training_seasons") or []) & set(seasons))
    if stored is not None:
        champion, problems = _against_stored(stored, buckets, cand_all, cfg)
        reasons.extend(problems)
    elif champ_version is not None and cand_all is not None and fitted_on_eval:
        # A champion refitted on the evaluation seasons would be judged in-sample: use the
        # metrics its own gate fold (fitted without them) recorded on the same seasons.
        recorded = champ_card.get("gate_fold") or {}
        metrics = (recorded.get("metrics") or {}).get("mlp")
        same_rows = (
            bool(metrics)
            and recorded.get("eval_seasons") == seasons
            and ((metrics or {}).get("all", {}).get("n") == len(rows))
        )
        if same_rows and metrics:
            champion = {"version": champ_version, "metrics": metrics, "source": "champion's gate fold"}
            reasons.extend(_metric_problems(cand_all, metrics["all"], cfg))
        else:
            # no out-of-sample score of the champion on these rows: blessing the candidate
            # would compare it with nothing, so it takes --force
            note = (
                f"champion version {champ_version} was fitted on {fitted_on_eval} and recorded no "
                f"gate-fold metrics on these {len(rows)} rows of {seasons}: it cannot be compared "
                "out of sample"
            )
            champion = {"version": champ_version, "metrics": None, "note": note}
            reasons.append(note)
    elif champ_version is not None and cand_all is not None:
        champ_path = base_path / str(champ_version)
        try:
            champ_model = ServedModel(champ_path)
        except ModelLoadError as exc:
            log.warning("training.champion_unloadable", path=str(champ_path), error=str(exc))
            reasons_note = f"champion version {champ_version} does not load ({exc}); compared with none"
            champion = {"version": champ_version, "metrics": None, "note": reasons_note}
        else:
            champ_table = {"mlp": bucket_metrics(rows.label, champ_model(rows), buckets)}
            champion = {
                "version": champ_version,
                "metrics": json_table(champ_table)["mlp"],
                "source": "champion scored on the evaluation seasons",
            }
            reasons.extend(_metric_problems(cand_all, champ_table["mlp"]["all"], cfg))

    blessed = not reasons
    decision = GateDecision(
        verdict=BLESSED if blessed else NOT_BLESSED,
        publish=blessed or force,
        forced=force and not blessed,
        reasons=reasons,
        eval_seasons=seasons,
        rows=len(rows),
        candidate=candidate,
        champion=champion,
        tolerances=tolerances,
    )
    log.info(
        "training.gate_decided",
        verdict=decision.verdict,
        publish=decision.publish,
        forced=decision.forced,
        reasons=reasons,
        champion_version=champ_version,
        eval_seasons=seasons,
    )
    return decision
