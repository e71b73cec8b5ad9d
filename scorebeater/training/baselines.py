"""The three baselines the MLP is judged against, scored on the same rows.

- ``pace``: a fixed heuristic, nothing fitted. It projects his free throws to the season's
  end at a pace shrunk toward last season's (``PRIOR_GAMES`` team games at last season's
  rate per team game), treats the remaining makes as Poisson and returns
  P(total > previous total) by the normal approximation with a continuity correction.
- ``logistic``: scikit-learn logistic regression on the standardised derived features
  (:func:`scorebeater.training.network.derive`, the very features the MLP sees).
- ``gbt``: scikit-learn histogram gradient-boosted trees on the raw inputs plus the
  derived features.

The fitted baselines see only the training rows given to :func:`fit_baselines`, never the
evaluated seasons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import structlog
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from scorebeater.training.dataset import TrainingSet
from scorebeater.training.network import PRIOR_GAMES, derive_numpy

log = structlog.get_logger(__name__)

BASELINE_NAMES: tuple[str, ...] = ("pace", "logistic", "gbt")

GBT_PARAMS: Mapping[str, float | int] = {
    "max_iter": 150,
    "learning_rate": 0.05,
    "max_leaf_nodes": 7,
    # ~150 rows per player-season share one label: big leaves stop trees memorising players
    "min_samples_leaf": 5000,
    "l2_regularization": 1.0,
}
"""Gradient-boosting settings, chosen on the validation season (like the MLP's)."""

LOGISTIC_C = 1.0

Predictor = Callable[[TrainingSet], np.ndarray]


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return np.asarray(0.5 * (1.0 + erf(z / math.sqrt(2.0))), dtype=np.float64)


def pace_probability(ts: TrainingSet) -> np.ndarray:
    """The pace heuristic's P(beat) for every row (no fitting; see the module docstring)."""
    x = {k: v.astype(np.float64) for k, v in ts.inputs.items()}
    sg = np.maximum(x["season_games"], 1.0)
    tg = np.clip(x["team_games"], 0.0, sg)
    prev_sg = np.maximum(x["prev_season_games"], 1.0)
    rate = (x["ftm"] + PRIOR_GAMES * x["prev_ftm"] / prev_sg) / (tg + PRIOR_GAMES)
    expected_rest = rate * (sg - tg)
    margin = x["ftm"] + expected_rest - x["prev_ftm"] - 0.5
    p = _normal_cdf(margin / np.sqrt(expected_rest + 1.0))
    # once he has passed last season's total the outcome is certain
    return np.where(x["ftm"] > x["prev_ftm"], 1.0, p)


def _features(ts: TrainingSet) -> np.ndarray:
    return np.column_stack([ts.matrix(), derive_numpy(ts)])


@dataclass(frozen=True, slots=True)
class Baselines:
    """The three baselines, fitted; ``predict[name](rows)`` gives P(beat) per row."""

    predict: Mapping[str, Predictor]
    train_seasons: tuple[int, ...]


def fit_baselines(train: TrainingSet, seed: int, *, long_history_weight: float = 1.0) -> Baselines:
    """Fit the logistic and gradient-boosted baselines on ``train`` (the pace one needs nothing).

    Rows and weights are the MLP's: a long-history season-start row weighs
    ``long_history_weight``, a per-game row 1.

    Raises:
        ValueError: ``train`` is empty or has a single class.
    """
    if len(train) == 0 or train.label.min() == train.label.max():
        raise ValueError("baselines need training rows of both classes")
    y = train.label.astype(np.int64)
    derived = derive_numpy(train)
    weight = np.where(train.is_long_history(), long_history_weight, 1.0)
    logistic = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=2000))
    logistic.fit(derived, y, logisticregression__sample_weight=weight)
    gbt = HistGradientBoostingClassifier(early_stopping=False, random_state=seed, **GBT_PARAMS)
    gbt.fit(np.column_stack([train.matrix(), derived]), y, sample_weight=weight)
    log.info("training.baselines_fitted", rows=len(train), seasons=train.seasons())

    def logistic_predict(ts: TrainingSet) -> np.ndarray:
        return np.asarray(logistic.predict_proba(derive_numpy(ts))[:, 1], dtype=np.float64)

    def gbt_predict(ts: TrainingSet) -> np.ndarray:
        return np.asarray(gbt.predict_proba(_features(ts))[:, 1], dtype=np.float64)

    return Baselines(
        predict={"pace": pace_probability, "logistic": logistic_predict, "gbt": gbt_predict},
        train_seasons=tuple(train.seasons()),
    )
