"""Rolling-origin backtest: how the recipe and the baselines do on seasons they never saw.

For each test season S (a *fold*):

- the MLP recipe (:mod:`scorebeater.training.recipe`) and every fitted baseline are fitted on
  exactly the same rows: the per-game rows of every season before S-1 plus the long-history
  season-start rows of every season before S-1, with the same weights;
- the MLP early-stops (and calibrates) on the per-game rows of S-1;
- everything is scored on the per-game rows of S (the rows the daemon predicts).

Nothing of S or later reaches a fit. Each model's metrics are summarised over the folds
(mean, standard deviation, worst fold), overall and per season-progress bucket, and the AUC
difference between the MLP and the best baseline gets a paired bootstrap confidence interval.
The bootstrap resamples player-seasons, not rows: a player's ~150 rows in one season share
one label, so resampling rows would make the interval far too narrow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from scorebeater.errors import DataError
from scorebeater.inputs import PROGRESS_BUCKETS
from scorebeater.training.dataset import TrainingSet, concat
from scorebeater.training.evaluate import BUCKETS, MODEL_ORDER, bucket_metrics
from scorebeater.training.recipe import Progress, Recipe, _stderr

log = structlog.get_logger(__name__)

METRICS: tuple[str, ...] = ("roc_auc", "brier", "log_loss", "ece")
HIGHER_IS_BETTER = {"roc_auc": True, "brier": False, "log_loss": False, "ece": False}
BOOTSTRAP_REPLICATES = 1000
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Fold:
    """One test season and what may be fitted for it."""

    test_season: int
    validation_season: int
    train_seasons: list[int]
    """Per-game seasons fitted on (all before ``validation_season``)."""
    long_history_seasons: list[int]
    """Season-start rows fitted on (all before ``validation_season``)."""


def make_folds(
    test_seasons: Sequence[int], per_game_seasons: Sequence[int], long_seasons: Sequence[int]
) -> list[Fold]:
    """The folds for ``test_seasons``.

    Raises:
        DataError: a test season has no per-game rows, S-1 has none (no early stopping), or
            nothing is left to fit on.
    """
    have = set(per_game_seasons)
    folds = []
    for s in sorted(set(test_seasons)):
        if s not in have:
            raise DataError(f"backtest season {s} has no per-game rows (seasons with rows: {sorted(have)})")
        if s - 1 not in have:
            raise DataError(f"backtest season {s}: season {s - 1} has no per-game rows to early-stop on")
        train = [x for x in sorted(have) if x < s - 1]
        if not train:
            raise DataError(f"backtest season {s}: no per-game season before {s - 1} to fit on")
        folds.append(Fold(s, s - 1, train, [x for x in sorted(long_seasons) if x < s - 1]))
    return folds


@dataclass(frozen=True, slots=True)
class FoldResult:
    """One fold's scores: ``table[model][bucket][metric]``."""

    fold: Fold
    table: dict[str, dict[str, dict[str, float]]]
    rows: dict[str, int]
    best_epochs: list[int]
    platt: tuple[float, float]
    seconds: float
    probabilities: Mapping[str, np.ndarray] = field(repr=False)
    label: np.ndarray = field(repr=False)
    cluster: np.ndarray = field(repr=False)
    """Per test row, the index of its player-season (the bootstrap's resampling unit)."""
    bucket: np.ndarray = field(repr=False)


