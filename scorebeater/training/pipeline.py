"""``scorebeater train`` and ``scorebeater evaluate``: the training pipeline end to end.

train: rows (point-in-time from a data directory, or the stored feature history labelled
with final outcomes, plus the long-history season-start rows) -> the gate fold (the recipe
fitted on the seasons before the validation season, early-stopped on it) -> stage the
SavedModel -> promotion gate on the evaluation season(s) -> the same recipe refitted on every
season -> atomic publish as the next version, or a recorded rejection. From storage, when the
daemon stored the champion's predictions for the evaluation season(s), the gate judges the
fold's model against those predictions, on exactly the rows they cover
(:class:`StoredPredictions`).

evaluate: the published model (through its serving signature) and the three baselines
(fitted on the model's training seasons less the evaluated ones; on all of them when the
model itself was fitted on the evaluated seasons) scored on the same rows -> metrics table
(``--json``) + Markdown/PNG report.

Splits are by season, never by row: a player's snapshots within one season are nearly
identical, so a random row split would leak the label.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater import __version__
from scorebeater.config import Config, TrainingConfig
from scorebeater.data import load_history
from scorebeater.errors import DataError
from scorebeater.inputs import MODEL_INPUTS, OUTPUT_NAME
from scorebeater.storage.base import Storage
from scorebeater.training import dataset
from scorebeater.training.dataset import TrainingSet

if TYPE_CHECKING:
    from scorebeater.training.gate import StoredChampion

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_NOT_PUBLISHED = 1


@dataclass(frozen=True, slots=True)
class Split:
    """The seasons of the gate fold: the refit on everything is judged by this fold's model.

    ``train_seasons`` (per-game and long-history rows before the validation seasons) fit the
    fold model, ``validation_seasons`` early-stop it, ``eval_seasons`` score it against the
    champion. The published model is then refitted on every season.
    """

    train_seasons: list[int]
    validation_seasons: list[int]
    eval_seasons: list[int]


def split_seasons(seasons: Sequence[int], cfg: TrainingConfig) -> Split:
    """The gate fold of the per-game ``seasons``: the last ``holdout_seasons`` (at least 1)
    or ``gate.eval_seasons`` are evaluated, the ``validation_seasons`` before them
    early-stop, the earlier ones fit.

    Raises:
        DataError: too few seasons for the configured fold.
    """
    ordered = sorted(set(seasons))
    eval_seasons = sorted(cfg.gate.eval_seasons) or ordered[len(ordered) - max(cfg.holdout_seasons, 1) :]
    before = [s for s in ordered if s < eval_seasons[0]] if eval_seasons else []
    v = cfg.validation_seasons
    if not eval_seasons or len(before) < v + 1:
        raise DataError(
            f"need {v} validation season(s) and at least one season to fit on before the evaluation "
            f"season(s) {eval_seasons}; seasons with rows: {ordered}"
        )
    return Split(before[: len(before) - v], before[len(before) - v :], eval_seasons)


def long_history_rows(cfg: Config, data_dir: Path | None) -> TrainingSet:
    """The long-history season-start rows of the data files (none if ``long_history_from`` is 0)."""
    history = load_history(data_dir)
    first = cfg.training.long_history_from
    if not first:
        return dataset.build_long_history(history, [])
    return dataset.build_long_history(history, first=first)


async def training_set_from_storage(storage: Storage) -> TrainingSet:
    """Collect the stored training export (``TRAINING_SCHEMA``), final outcomes only."""
    tables = [table async for table in storage.export_training_set()]
    return dataset.from_arrow(tables)


_KEY = ("player_id", "season", "as_of_seq")


@dataclass(frozen=True, slots=True)
class StoredPredictions:
    """What the served model predicted live: one version's stored ``champion`` predictions of
    some seasons, by feature row key (``player_id``, ``season``, ``as_of_seq``).

    The gate compares a candidate with them on exactly the rows they cover (:meth:`on`): the
    champion is then judged by what it really served, out of sample whatever it was fitted on.
    """

    version: int
    seasons: list[int]
    predictions: pa.Table
    """``player_id``, ``season``, ``as_of_seq``, ``probability``: one row per key."""

    def on(self, rows: TrainingSet) -> tuple[TrainingSet, np.ndarray]:
        """The rows of ``rows`` with a stored prediction (in their order) and its probability."""
        keys = pa.table(
            {
                "player_id": pa.array(rows.player_id, pa.int64()),
                "season": pa.array(rows.season, pa.int32()),
                "as_of_seq": pa.array(rows.as_of_seq, pa.int32()),
                "_row": pa.array(np.arange(len(rows), dtype=np.int64)),
            }
        )
        joined = keys.join(self.predictions, keys=list(_KEY), join_type="inner").sort_by("_row")
        index = joined.column("_row").to_numpy()
        probability = joined.column("probability").to_numpy().astype(np.float64)
        return rows.take(index), probability


async def stored_champion_predictions(storage: Storage, seasons: Collection[int]) -> StoredPredictions | None:
    """The champion's stored predictions of ``seasons`` (role ``champion``), of one version:
    the one that predicted the most rows of them (the served version; on a tie the newer).
    ``None`` when none are stored (training from files, or a store without predictions).
    """
    wanted = sorted(set(seasons))
    parts = [
        table.select([*_KEY, "model_version", "probability"])
        for season in wanted
        async for table in storage.read_predictions(season=season, role="champion")
    ]
    if not parts or not any(p.num_rows for p in parts):
        return None
    stored = pa.concat_tables(parts)
    versions, counts = np.unique(stored.column("model_version").to_numpy(), return_counts=True)
    version = int(max(zip(counts.tolist(), versions.tolist(), strict=True))[1])
    mine = stored.filter(pc.equal(stored.column("model_version"), version))
    log.info(
        "train.stored_champion_predictions",
        seasons=wanted,
        version=version,
        rows=mine.num_rows,
        by_version={str(v): int(n) for v, n in zip(versions.tolist(), counts.tolist(), strict=True)},
    )
    return StoredPredictions(
        version=version, seasons=wanted, predictions=mine.drop_columns(["model_version"])
    )


async def _from_configured_storage(
    cfg: Config, args: argparse.Namespace
) -> tuple[TrainingSet, TrainingSet, str, StoredPredictions | None]:
    """Stored rows, the rows to train on (with the files' seasons), their source, and the
    champion's stored predictions of the gate's evaluation season(s) when storage holds them all."""
    from scorebeater.storage import open_storage  # noqa: PLC0415 - backends load lazily

    async with open_storage(cfg.storage) as storage:
        stored = await training_set_from_storage(storage)
        rows, source = _with_file_history(stored, args, cfg)
        try:
            eval_seasons = split_seasons(rows.seasons(), cfg.training).eval_seasons
        except DataError:
            return stored, rows, source, None  # run_training says why
        if not set(eval_seasons) <= set(stored.seasons()):
            return stored, rows, source, None  # the files' seasons have no stored predictions
        return stored, rows, source, await stored_champion_predictions(storage, eval_seasons)


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


def _input_schema() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "dtype": "float32", "shape": [-1], "unit": s.unit, "description": s.description}
        for s in MODEL_INPUTS
    ]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)  # noqa: T201 - the progress display


def run_training(  # noqa: PLR0915 - one linear story: fold, gate, refit, publish
    cfg: Config,
    rows: TrainingSet,
    long_history: TrainingSet | None = None,
    *,
    source: str,
    force: bool = False,
    compare_baselines: bool = True,
    progress: Callable[[str], None] = _stderr,
    stored_seasons: Collection[int] = (),
    champion_predictions: StoredPredictions | None = None,
) -> TrainOutcome:
    """Fit the gate fold, judge it, refit on everything and publish (if blessed or forced).

    1. The **gate fold** (:func:`split_seasons`): the recipe is fitted on the seasons before
       the validation season(s), early-stopped on them, and exported; the gate scores that
       artifact and the champion on the evaluation season(s), which neither was fitted on
       (a champion fitted on them is judged by the fold metrics its card recorded).
    2. The **refit**: the same recipe on every season (per-game rows and long-history rows),
       each member for the epochs its fold twin kept, the fold's Platt parameters; exported,
       infra-checked and published as the next version with the fold's verdict.

    ``long_history`` rows take part in both fits with ``training.long_history_weight``.
    ``stored_seasons`` are the seasons whose rows came from storage (the model card lists
    every season with its source and rows). ``champion_predictions``: the champion's stored
    predictions of the evaluation season(s); when they cover some evaluation rows, the gate
    compares the fold's model with them on exactly those rows (and the baselines are scored
    there too), instead of scoring a published champion; the card's ``gate_fold.champion``
    says how the champion was represented.
    ``compare_baselines`` also fits the baselines on the fold's training rows and records
    their evaluation metrics in the model card (about 30 s).

    Idempotency: every call that publishes creates a new version; nothing is overwritten.

    Raises:
        DataError: too few seasons for the fold, or an evaluation season has no rows.
        PublishError: a SavedModel could not be staged or published.
    """
    from scorebeater.training import export, gate, recipe  # noqa: PLC0415 - TensorFlow
    from scorebeater.training.baselines import fit_baselines  # noqa: PLC0415
    from scorebeater.training.evaluate import evaluate, json_table  # noqa: PLC0415

    started = time.perf_counter()
    tcfg = cfg.training
    plan = recipe.Recipe.from_config(tcfg)
    long_rows = long_history if long_history is not None else dataset.empty(long_history=True)
    split = split_seasons(rows.seasons(), tcfg)
    missing = [s for s in split.eval_seasons if s not in rows.seasons()]
    if missing:
        raise DataError(f"gate evaluation season(s) {missing} have no rows (rows have {rows.seasons()})")
    first_validation = split.validation_seasons[0]
    fold_long = [s for s in long_rows.seasons() if s < first_validation]
    train = dataset.concat([rows.for_seasons(split.train_seasons), long_rows.for_seasons(fold_long)])
    validation = rows.for_seasons(split.validation_seasons)
    eval_rows = rows.for_seasons(split.eval_seasons)
    everything = dataset.concat([rows, long_rows])
    log.info(
        "training.started",
        source=source,
        train_seasons=split.train_seasons,
        validation_seasons=split.validation_seasons,
        eval_seasons=split.eval_seasons,
        train_rows=len(train),
        long_history_rows=int(train.is_long_history().sum()),
        validation_rows=len(validation),
        refit_rows=len(everything),
        recipe=plan.as_dict(),
    )
    stored = _stored_champion(champion_predictions, eval_rows, split.eval_seasons)
    fold = recipe.fit(plan, train, validation, progress=progress, label="gate fold: ")
    base_path = cfg.model.base_path
    staged_fold = export.stage(fold.model, base_path)
    staged_final: Path | None = None
    try:
        decision = gate.decide(staged_fold, base_path, eval_rows, tcfg.gate, force=force, stored=stored)
        baseline_metrics = {}
        if compare_baselines:
            progress("baselines on the gate fold")
            baselines = fit_baselines(train, tcfg.seed, long_history_weight=plan.long_history_weight)
            judged = stored.rows if stored is not None else eval_rows
            baseline_metrics = json_table(evaluate(judged, dict(baselines.predict)).table)
        refit = None
        if decision.publish:
            refit = recipe.fit(
                plan,
                everything,
                rows.for_seasons([]),
                epochs=fold.best_epochs,
                progress=progress,
                label="refit on every season: ",
                platt=(fold.platt_scale, fold.platt_bias),
            )
            staged_final = export.stage(refit.model, base_path)
            _, infra = gate.infra_check(staged_final, eval_rows)
            if infra:
                raise export.PublishError(staged_final, "; ".join(infra))
        card = _model_card(
            cfg,
            plan,
            source=source,
            split=split,
            rows=rows,
            long_rows=long_rows,
            fold=fold,
            refit=refit,
            decision=decision,
            baseline_metrics=baseline_metrics,
            stored_seasons=stored_seasons,
        )
        blessing = decision.as_dict()
        if refit is not None and staged_final is not None:
            # The drift reference: the refit's fitted per-game rows, scored by the staged artifact.
            from scorebeater.training.reference import reference_for  # noqa: PLC0415 - TensorFlow

            progress("drift reference")
            reference = reference_for(staged_final, rows)
            version: int | None = export.publish(staged_final, card, blessing, reference)
            staged_final = None
            rejected = None
        else:
            version = None
            rejected = export.record_decision(tcfg.report_dir, {**blessing, "model_card": card})
            log.warning("training.candidate_rejected", reasons=decision.reasons, record=str(rejected))
    finally:
        export.discard(staged_fold)
        if staged_final is not None:
            export.discard(staged_final)
    seconds = time.perf_counter() - started
    log.info("training.finished", version=version, verdict=decision.verdict, seconds=round(seconds, 1))
    return TrainOutcome(
        version=version, decision=blessing, card=card, rejected_record=rejected, seconds=seconds
    )


def _stored_champion(
    predictions: StoredPredictions | None, eval_rows: TrainingSet, eval_seasons: list[int]
) -> StoredChampion | None:
    """The gate's stored champion (:class:`~scorebeater.training.gate.StoredChampion`): the
    evaluation rows the stored predictions cover, or ``None`` (then the gate's other rules)."""
    from scorebeater.training.gate import StoredChampion  # noqa: PLC0415 - TensorFlow

    if predictions is None:
        return None
    if sorted(predictions.seasons) != sorted(eval_seasons):
        log.warning(
            "training.stored_predictions_other_seasons", stored=predictions.seasons, eval_seasons=eval_seasons
        )
        return None
    rows, probability = predictions.on(eval_rows)
    log.info(
        "training.champion_from_stored_predictions",
        version=predictions.version,
        rows=len(rows),
        eval_rows=len(eval_rows),
        stored=predictions.predictions.num_rows,
    )
    if not len(rows):
        return None  # none of them on a row with a final outcome and every input
    return StoredChampion(version=predictions.version, rows=rows, probability=probability)


def _model_card(
    cfg: Config,
    plan: Any,
    *,
    source: str,
    split: Split,
    rows: TrainingSet,
    long_rows: TrainingSet,
    fold: Any,
    refit: Any,
    decision: Any,
    baseline_metrics: dict[str, Any],
    stored_seasons: Collection[int],
) -> dict[str, Any]:
    from scorebeater.training import export, network  # noqa: PLC0415 - TensorFlow

    fitted = refit if refit is not None else fold
    long_seasons = long_rows.seasons()
    return {
        "name": cfg.model.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_revision": export.code_revision(),
        "scorebeater_version": __version__,
        "runtime": _runtime(),
        "data_source": source,
        "training_seasons": rows.seasons() if refit is not None else split.train_seasons,
        "long_history_seasons": [long_seasons[0], long_seasons[-1]] if long_seasons else [],
        "seasons": [
            {
                "season": s,
                "source": "storage" if s in stored_seasons else "files",
                "rows": int((rows.season == s).sum()),
            }
            for s in rows.seasons()
        ],
        "rows": {
            "per_game": len(rows),
            "long_history": len(long_rows),
            "long_history_weight": plan.long_history_weight,
        },
        "recipe": plan.as_dict(),
        "hyper_parameters": {
            **plan.as_dict(),
            "early_stopping_patience": network.EARLY_STOPPING_PATIENCE,
            "prior_games": network.PRIOR_GAMES,
            "normalized_clip": network.NORMALIZED_CLIP,
            "variance_floor": network.VARIANCE_FLOOR,
        },
        "epochs_per_member": fitted.best_epochs,
        "training": {
            "seconds": round(fold.seconds + (refit.seconds if refit is not None else 0.0), 1),
            "platt_scale": fitted.platt_scale,
            "platt_bias": fitted.platt_bias,
        },
        "gate_fold": {
            "train_seasons": split.train_seasons,
            "validation_seasons": split.validation_seasons,
            "eval_seasons": split.eval_seasons,
            "best_epochs": fold.best_epochs,
            "validation_loss": fold.validation_loss,
            "metrics": {"mlp": decision.candidate["metrics"], **baseline_metrics},
            "rows": decision.rows,
            "champion": _champion_summary(decision.champion),
            "note": "the gate fold's model is fitted without the evaluation seasons; the published "
            "model is the same recipe refitted on every season for the same epochs",
        },
        "eval_seasons": split.eval_seasons,
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
        "backtest": "docs/model/backtest.md (the recipe's rolling-origin backtest)",
    }


def _champion_summary(champion: dict[str, Any] | None) -> dict[str, Any] | None:
    """How the gate represented the champion: ``source`` is ``stored_predictions`` (its live
    predictions, on ``rows`` evaluation rows), ``champion's gate fold`` (the metrics its card
    recorded), ``champion scored on the evaluation seasons``, or absent (see ``note``)."""
    if champion is None:
        return None
    return {k: champion[k] for k in ("version", "source", "rows", "note") if k in champion}


def _runtime() -> dict[str, str]:
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


async def train_command(args: argparse.Namespace) -> int:
    """``scorebeater train``: exit 0 when a version was published, 1 when the gate rejected it.

    Async only to read storage; the training itself blocks the loop, which has nothing else to run.
    """
    cfg: Config = args.cfg
    stored_seasons: list[int] = []
    champion_predictions = None
    if args.from_storage:
        stored, rows, source, champion_predictions = await _from_configured_storage(cfg, args)
        stored_seasons = stored.seasons()
    else:
        data_dir = _data_dir(args, cfg)
        rows = dataset.build_training_set(load_history(data_dir))
        source = str(data_dir) if data_dir is not None else "bundled"
    long_rows = long_history_rows(cfg, _data_dir(args, cfg))
    outcome = run_training(
        cfg,
        rows,
        long_rows,
        source=source,
        force=args.force,
        stored_seasons=stored_seasons,
        champion_predictions=champion_predictions,
    )
    mlp = (outcome.decision.get("candidate") or {}).get("metrics") or {}
    summary = mlp.get("all", {})
    if outcome.version is not None:
        forced = " (forced past the gate)" if outcome.decision.get("forced") else ""
        print(  # noqa: T201 - the command's result line
            f"published {cfg.model.name} version {outcome.version}{forced}, refitted on seasons "
            f"{outcome.card['training_seasons']}: its gate fold (fitted without "
            f"{outcome.decision['eval_seasons']}) scored AUC {summary.get('roc_auc')} "
            f"ECE {summary.get('ece')} there; {outcome.seconds:.0f}s",
            file=sys.stderr,
        )
        return EXIT_OK
    print(  # noqa: T201
        f"not published: {'; '.join(outcome.decision['reasons'])} (decision: {outcome.rejected_record})",
        file=sys.stderr,
    )
    return EXIT_NOT_PUBLISHED


async def evaluate_command(args: argparse.Namespace) -> int:
    """``scorebeater evaluate``: score the model and the baselines; print and write the report.

    ``--rows daemon`` scores the daemon's stored rows (:mod:`scorebeater.training.daemon_rows`)
    instead of the data files' training rows. Async only to read storage, as ``train``.
    """
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
    if getattr(args, "rows", "training") == "daemon":
        from scorebeater.training.daemon_rows import load_daemon_rows  # noqa: PLC0415

        if data_dir is not None:
            raise DataError("--data does not apply to --rows daemon: its rows come from [storage]")
        stored = await load_daemon_rows(cfg.storage, args.seasons, model_version=version)
        rows, evaluation_data = stored.rows, stored.describe(version)
    else:
        rows = dataset.build_training_set(load_history(data_dir), args.seasons)
        evaluation_data = str(data_dir) if data_dir is not None else "bundled"
    training_history = load_history(cfg.data.dir)
    model_seasons = card.get("training_seasons") or dataset.label_seasons(training_history)
    in_sample = sorted(set(args.seasons) & set(model_seasons))
    if in_sample:
        # the model has seen these seasons: fit the baselines on them too, so that every
        # model in the table is judged in-sample alike (and say so)
        log.warning("training.evaluating_training_seasons", seasons=in_sample, model_version=version)
        excluded: list[int] = []
    else:
        excluded = list(args.seasons)
    fit_seasons = [s for s in model_seasons if s not in excluded]
    long_rows = long_history_rows(cfg, cfg.data.dir)
    training_rows = dataset.concat(
        [
            dataset.build_training_set(training_history, fit_seasons),
            long_rows.for_seasons([s for s in long_rows.seasons() if s not in excluded]),
        ]
    )
    baselines = fit_baselines(
        training_rows, cfg.training.seed, long_history_weight=cfg.training.long_history_weight
    )
    predictors: dict[str, Callable[[TrainingSet], np.ndarray]] = {"mlp": served, **baselines.predict}
    result = evaluate(rows, {name: predictors[name] for name in MODEL_ORDER})

    report_dir: Path = args.report_dir or cfg.training.report_dir
    context = {
        "model": f"{cfg.model.name} version {version} ({model_dir})",
        "model_trained_on": card.get("training_seasons", "unknown"),
        "baselines_fitted_on": fit_seasons,
        "evaluated_seasons": sorted(args.seasons),
        "evaluation_data": evaluation_data,
        "in_sample_warning": f"the model was trained on {in_sample}, and so were the baselines: "
        "these numbers show fit, not accuracy on unseen seasons"
        if in_sample
        else "none",
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
