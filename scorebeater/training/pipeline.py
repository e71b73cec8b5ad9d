"""``scorebeater train`` and ``scorebeater evaluate``: the training pipeline end to end.

train: rows (point-in-time from a data directory, or the stored feature history labelled
with final outcomes) -> split by season (train / validation / holdout) -> Keras MLP
(early-stopped on validation) -> stage the SavedModel -> promotion gate on the evaluation
seasons -> atomic publish as the next version, or a recorded rejection.

evaluate: the published model (through its serving signature) and the three baselines
(fitted on the model's training seasons of the training data, never on the evaluated
seasons) scored on the same rows -> metrics table (``--json``) + Markdown/PNG report.

Splits are by season, never by row: a player's snapshots within one season are nearly
identical, so a random row split would leak the label.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from scorebeater import __version__
from scorebeater.config import Config, TrainingConfig
from scorebeater.data import load_history
from scorebeater.errors import DataError
from scorebeater.inputs import MODEL_INPUTS, OUTPUT_NAME
from scorebeater.storage.base import Storage
from scorebeater.training import dataset
from scorebeater.training.dataset import TrainingSet

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_NOT_PUBLISHED = 1


@dataclass(frozen=True, slots=True)
class Split:
    """Seasons and rows of each role; ``evaluation`` are the gate's seasons."""

    train_seasons: list[int]
    validation_seasons: list[int]
    holdout_seasons: list[int]
    eval_seasons: list[int]


def split_seasons(seasons: Sequence[int], cfg: TrainingConfig) -> Split:
    """Assign seasons to roles: the last ``holdout_seasons`` are never fitted on, the
    ``validation_seasons`` before them early-stop the network, the rest train it. The gate
    scores ``gate.eval_seasons`` (default: the holdout seasons, else the last season).

    Raises:
        DataError: too few seasons for the configured split.
    """
    ordered = sorted(set(seasons))
    h, v = cfg.holdout_seasons, cfg.validation_seasons
    if len(ordered) < h + v + 1:
        raise DataError(
            f"need at least {h + v + 1} seasons with rows for holdout={h}, validation={v}; have {ordered}"
        )
    holdout = ordered[len(ordered) - h :] if h else []
    validation = ordered[len(ordered) - h - v : len(ordered) - h]
    train = ordered[: len(ordered) - h - v]
    eval_seasons = list(cfg.gate.eval_seasons) or holdout or [ordered[-1]]
    return Split(train, validation, holdout, eval_seasons)


async def training_set_from_storage(storage: Storage) -> TrainingSet:
    """Collect the stored training export (``TRAINING_SCHEMA``), final outcomes only."""
    tables = [table async for table in storage.export_training_set()]
    return dataset.from_arrow(tables)


async def _from_configured_storage(cfg: Config) -> TrainingSet:
    from scorebeater.storage import open_storage  # noqa: PLC0415 - backends load lazily

    async with open_storage(cfg.storage) as storage:
        return await training_set_from_storage(storage)


def _with_file_history(stored: TrainingSet, args: argparse.Namespace, cfg: Config) -> tuple[TrainingSet, str]:
    """Stored seasons (the daemon's own point-in-time rows and outcomes) plus, for every season
    storage does not hold, the rows built from the data files: a daemon that has labelled one
    season retrains on all of history, and its own seasons take precedence."""
    data_dir = _data_dir(args, cfg)
    history_rows = dataset.build_training_set(load_history(data_dir))
    stored_seasons = set(stored.seasons())
    older = history_rows.for_seasons([s for s in history_rows.seasons() if s not in stored_seasons])
    log.info(
        "train.from_storage",
        stored_seasons=sorted(stored_seasons),
        stored_rows=len(stored),
        file_seasons=older.seasons(),
        file_rows=len(older),
    )
    source = f"storage:{cfg.storage.backend}+{data_dir if data_dir is not None else 'bundled'}"
    return dataset.concat([older, stored]), source


def _data_dir(args: argparse.Namespace, cfg: Config) -> Path | None:
    data: Path | None = getattr(args, "data", None)
    return data if data is not None else cfg.data.dir


@dataclass(frozen=True, slots=True)
class TrainOutcome:
    """What ``run_training`` did: the published version (``None`` if rejected) and the records."""

    version: int | None
    decision: dict[str, Any]
    card: dict[str, Any]
    rejected_record: Path | None
    seconds: float


def _hyper_parameters(cfg: TrainingConfig) -> dict[str, Any]:
    from scorebeater.training import network  # noqa: PLC0415

    params: dict[str, Any] = {
        k: v for k, v in asdict(cfg).items() if k not in {"gate", "report_dir", "retrain_on_season_final"}
    }
    params["hidden_units"] = list(cfg.hidden_units)
    params.update(
        wide=network.WIDE,
        weight_decay=network.WEIGHT_DECAY,
        input_noise_std=network.INPUT_NOISE_STD,
        early_stopping_patience=network.EARLY_STOPPING_PATIENCE,
        prior_games=network.PRIOR_GAMES,
        platt_calibration=network.CALIBRATE,
    )
    return params


