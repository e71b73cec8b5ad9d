"""The pure-numpy metrics against hand-computed values and scikit-learn's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scorebeater import quality


def test_roc_auc_counts_pairs_with_ties_as_half() -> None:
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]
    # positive-negative pairs ordered right: (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3 of 4
    assert quality.roc_auc(y, p) == pytest.approx(0.75)
    assert quality.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_roc_auc_matches_sklearn_on_random_data() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.random(2000) < 0.4
    p = np.round(np.clip(y * 0.2 + rng.random(2000) * 0.8, 0, 1), 2)  # rounding makes ties
    assert quality.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_undefined_metrics_are_nan_not_errors() -> None:
    assert math.isnan(quality.roc_auc([1, 1], [0.2, 0.9]))
    summary = quality.summary(np.zeros(0), np.zeros(0))
    assert summary["n"] == 0
    assert all(math.isnan(summary[k]) for k in ("roc_auc", "brier", "log_loss", "ece", "accuracy"))


def test_brier_log_loss_accuracy_by_hand() -> None:
    y = [1, 0, 1]
    p = [0.9, 0.2, 0.4]
    assert quality.brier(y, p) == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    assert quality.log_loss(y, p) == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3)
    assert quality.accuracy(y, p) == pytest.approx(2 / 3)
    assert quality.confusion(y, p) == quality.Confusion(tp=1, fp=0, tn=1, fn=1)
    # a certain wrong answer is clipped, not infinite
    assert math.isfinite(quality.log_loss([1], [0.0]))


def test_ece_and_reliability_bins() -> None:
    y = [0, 1, 1, 1]
    p = [0.05, 0.05, 0.95, 1.0]
    bins = quality.reliability_bins(y, p)
    assert len(bins) == quality.ECE_BINS
    assert bins[0].count == 2
    assert bins[0].mean_prob == pytest.approx(0.05)
    assert bins[0].frac_positive == pytest.approx(0.5)
    assert bins[9].count == 2  # 1.0 belongs to the last bin
    assert math.isnan(bins[5].mean_prob)
    # |0.05 - 0.5| * 2/4 + |0.975 - 1| * 2/4
    assert quality.ece(y, p) == pytest.approx(0.45 * 0.5 + 0.025 * 0.5)
    assert quality.ece([0, 1], [0.0, 1.0]) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1], [0.5], "equal length"),
        ([0, 2], [0.5, 0.5], "0/1"),
        ([0, 1], [0.5, 1.5], "probabilities"),
        ([0, 1], [0.5, float("nan")], "probabilities"),
    ],
)
def test_bad_input_is_rejected(y: list[float], p: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quality.summary(y, p)


def test_quality_imports_neither_tensorflow_nor_sklearn() -> None:
    import subprocess
    import sys

    code = (
        "import sys, scorebeater.quality; "
        "print(any(m in sys.modules for m in ('tensorflow', 'sklearn', 'keras')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