def run_fold(
    recipe: Recipe,
    fold: Fold,
    per_game: TrainingSet,
    long_history: TrainingSet,
    *,
    baselines: bool = True,
    progress: Progress = _stderr,
    label: str = "",
) -> FoldResult:
    """Fit and score one fold (see the module docstring)."""
    from scorebeater.training import network  # noqa: PLC0415 - TensorFlow
    from scorebeater.training.baselines import fit_baselines  # noqa: PLC0415
    from scorebeater.training.recipe import fit  # noqa: PLC0415

    started = time.perf_counter()
    train = concat(
        [per_game.for_seasons(fold.train_seasons), long_history.for_seasons(fold.long_history_seasons)]
    )
    validation = per_game.for_seasons([fold.validation_season])
    test = per_game.for_seasons([fold.test_season])
    fitted = fit(recipe, train, validation, progress=progress, label=label)
    probabilities = {"mlp": network.predict(fitted.model, test)}
    if baselines:
        progress(f"{label}baselines")
        fitted_baselines = fit_baselines(train, recipe.seed, long_history_weight=recipe.long_history_weight)
        for name, predict in fitted_baselines.predict.items():
            probabilities[name] = predict(test)
    buckets = test.progress_bucket()
    table = {name: bucket_metrics(test.label, p, buckets) for name, p in probabilities.items()}
    _, cluster = np.unique(test.player_id, return_inverse=True)
    seconds = time.perf_counter() - started
    log.info(
        "training.backtest_fold",
        test_season=fold.test_season,
        auc={m: round(t["all"]["roc_auc"], 4) for m, t in table.items()},
        seconds=round(seconds, 1),
    )
    return FoldResult(
        fold=fold,
        table=table,
        rows={
            "train": len(train),
            "train_long_history": int(train.is_long_history().sum()),
            "validation": len(validation),
            "test": len(test),
        },
        best_epochs=fitted.best_epochs,
        platt=(fitted.platt_scale, fitted.platt_bias),
        seconds=seconds,
        probabilities=probabilities,
        label=test.label,
        cluster=cluster,
        bucket=buckets,
    )