def _input_schema() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "dtype": "float32", "shape": [-1], "unit": s.unit, "description": s.description}
        for s in MODEL_INPUTS
    ]


def run_training(
    cfg: Config, rows: TrainingSet, *, source: str, force: bool = False, compare_baselines: bool = True
) -> TrainOutcome:
    """Train, gate and (if blessed or forced) publish one candidate; see the module docstring.

    ``compare_baselines`` also fits the three baselines on the training seasons and puts their
    evaluation-season metrics in the model card next to the candidate's (costs ~10-40 s).

    Idempotency: every call that publishes creates a new version; nothing is overwritten.

    Raises:
        DataError: too few seasons for the split, or an evaluation season has no rows.
        PublishError: the SavedModel could not be staged or published.
    """
    from scorebeater.training import export, gate, network  # noqa: PLC0415 - TensorFlow
    from scorebeater.training.baselines import fit_baselines  # noqa: PLC0415
    from scorebeater.training.evaluate import evaluate, json_table  # noqa: PLC0415

    started = time.perf_counter()
    tcfg = cfg.training
    split = split_seasons(rows.seasons(), tcfg)
    missing = [s for s in split.eval_seasons if s not in rows.seasons()]
    if missing:
        raise DataError(f"gate evaluation season(s) {missing} have no rows (rows have {rows.seasons()})")
    train = rows.for_seasons(split.train_seasons)
    validation = rows.for_seasons(split.validation_seasons)
    eval_rows = rows.for_seasons(split.eval_seasons)
    overlap = sorted(set(split.eval_seasons) & set(split.train_seasons + split.validation_seasons))
    if overlap:
        log.warning("training.eval_overlaps_training", seasons=overlap)
    log.info(
        "training.started",
        source=source,
        train_seasons=split.train_seasons,
        validation_seasons=split.validation_seasons,
        holdout_seasons=split.holdout_seasons,
        eval_seasons=split.eval_seasons,
        train_rows=len(train),
        validation_rows=len(validation),
    )
    trained = network.train_mlp(tcfg, train, validation)
    base_path = cfg.model.base_path
    staged = export.stage(trained.model, base_path)
    try:
        decision = gate.decide(staged, base_path, eval_rows, tcfg.gate, force=force)
        baseline_metrics = {}
        if compare_baselines:
            baselines = fit_baselines(train, tcfg.seed)
            baseline_metrics = json_table(evaluate(eval_rows, dict(baselines.predict)).table)
        norm = trained.model.get_layer("normalize")
        card: dict[str, Any] = {
            "name": cfg.model.name,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_revision": export.code_revision(),
            "scorebeater_version": __version__,
            "runtime": _runtime(),
            "data_source": source,
            "training_seasons": split.train_seasons,
            "validation_seasons": split.validation_seasons,
            "holdout_seasons": split.holdout_seasons,
            "eval_seasons": split.eval_seasons,
            "rows": {"train": len(train), "validation": len(validation), "eval": len(eval_rows)},
            "seed": tcfg.seed,
            "hyper_parameters": _hyper_parameters(tcfg),
            "training": {
                "epochs_run": trained.epochs_run,
                "best_epoch": trained.best_epoch,
                "seconds": round(trained.train_seconds, 1),
                "platt_scale": trained.platt_scale,
                "platt_bias": trained.platt_bias,
                "history": trained.history,
            },
            "inputs": _input_schema(),
            "outputs": [
                {
                    "name": OUTPUT_NAME,
                    "dtype": "float32",
                    "shape": [-1, 1],
                    "unit": "probability",
                    "description": "P(regular-season FTM this season > FTM last season)",
                }
            ],
            "derived_features": list(network.DERIVED_NAMES),
            "normalization": {
                "mean": np.asarray(norm.mean).ravel().round(6).tolist(),
                "variance": np.asarray(norm.variance).ravel().round(6).tolist(),
            },
            "evaluation": {
                "seasons": split.eval_seasons,
                "metrics": {"mlp": decision.candidate["metrics"], **baseline_metrics},
            },
        }
        blessing = decision.as_dict()
        if decision.publish:
            version: int | None = export.publish(staged, card, blessing)
            rejected = None
        else:
            version = None
            rejected = export.record_decision(tcfg.report_dir, {**blessing, "model_card": card})
            log.warning("training.candidate_rejected", reasons=decision.reasons, record=str(rejected))
    finally:
        export.discard(staged)
    seconds = time.perf_counter() - started
    log.info("training.finished", version=version, verdict=decision.verdict, seconds=round(seconds, 1))
    return TrainOutcome(
        version=version, decision=blessing, card=card, rejected_record=rejected, seconds=seconds
    )


