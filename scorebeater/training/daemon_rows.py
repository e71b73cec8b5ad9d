"""The daemon's row set, for ``scorebeater evaluate --rows daemon``.

``evaluate`` scores, by default, the *training* rows built from the data files
(:func:`scorebeater.training.dataset.build_training_set`). The daemon's realized metrics on
``/metrics`` (:mod:`scorebeater.stages.validation`) are computed on another row set. Both
share the players, the label, the inputs, the progress buckets and the metric functions
(:mod:`scorebeater.quality`); they differ in these ways:

- **granularity**: the daemon stores one feature row per player *per game of his team*
  (for each final regular-season game: the players of its box score, and every player already
  seen whose team, or whose last game's teams while his team is unknown, played in it). The
  training set holds one row per player *per league game day*, every day a game was played,
  whether or not his team played: a day his team was idle repeats his previous row. Over
  a season the training set therefore holds each daemon row (same inputs), plus about as many
  repeats again; the two weight a player's states differently, by days rather than by games.
- **as-of moment**: a daemon row is as of one game (``as_of_seq`` is the order the feature
  stage processed the games); a training row is as of the end of a day (``as_of_seq`` is that
  day's highest ``game_seq``). A team plays at most once a day, so the inputs agree, with one
  exception: the day a traded player first plays for his new team, if his old team's game
  that day is processed first, the daemon also has a row as of it (he counts as the old
  team's until the new team's box score says otherwise: the old team's games played, his
  totals before the day), which no training row matches.
- **quarantined games** (daemon only): a box score that failed validation, or kept failing
  past its retry budget, gives no rows and is left out of the running totals and team game
  counts until an operator's retry succeeds. The training set counts every game in the files.
- **rows and predictions**: ``/metrics`` joins stored *predictions* with the final outcomes,
  one series per model version. The prediction stage scores every stored feature row once
  with the version it pins at the time; a refeed rescores each player's latest row (with the
  same version: the same key, nothing added; with another: one more row per player, at his
  latest as-of, under that version). So the series of a version covers the rows it predicted,
  while ``evaluate --rows daemon`` scores every stored row with *one* version (the published
  one or ``--model-version``): they are the same rows, and the same figures, when that version
  predicted every row (one version served the whole season, and no refeed by another).
  :attr:`DaemonRows.predicted_by` counts the rows each version has a prediction for as the
  champion (a shadow challenger's predictions have their own role and are not counted).
- **seasons**: ``/metrics`` pools every season the daemon follows that has final outcomes;
  ``--seasons`` must name the same ones.
- **probabilities**: the daemon's come from TF Serving over REST (float32, sent as JSON), and
  ``evaluate``'s from the same SavedModel called in-process: they agree to float32 rounding.
- **rows stored before the current feature schema** (their late inputs null, unless the
  feature stage filled them in when it loaded their season; rows of seasons it no longer
  follows, or whose previous-season totals were revised since, stay null): on ``/metrics``
  under the version that predicted them, never here (``skipped["missing_inputs"]``): the
  baselines need every input.
- **undefined metrics**: a gauge is not exported for a metric that is undefined (ROC AUC of a
  single class) nor for a bucket without rows; the JSON says ``null`` and ``n: 0``.

What both share: players are those with a matched id and previous-season (S-1) totals, from
their first free-throw attempt of the season (play-by-play names without an id never match);
the label is the *final* official ``FTM(S) > FTM(S-1)`` (a tie does not beat; players without
S totals have none, ``early`` outcomes are never used); ``season_games`` and
``prev_season_games`` follow the same schedule rule; the progress bucket is
``team_games / season_games`` (a boundary goes to the upper bucket, 100% to ``75-100``); ROC
AUC gives tied scores their average rank; ECE uses 10 equal-width bins (1.0 in the last),
weighted by rows, within each bucket for the per-bucket figure.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import structlog

from scorebeater.errors import DataError
from scorebeater.storage.base import FEATURE_KEY, PREDICTIONS_SCHEMA, Storage
from scorebeater.training import dataset
from scorebeater.training.dataset import TrainingSet

if TYPE_CHECKING:
    from scorebeater.config import StorageConfig

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DaemonRows:
    """The stored feature rows of some seasons with their final outcomes, as a training set."""

    rows: TrainingSet
    source: str
    """Where they were read (``storage:<backend>``)."""
    predicted_by: Mapping[int, int] = field(default_factory=dict)
    """Model version -> how many of :attr:`rows` it has a stored prediction for."""

    def describe(self, model_version: int | None = None) -> str:
        """One line for the report: where the rows come from, what was left out, coverage."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.rows.skipped.items()) if v) or "none"
        coverage = ", ".join(f"v{v}: {n}" for v, n in sorted(self.predicted_by.items())) or "none"
        text = (
            f"{self.source}: the daemon's stored feature rows with final outcomes "
            f"({len(self.rows)} rows; left out: {skipped}; rows with a stored prediction by "
            f"version: {coverage})"
        )
        if model_version is not None and self.predicted_by.get(model_version, 0) != len(self.rows):
            text += (
                f"; version {model_version} did not predict every row, so /metrics for it "
                "covers fewer rows than scored here"
            )
        return text