def summarise(results: Sequence[FoldResult]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{model: {bucket: {metric: {mean, std, min, max, worst_season}}}}`` over the folds."""
    models = [m for m in MODEL_ORDER if all(m in r.table for r in results)]
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for m in models:
        out[m] = {}
        for b in BUCKETS:
            out[m][b] = {}
            for metric in METRICS:
                values = np.asarray([r.table[m][b][metric] for r in results], np.float64)
                worst = int(np.argmin(values) if HIGHER_IS_BETTER[metric] else np.argmax(values))
                out[m][b][metric] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "min": float(np.min(values)),
                    "max": float(np.max(values)),
                    "worst_season": results[worst].fold.test_season,
                }
    return out


def best_baseline(summary: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]) -> str | None:
    """The baseline with the highest mean overall AUC."""
    baselines = [m for m in summary if m != "mlp"]
    if not baselines:
        return None
    return max(baselines, key=lambda m: summary[m]["all"]["roc_auc"]["mean"])


class _SortedAuc:
    """ROC AUC of fixed scores under many row weightings (ties count half), O(rows) each."""

    def __init__(self, score: np.ndarray, label: np.ndarray) -> None:
        self._order = np.argsort(score, kind="stable")
        ranked = score[self._order]
        self._starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        self._pos = label[self._order].astype(np.float64)

    def __call__(self, weight: np.ndarray) -> float:
        w = weight[self._order]
        pos = np.add.reduceat(w * self._pos, self._starts)
        neg = np.add.reduceat(w * (1.0 - self._pos), self._starts)
        below = np.cumsum(neg) - neg
        denom = pos.sum() * neg.sum()
        return float(np.sum(pos * (below + 0.5 * neg)) / denom) if denom > 0 else float("nan")


def paired_bootstrap(
    results: Sequence[FoldResult],
    model: str,
    other: str,
    *,
    bucket: str = "all",
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> dict[str, Any]:
    """The mean-over-folds AUC difference ``model - other`` and its percentile interval.

    Each replicate draws, in every fold, the fold's player-seasons with replacement (the same
    draw for both models: paired), and averages the per-fold AUC differences.
    """
    rng = np.random.default_rng(seed)
    per_fold = []
    for r in results:
        mask = np.ones(len(r.label), np.bool_) if bucket == "all" else r.bucket == bucket
        cluster = r.cluster[mask]
        if not len(cluster):
            continue  # the bucket is empty in this fold: it contributes nothing
        _, cluster = np.unique(cluster, return_inverse=True)
        n_clusters = int(cluster.max()) + 1
        per_fold.append(
            (
                _SortedAuc(r.probabilities[model][mask], r.label[mask]),
                _SortedAuc(r.probabilities[other][mask], r.label[mask]),
                cluster,
                n_clusters,
            )
        )
    result: dict[str, Any] = {
        "model": model,
        "baseline": other,
        "bucket": bucket,
        "confidence": CONFIDENCE,
        "replicates": replicates,
        "unit": "player-season",
    }
    if not per_fold:
        return {**result, "auc_difference": None, "ci": [None, None]}
    point = float(np.mean([a(np.ones(len(c))) - b(np.ones(len(c))) for a, b, c, _ in per_fold]))
    draws = np.empty(replicates, np.float64)
    for i in range(replicates):
        diffs = []
        for a, b, cluster, n in per_fold:
            counts = rng.multinomial(n, np.full(n, 1.0 / n)).astype(np.float64)
            w = counts[cluster]
            diffs.append(a(w) - b(w))
        draws[i] = np.mean(diffs)
    lo, hi = np.nanpercentile(draws, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return {**result, "auc_difference": point, "ci": [float(lo), float(hi)]}


@dataclass(frozen=True, slots=True)
class Backtest:
    """A whole backtest: per-fold results, the summary and the MLP-vs-best-baseline intervals."""

    recipe: Recipe
    results: list[FoldResult]
    summary: dict[str, dict[str, dict[str, dict[str, float]]]]
    comparison: list[dict[str, Any]]
    seconds: float

    def epochs(self) -> list[int]:
        """Per ensemble member, the best epoch of the last fold: the fold fitted on the most
        rows, closest to a refit on every season (how long the hidden layers keep improving
        grows with the training rows: 0 in the small early folds). ``train``'s gate fold is
        this fold, and its refit trains for these epochs."""
        return list(self.results[-1].best_epochs)

    def as_json(self) -> dict[str, Any]:
        """The report as one JSON object."""
        return {
            "recipe": self.recipe.as_dict(),
            "folds": [
                {
                    "test_season": r.fold.test_season,
                    "validation_season": r.fold.validation_season,
                    "train_seasons": r.fold.train_seasons,
                    "long_history_seasons": [
                        r.fold.long_history_seasons[:1],
                        r.fold.long_history_seasons[-1:],
                    ],
                    "rows": r.rows,
                    "best_epochs": r.best_epochs,
                    "platt": {"scale": r.platt[0], "bias": r.platt[1]},
                    "seconds": round(r.seconds, 1),
                    "metrics": {
                        m: {b: {k: _num(v, k) for k, v in t.items()} for b, t in buckets.items()}
                        for m, buckets in r.table.items()
                    },
                }
                for r in self.results
            ],
            "summary": self.summary,
            "comparison": self.comparison,
            "refit_epochs": self.epochs(),
            "seconds": round(self.seconds, 1),
        }


def _num(v: float, key: str = "") -> float | int | None:
    if key == "n" or isinstance(v, int):
        return int(v)
    return None if v != v else round(float(v), 6)  # noqa: PLR0124 - NaN check


def run(
    recipe: Recipe,
    per_game: TrainingSet,
    long_history: TrainingSet,
    test_seasons: Sequence[int],
    *,
    baselines: bool = True,
    progress: Progress = _stderr,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> Backtest:
    """Run every fold and summarise (see the module docstring).

    Raises:
        DataError: see :func:`make_folds`.
    """
    started = time.perf_counter()
    folds = make_folds(test_seasons, per_game.seasons(), long_history.seasons())
    results = []
    for i, fold in enumerate(folds):
        results.append(
            run_fold(
                recipe,
                fold,
                per_game,
                long_history,
                baselines=baselines,
                progress=progress,
                label=f"fold {i + 1}/{len(folds)} (test {fold.test_season}) ",
            )
        )
    summary = summarise(results)
    best = best_baseline(summary)
    comparison = (
        [
            paired_bootstrap(results, "mlp", best, bucket=bucket, replicates=replicates)
            for bucket in ("all", PROGRESS_BUCKETS[0])
        ]
        if best is not None and "mlp" in summary
        else []
    )
    return Backtest(recipe, results, summary, comparison, time.perf_counter() - started)