def _runtime() -> dict[str, str]:
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


async def train_command(args: argparse.Namespace) -> int:
    """``scorebeater train``: exit 0 when a version was published, 1 when the gate rejected it.

    Async only to read storage; the training itself blocks the loop, which has nothing else to run.
    """
    cfg: Config = args.cfg
    if args.from_storage:
        stored = await _from_configured_storage(cfg)
        rows, source = _with_file_history(stored, args, cfg)
    else:
        data_dir = _data_dir(args, cfg)
        rows = dataset.build_training_set(load_history(data_dir))
        source = str(data_dir) if data_dir is not None else "bundled"
    outcome = run_training(cfg, rows, source=source, force=args.force)
    mlp = (outcome.decision.get("candidate") or {}).get("metrics") or {}
    summary = mlp.get("all", {})
    if outcome.version is not None:
        forced = " (forced past the gate)" if outcome.decision.get("forced") else ""
        print(  # noqa: T201 - the command's result line
            f"published {cfg.model.name} version {outcome.version}{forced}: "
            f"AUC {summary.get('roc_auc')} ECE {summary.get('ece')} on seasons "
            f"{outcome.decision['eval_seasons']} in {outcome.seconds:.0f}s",
            file=sys.stderr,
        )
        return EXIT_OK
    print(  # noqa: T201
        f"not published: {'; '.join(outcome.decision['reasons'])} (decision: {outcome.rejected_record})",
        file=sys.stderr,
    )
    return EXIT_NOT_PUBLISHED


def evaluate_command(args: argparse.Namespace) -> int:
    """``scorebeater evaluate``: score the model and the baselines; print and write the report."""
    from scorebeater.training import export  # noqa: PLC0415
    from scorebeater.training.baselines import fit_baselines  # noqa: PLC0415
    from scorebeater.training.evaluate import MODEL_ORDER, ModelLoadError, ServedModel, evaluate  # noqa: PLC0415
    from scorebeater.training.report import write_report  # noqa: PLC0415

    cfg: Config = args.cfg
    base_path = cfg.model.base_path
    version = args.model_version if args.model_version is not None else export.latest_version(base_path)
    if version is None:
        raise ModelLoadError(base_path, "no published version to evaluate (run `scorebeater train`)")
    model_dir = base_path / str(version)
    served = ServedModel(model_dir)
    card = export.read_extra(model_dir, export.MODEL_CARD) or {}

    data_dir: Path | None = args.data
    rows = dataset.build_training_set(load_history(data_dir), args.seasons)
    training_history = load_history(cfg.data.dir)
    fit_seasons = [
        s
        for s in card.get("training_seasons") or dataset.label_seasons(training_history)
        if s not in args.seasons
    ]
    in_sample = sorted(set(args.seasons) & set(card.get("training_seasons", [])))
    if in_sample:
        log.warning("training.evaluating_training_seasons", seasons=in_sample, model_version=version)
    training_rows = dataset.build_training_set(training_history, fit_seasons)
    baselines = fit_baselines(training_rows, cfg.training.seed)
    predictors: dict[str, Callable[[TrainingSet], np.ndarray]] = {"mlp": served, **baselines.predict}
    result = evaluate(rows, {name: predictors[name] for name in MODEL_ORDER})

    report_dir: Path = args.report_dir or cfg.training.report_dir
    context = {
        "model": f"{cfg.model.name} version {version} ({model_dir})",
        "model_trained_on": card.get("training_seasons", "unknown"),
        "baselines_fitted_on": fit_seasons,
        "evaluated_seasons": sorted(args.seasons),
        "evaluation_data": str(data_dir) if data_dir is not None else "bundled",
        "in_sample_warning": f"the model was trained on {in_sample}" if in_sample else "none",
    }
    md = write_report(result, report_dir, context)
    log.info("training.report_written", path=str(md))
    from scorebeater.training.evaluate import json_table  # noqa: PLC0415

    table = json_table(result.table)
    if args.json:
        print(json.dumps(table, sort_keys=False))  # noqa: T201 - the command's output
    else:
        _print_table(table)
    return EXIT_OK


def _print_table(table: dict[str, dict[str, dict[str, float | int | None]]]) -> None:
    names = ("auc", "brier", "logloss", "ece", "acc")
    print(f"{'model':9s} {'bucket':7s} " + " ".join(f"{n:>7s}" for n in names) + f" {'n':>8s}")  # noqa: T201
    for model, buckets in table.items():
        for bucket, m in buckets.items():
            cells = " ".join(
                f"{m[k]:7.4f}" if isinstance(m[k], float) else f"{'n/a':>7s}"
                for k in ("roc_auc", "brier", "log_loss", "ece", "accuracy")
            )
            print(f"{model:9s} {bucket:7s} {cells} {m['n']:8d}")  # noqa: T201
