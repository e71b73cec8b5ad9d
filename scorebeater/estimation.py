"""Performance estimated before the truth arrives: confidence-based estimation (CBPE).

Final labels come only at season end. If the model is calibrated, a prediction ``p`` is
itself the probability that its label is 1, so the metrics the labels *will* give can be
estimated from the probabilities alone (NannyML's CBPE):

- **expected accuracy** at threshold 0.5 (the realized metric's, :func:`scorebeater.quality.confusion`):
  a row predicted positive (``p >= 0.5``) is right with probability ``p``, one predicted
  negative with ``1 - p``, so ``mean(max(p, 1 - p))``.
- **expected ROC AUC**: AUC is the share of (positive, negative) pairs ranked right. Row ``i``
  is a positive and row ``j`` a negative with probability ``p_i (1 - p_j)``, so over label
  draws the expected count of right pairs divided by the expected count of pairs is::

      sum_{i != j} p_i (1 - p_j) [s_i > s_j]  /  sum_{i != j} p_i (1 - p_j)

  with ties counting one half (as the realized AUC counts them) and the scores ``s`` the
  probabilities themselves. This is the ratio of expectations, not the expectation of the
  ratio: the two agree to ``O(1/n)``, well inside the sampling noise of a season's rows.
  Computed in ``O(n log n)``: sort, then cumulative sums of ``1 - p`` below each distinct score.

The estimate is only as good as the calibration: a drifted, miscalibrated model is estimated
wrongly, which is why the realized metrics are shown beside it once labels exist.
Pure numpy (the daemon imports it).
"""

from __future__ import annotations

import numpy as np

from scorebeater.inputs import PROGRESS_BUCKETS, progress_bucket_index

ESTIMATE_BUCKETS: tuple[str, ...] = ("all", *PROGRESS_BUCKETS)


def _check(prob: np.ndarray) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probabilities must be 1-D, got shape {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must be finite and within [0, 1]")
    return p


def expected_accuracy(prob: np.ndarray) -> float:
    """Expected accuracy at threshold 0.5 of calibrated probabilities; ``nan`` with no rows.

    Raises:
        ValueError: not a 1-D array of probabilities in ``[0, 1]``.
    """
    p = _check(prob)
    if p.size == 0:
        return float("nan")
    return float(np.mean(np.maximum(p, 1.0 - p)))


def expected_roc_auc(prob: np.ndarray) -> float:
    """Expected ROC AUC of calibrated probabilities (see the module docstring); ``nan`` with
    fewer than two rows or when no pair can be (positive, negative) (every ``p`` 0, or 1).

    Raises:
        ValueError: not a 1-D array of probabilities in ``[0, 1]``.
    """
    p = _check(prob)
    if p.size < 2:  # noqa: PLR2004 - a pair needs two rows
        return float("nan")
    q = 1.0 - p
    order = np.argsort(p, kind="stable")
    ps, qs = p[order], q[order]
    # Group equal scores: for each row, the negatives' weight strictly below it and at its level.
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    group_q = np.add.reduceat(qs, starts)
    below_group = np.cumsum(group_q) - group_q
    group_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, ps.size]))
    below = below_group[group_of]
    tied_others = group_q[group_of] - qs  # other rows with the same score (a row is not its own pair)
    numerator = float(np.sum(ps * (below + 0.5 * tied_others)))
    denominator = float(np.sum(ps * (q.sum() - qs)))
    if denominator <= 0.0:
        return float("nan")
    return numerator / denominator


def estimate(prob: np.ndarray) -> dict[str, float]:
    """``{"roc_auc", "accuracy", "n"}`` estimated from ``prob`` alone."""
    p = _check(prob)
    return {"roc_auc": expected_roc_auc(p), "accuracy": expected_accuracy(p), "n": float(p.size)}


def estimate_by_bucket(prob: np.ndarray, progress: np.ndarray) -> dict[str, dict[str, float]]:
    """:func:`estimate` for ``all`` and each season-progress bucket with rows; ``progress`` is
    each row's share of the team's schedule played (0..1), as stored with each prediction.

    Raises:
        ValueError: bad probabilities, or ``progress`` of another length.
    """
    p = _check(prob)
    share = np.asarray(progress, dtype=np.float64)
    if share.shape != p.shape:
        raise ValueError(f"progress has shape {share.shape}, probabilities {p.shape}")
    out = {"all": estimate(p)}
    index = progress_bucket_index(share)
    for i, bucket in enumerate(PROGRESS_BUCKETS):
        mask = index == i
        if mask.any():
            out[bucket] = estimate(p[mask])
    return out
