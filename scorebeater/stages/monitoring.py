"""The monitoring stage: input drift and estimated performance of the served model.

Each run looks at the current season (the newest followed one): every player's latest feature
row and his latest champion prediction. It exports

- **drift** (:mod:`scorebeater.drift`): ``scorebeater_drift_psi{input, reference}`` for each
  raw input and the predicted probability.

  ``reference="training"`` compares with the champion version's reference, stored with the
  model in ``<model.base_path>/<version>/assets.extra/reference.json`` (the daemon shares the
  model directory with TF Serving, so it needs no training data). In-season counts grow
  through a season, so the comparison is with the reference's snapshot at the same season
  progress. A version without a reference (exported before references existed) gives
  ``scorebeater_drift_reference_available 0``, one warning, and no ``training`` series.

  ``reference="last_season"`` compares season-to-date with the same point of last season: of
  the previous season's stored feature history, each player's latest row as of the moment his
  team had played the share of its schedule the current season has reached. Progress is a
  share, not a date or a game count, because seasons start on different dates and differ in
  length (66 games in 2012); taking the latest row per player as of that point mirrors what
  ``read_latest_features`` returns today (a player out injured keeps an older row in both).
  Inputs only: last season's stored probabilities came from whichever version served then,
  and their shift would mix a model change with a population change.

  The season's progress is the furthest any team has got (``max(team_games / season_games)``
  over the latest rows): teams stay within a few games of each other, and the maximum does
  not move back when an injured player's old row is the latest one.

- **estimated performance** (:mod:`scorebeater.estimation`, CBPE):
  ``scorebeater_estimated_{roc_auc,accuracy,rows}{model_version, bucket}`` from each player's
  latest champion prediction of the season, per model version and progress bucket (the
  progress stored with each prediction), beside the realized ``scorebeater_eval_*`` ones.

It runs on ``[monitoring] interval_s`` and when the champion's predictions are stored
(hand-off rule 9). It reads storage and the model directory and writes only metrics, so a
failed run changes nothing and the next one starts from scratch.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import structlog
from prometheus_client import Gauge

from scorebeater import drift, estimation
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import features_checkpoint_name, season_complete
from scorebeater.storage.base import FEATURES_SCHEMA, PREDICTIONS_SCHEMA

log = structlog.get_logger(__name__)

_FEATURE_COLUMNS = ("player_id", "season", "as_of_seq", *INPUT_NAMES)
_PREDICTION_COLUMNS = ("model_version", "probability", "progress")


@dataclass(frozen=True, slots=True)
class _PreviousSeason:
    """The previous season's feature history (numpy columns), kept once the season is complete."""

    season: int
    values: dict[str, np.ndarray]
    player_id: np.ndarray
    as_of_seq: np.ndarray
    share: np.ndarray


