"""Confidence-based performance estimation (scorebeater.estimation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scorebeater import quality
from scorebeater.estimation import (
    estimate,
    estimate_by_bucket,
    expected_accuracy,
    expected_roc_auc,
)


def _brute_force_auc(p: np.ndarray) -> float:
    num = den = 0.0
    for i in range(p.size):
        for j in range(p.size):
            if i != j:
                w = p[i] * (1 - p[j])
                den += w
                num += w * ((p[i] > p[j]) + 0.5 * (p[i] == p[j]))
    return num / den


def test_known_values() -> None:
    assert expected_accuracy(np.array([0.9, 0.2, 0.5])) == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    # two rows: (0.8 positive, 0.4 negative) ranked right, with weight 0.8 * 0.6; the other
    # order (0.4 positive, 0.8 negative) ranked wrong, with weight 0.4 * 0.2
    assert expected_roc_auc(np.array([0.8, 0.4])) == pytest.approx(0.48 / (0.48 + 0.08))
    assert expected_roc_auc(np.full(4, 0.3)) == pytest.approx(0.5)  # all tied
    assert math.isnan(expected_roc_auc(np.array([0.7])))
    assert math.isnan(expected_roc_auc(np.ones(3)))  # no row can be a negative
    assert math.isnan(expected_accuracy(np.array([])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_computation_equals_the_pairwise_sum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random(80)
    p[::7] = np.round(p[::7], 1)  # some ties
    assert expected_roc_auc(p) == pytest.approx(_brute_force_auc(p), rel=1e-12)


def test_the_estimate_equals_the_realized_metric_in_expectation() -> None:
    """Labels drawn from the probabilities: the mean realized AUC and accuracy over many draws
    match the estimate (the estimate's own premise: calibrated probabilities)."""
    rng = np.random.default_rng(42)
    p = rng.beta(0.8, 0.9, 2000)
    realized_auc, realized_acc = [], []
    for _ in range(300):
        y = rng.random(p.size) < p
        s = quality.summary(y, p)
        realized_auc.append(s["roc_auc"])
        realized_acc.append(s["accuracy"])
    est = estimate(p)
    # standard error of the mean over 300 draws is ~0.0005 for both
    assert np.mean(realized_auc) == pytest.approx(est["roc_auc"], abs=0.002)
    assert np.mean(realized_acc) == pytest.approx(est["accuracy"], abs=0.002)
    assert est["n"] == 2000


def test_a_miscalibrated_model_is_estimated_wrongly() -> None:
    """The estimate trusts the probabilities: overconfident ones overstate accuracy."""
    rng = np.random.default_rng(7)
    p_true = rng.uniform(0.3, 0.7, 5000)
    y = rng.random(p_true.size) < p_true
    overconfident = np.clip(0.5 + (p_true - 0.5) * 2.4, 0, 1)
    assert expected_accuracy(overconfident) > quality.summary(y, overconfident)["accuracy"] + 0.05


def test_by_bucket() -> None:
    p = np.array([0.1, 0.9, 0.6, 0.3, 0.8])
    progress = np.array([0.1, 0.2, 0.6, 0.6, 1.0])
    out = estimate_by_bucket(p, progress)
    assert set(out) == {"all", "0-25", "50-75", "75-100"}
    assert out["0-25"]["n"] == 2
    assert out["0-25"]["roc_auc"] == pytest.approx(expected_roc_auc(p[:2]))
    assert out["75-100"]["n"] == 1
    assert math.isnan(out["75-100"]["roc_auc"])
    assert out["all"]["accuracy"] == pytest.approx(expected_accuracy(p))
    with pytest.raises(ValueError, match="progress"):
        estimate_by_bucket(p, progress[:2])
    with pytest.raises(ValueError, match="within"):
        estimate(np.array([1.2]))
