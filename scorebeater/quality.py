"""Quality metrics of binary probability forecasts, in pure numpy.

Shared by the offline evaluation (``scorebeater evaluate``), the promotion gate and the
daemon's validation stage, so it imports neither TensorFlow nor scikit-learn: one
definition of each metric everywhere.

Every function takes ``y_true`` (0/1 or bool, shape ``[n]``) and ``y_prob`` (P(y = 1),
shape ``[n]``) and raises ``ValueError`` when the shapes differ, a probability is outside
``[0, 1]`` or not finite, or a label is not 0/1. A metric that is undefined on the given rows
(no rows; ROC AUC with a single class) is ``nan``: callers report it, never crash on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ECE_BINS = 10
"""Equal-width probability bins of the expected calibration error and reliability diagram."""

LOG_LOSS_EPS = 1e-7
"""Probabilities are clipped to ``[eps, 1 - eps]`` in the log loss (float32 models saturate)."""

METRIC_NAMES: tuple[str, ...] = ("roc_auc", "brier", "log_loss", "ece", "accuracy", "n")


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One equal-width probability bin: ``[lower, upper)`` (the last bin includes 1.0)."""

    lower: float
    upper: float
    count: int
    mean_prob: float
    """Mean predicted probability of the rows in the bin (``nan`` when empty)."""
    frac_positive: float
    """Observed share of positives in the bin (``nan`` when empty)."""


@dataclass(frozen=True, slots=True)
class Confusion:
    """Counts of the decision ``y_prob >= threshold`` against the labels."""

    tp: int
    fp: int
    tn: int
    fn: int


def _check(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_prob, dtype=np.float64)
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"y_true and y_prob must be 1-D of equal length, got {t.shape} and {p.shape}")
    if t.dtype != np.bool_:
        if t.size and not np.all((t == 0) | (t == 1)):
            raise ValueError("y_true must hold only 0/1 labels")
        t = t.astype(np.bool_)
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("y_prob must hold finite probabilities in [0, 1]")
    return t, p


def roc_auc(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); ``nan`` with one class."""
    t, p = _check(y_true, y_prob)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    # average ranks over runs of tied scores
    ranks = np.empty(t.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], t.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def brier(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> float:
    """Mean squared difference between probability and outcome (lower is better)."""
    t, p = _check(y_true, y_prob)
    if t.size == 0:
        return math.nan
    return float(np.mean((p - t) ** 2))


def log_loss(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> float:
    """Mean negative log-likelihood in nats, probabilities clipped by ``LOG_LOSS_EPS``."""
    t, p = _check(y_true, y_prob)
    if t.size == 0:
        return math.nan
    p = np.clip(p, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return float(-np.mean(np.where(t, np.log(p), np.log1p(-p))))


def reliability_bins(
    y_true: npt.ArrayLike, y_prob: npt.ArrayLike, bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width reliability bins over ``[0, 1]`` (a probability of exactly 1.0 is in the last)."""
    t, p = _check(y_true, y_prob)
    idx = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_t = np.bincount(idx, weights=t.astype(np.float64), minlength=bins)
    out = []
    for b in range(bins):
        n = int(counts[b])
        out.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=n,
                mean_prob=float(sum_p[b] / n) if n else math.nan,
                frac_positive=float(sum_t[b] / n) if n else math.nan,
            )
        )
    return out


def ece(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, bins: int = ECE_BINS) -> float:
    """Expected calibration error: row-weighted mean |mean probability - positive share| over bins."""
    rel = reliability_bins(y_true, y_prob, bins)
    total = sum(b.count for b in rel)
    if total == 0:
        return math.nan
    return float(sum(b.count * abs(b.mean_prob - b.frac_positive) for b in rel if b.count) / total)


def confusion(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float = 0.5) -> Confusion:
    """Confusion counts of predicting positive when ``y_prob >= threshold``."""
    t, p = _check(y_true, y_prob)
    pred = p >= threshold
    return Confusion(
        tp=int(np.sum(pred & t)),
        fp=int(np.sum(pred & ~t)),
        tn=int(np.sum(~pred & ~t)),
        fn=int(np.sum(~pred & t)),
    )


def accuracy(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, threshold: float = 0.5) -> float:
    """Share of rows where ``y_prob >= threshold`` equals the label; ``nan`` without rows."""
    c = confusion(y_true, y_prob, threshold)
    n = c.tp + c.fp + c.tn + c.fn
    return (c.tp + c.tn) / n if n else math.nan


def summary(y_true: npt.ArrayLike, y_prob: npt.ArrayLike) -> dict[str, float]:
    """Every metric of ``METRIC_NAMES`` in one dict (``n`` is the row count, as a float)."""
    t, p = _check(y_true, y_prob)
    return {
        "roc_auc": roc_auc(t, p),
        "brier": brier(t, p),
        "log_loss": log_loss(t, p),
        "ece": ece(t, p),
        "accuracy": accuracy(t, p),
        "n": float(t.size),
    }