class MonitoringStage:
    """Exports drift PSI and CBPE estimates of the current season's latest rows."""

    name = "monitoring"

    def __init__(
        self,
        ctx: StageContext,
        *,
        seasons: Callable[[], Awaitable[list[int]]],
        champion_version: Callable[[], int | None],
    ) -> None:
        """``seasons``: the followed seasons; ``champion_version``: the version the prediction
        stage pinned (``None`` before its first run: the newest version among the latest
        predictions is used)."""
        self._ctx = ctx
        self._seasons = seasons
        self._champion_version = champion_version
        self._references: dict[int, drift.Reference] = {}
        self._warned: set[int] = set()
        self._previous: _PreviousSeason | None = None
        self._last: dict[str, object] = {}

    def status(self) -> dict[str, object]:
        """The last run's season, progress, reference and largest PSI."""
        return dict(self._last)

    async def run(self, run_id: str) -> dict[str, object]:
        """Recompute and export drift and estimated metrics of the newest followed season."""
        del run_id
        seasons = await self._seasons()
        if not seasons:
            return {"season": None}
        season = max(seasons)
        current = await self._latest_features(season)
        predictions = await self._latest_predictions(season)
        version = self._champion_version()
        if version is None and predictions.num_rows:
            version = int(np.max(predictions.column("model_version").to_numpy()))
        summary: dict[str, object] = {"season": season, "model_version": version, "rows": current.num_rows}
        values = {name: _floats(current, name) for name in INPUT_NAMES}
        progress = float(
            np.max(drift.progress_share(values["team_games"], values["season_games"]), initial=0.0)
        )
        summary["progress"] = round(progress, 4)
        probs = _champion_probabilities(predictions, version)
        summary["training"] = await self._training_drift(version, values, probs, progress, current.num_rows)
        summary["last_season"] = await self._last_season_drift(season, values, progress, current.num_rows)
        summary["estimated"] = self._estimate(predictions)
        self._last = {
            "season": season,
            "progress": summary["progress"],
            "model_version": version,
            "reference_available": version is not None and self._references.get(version) is not None,
        }
        return summary

    # -- reads ---------------------------------------------------------------------------------

    async def _latest_features(self, season: int) -> pa.Table:
        parts = [
            t.select(list(_FEATURE_COLUMNS))
            async for t in self._ctx.storage.read_latest_features(season=season)
        ]
        return pa.concat_tables(parts) if parts else _empty(_FEATURE_COLUMNS)

    async def _latest_predictions(self, season: int) -> pa.Table:
        # role defaults to the champion's: the served model's predictions
        parts = [
            t.select(list(_PREDICTION_COLUMNS))
            async for t in self._ctx.storage.read_predictions(season=season, latest_only=True)
        ]
        return pa.concat_tables(parts) if parts else _empty(_PREDICTION_COLUMNS)

    async def _reference(self, version: int) -> drift.Reference | None:
        """``version``'s training reference; a missing or unreadable one is looked for again
        next run (a reference added after export, or a file read mid-export, is picked up) and
        warned about once per version."""
        if version in self._references:
            return self._references[version]
        path = self._ctx.cfg.model.base_path / str(version)
        try:
            reference = await asyncio.to_thread(drift.read_reference, path)
        except drift.ReferenceFileError as exc:
            if version not in self._warned:
                log.warning("monitoring.reference_unreadable", model_version=version, error=str(exc))
            reference = None
        if reference is None:
            if version not in self._warned:
                self._warned.add(version)
                log.warning(
                    "monitoring.reference_missing",
                    model_version=version,
                    path=str(path / "assets.extra" / drift.REFERENCE_FILE),
                    effect="no drift against the training rows for this version until it appears",
                )
            return None
        self._references[version] = reference
        return reference

    async def _previous_season(self, season: int) -> _PreviousSeason | None:
        previous = season - 1
        if self._previous is not None and self._previous.season == previous:
            return self._previous
        storage = self._ctx.storage
        parts = [
            t.select(list(_FEATURE_COLUMNS)) async for t in storage.read_feature_history(seasons=[previous])
        ]
        if not parts:
            return None
        table = pa.concat_tables(parts)
        values = {name: _floats(table, name) for name in INPUT_NAMES}
        loaded = _PreviousSeason(
            season=previous,
            values=values,
            player_id=table.column("player_id").to_numpy(),
            as_of_seq=table.column("as_of_seq").to_numpy(),
            share=drift.progress_share(values["team_games"], values["season_games"]),
        )
        # Keep it only once the season is complete: until then new rows may still arrive.
        if season_complete(await storage.get_checkpoint(features_checkpoint_name(previous))):
            self._previous = loaded
        return loaded

    # -- exports -------------------------------------------------------------------------------

    async def _training_drift(
        self,
        version: int | None,
        values: dict[str, np.ndarray],
        probs: np.ndarray,
        progress: float,
        n_rows: int,
    ) -> dict[str, object]:
        m = self._ctx.metrics
        reference = await self._reference(version) if version is not None else None
        m.drift_reference_available.set(1 if reference is not None else 0)
        if reference is None or n_rows == 0:
            _remove_series(m.drift_psi, "training")
            m.drift_rows.labels("training").set(0)
            return {"reference_available": reference is not None}
        _, reference_rows = reference.at_progress(progress)
        psis = reference.compare({**values, OUTPUT_NAME: probs}, progress)
        for name, value in psis.items():
            m.drift_psi.labels(name, "training").set(value)
        m.drift_rows.labels("training").set(reference_rows)
        return {"reference_available": True, "reference_rows": reference_rows, "psi": _rounded(psis)}

    async def _last_season_drift(
        self, season: int, values: dict[str, np.ndarray], progress: float, n_rows: int
    ) -> dict[str, object]:
        m = self._ctx.metrics
        previous = await self._previous_season(season) if n_rows else None
        idx = (
            drift.latest_as_of(
                np.zeros(previous.player_id.size, np.int32),
                previous.player_id,
                previous.as_of_seq,
                previous.share,
                progress,
            )
            if previous is not None
            else np.empty(0, np.int64)
        )
        if previous is None or idx.size == 0:
            _remove_series(m.drift_psi, "last_season")
            m.drift_rows.labels("last_season").set(0)
            return {"rows": 0}
        psis = {name: drift.psi_of_values(values[name], previous.values[name][idx]) for name in INPUT_NAMES}
        for name, value in psis.items():
            m.drift_psi.labels(name, "last_season").set(value)
        m.drift_rows.labels("last_season").set(idx.size)
        return {"rows": int(idx.size), "psi": _rounded(psis)}

    def _estimate(self, predictions: pa.Table) -> dict[str, object]:
        m = self._ctx.metrics
        for gauge in (m.estimated_roc_auc, m.estimated_accuracy, m.estimated_rows):
            gauge.clear()
        if predictions.num_rows == 0:
            return {}
        versions = predictions.column("model_version").to_numpy()
        probs = predictions.column("probability").to_numpy().astype(np.float64)
        progress = predictions.column("progress").to_numpy().astype(np.float64)
        report: dict[str, object] = {}
        for version in np.unique(versions):
            mask = versions == version
            v = str(int(version))
            by_bucket = estimation.estimate_by_bucket(probs[mask], progress[mask])
            for bucket, scores in by_bucket.items():
                if not math.isnan(scores["roc_auc"]):
                    m.estimated_roc_auc.labels(v, bucket).set(scores["roc_auc"])
                if not math.isnan(scores["accuracy"]):
                    m.estimated_accuracy.labels(v, bucket).set(scores["accuracy"])
                m.estimated_rows.labels(v, bucket).set(scores["n"])
            report[v] = {b: {k: round(x, 4) for k, x in s.items()} for b, s in by_bucket.items()}
        return report


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64, nulls (an input added after the row was stored) as NaN."""
    column = table.column(name)
    values: np.ndarray = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return values


def _champion_probabilities(predictions: pa.Table, version: int | None) -> np.ndarray:
    """The latest probabilities of ``version`` (every latest one when it has none): the
    reference's probabilities are that version's output."""
    probs = np.asarray(predictions.column("probability").to_numpy(), dtype=np.float64)
    if version is None or predictions.num_rows == 0:
        return probs
    mask = predictions.column("model_version").to_numpy() == version
    return probs[mask] if mask.any() else probs


def _remove_series(gauge: Gauge, reference: str) -> None:
    """Drop every series of ``reference`` (a comparison that cannot be made has no value)."""
    for name in drift.SERIES:
        try:
            gauge.remove(name, reference)
        except KeyError:
            continue


def _rounded(psis: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in psis.items()}


def _empty(columns: tuple[str, ...]) -> pa.Table:
    fields = []
    for name in columns:
        schema = FEATURES_SCHEMA if name in FEATURES_SCHEMA.names else PREDICTIONS_SCHEMA
        fields.append(schema.field(name))
    return pa.schema(fields).empty_table()