async def read_daemon_rows(
    storage: Storage, seasons: Collection[int], *, source: str = "storage"
) -> DaemonRows:
    """The stored rows of ``seasons`` labelled with final outcomes, and who predicted them.

    Raises:
        DataError: a season has no stored feature row with a final outcome (the daemon has
            not validated it: it is not final, or the daemon does not follow it).
        StorageError: the store cannot be read.
    """
    wanted = sorted(set(seasons))
    tables = [table async for table in storage.export_training_set(seasons=wanted)]
    rows = dataset.from_arrow(tables).for_seasons(wanted)
    missing = [s for s in wanted if s not in rows.seasons()]
    if missing:
        raise DataError(
            f"{source} holds no feature rows with final outcomes for season(s) {missing} "
            f"(it has {rows.seasons() or 'none'}): the daemon stores final outcomes once it follows "
            "a season whose regular season is final and every game of it is processed"
        )
    predicted_by = await _predicted_by(storage, rows, wanted)
    log.info(
        "training.daemon_rows_read",
        source=source,
        seasons=wanted,
        rows=len(rows),
        skipped=dict(rows.skipped),
        predicted_by={str(v): n for v, n in predicted_by.items()},
    )
    return DaemonRows(rows=rows, source=source, predicted_by=predicted_by)


async def load_daemon_rows(
    cfg: StorageConfig, seasons: Collection[int], *, model_version: int | None = None
) -> DaemonRows:
    """:func:`read_daemon_rows` from the configured storage; warns when ``model_version``
    predicted fewer rows than are scored (its ``/metrics`` series then covers only those)."""
    from scorebeater.storage import open_storage  # noqa: PLC0415 - backends load lazily
    from scorebeater.storage.sizing import stored_config  # noqa: PLC0415

    cfg = await stored_config(cfg)
    source = f"storage:{cfg.backend}"
    async with open_storage(cfg) as storage:
        found = await read_daemon_rows(storage, seasons, source=source)
    if model_version is not None:
        predicted = found.predicted_by.get(model_version, 0)
        if predicted != len(found.rows):
            log.warning(
                "training.daemon_rows_not_all_predicted",
                model_version=model_version,
                predicted=predicted,
                rows=len(found.rows),
                predicted_by={str(v): n for v, n in found.predicted_by.items()},
            )
    return found


async def _predicted_by(storage: Storage, rows: TrainingSet, seasons: list[int]) -> dict[int, int]:
    """Rows of ``rows`` with a stored prediction, per model version (an Arrow join per season)."""
    key = list(FEATURE_KEY)
    types = {name: PREDICTIONS_SCHEMA.field(name).type for name in key}
    scored = pa.table(
        {
            "player_id": pa.array(rows.player_id, types["player_id"]),
            "season": pa.array(rows.season, types["season"]),
            "as_of_seq": pa.array(rows.as_of_seq, types["as_of_seq"]),
        }
    )
    counts: dict[int, int] = {}
    for season in seasons:
        parts = [
            table.select([*key, "model_version"]) async for table in storage.read_predictions(season=season)
        ]
        if not parts:
            continue
        joined = pa.concat_tables(parts).join(scored, keys=key, join_type="inner")
        versions, n = np.unique(joined.column("model_version").to_numpy(), return_counts=True)
        for version, count in zip(versions.tolist(), n.tolist(), strict=True):
            counts[int(version)] = counts.get(int(version), 0) + int(count)
    return dict(sorted(counts.items()))
