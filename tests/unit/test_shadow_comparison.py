"""The champion-versus-challenger comparison's math (``stages/validation.py``): same rows,
flips at 0.5, mean absolute difference, each player's latest pair, per progress bucket."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from scorebeater import quality
from scorebeater.errors import (
    BadModelRequest,
    ModelNotFound,
    ModelUnavailable,
    StorageUnavailable,
    TFServingError,
)
from scorebeater.stages.shadow import failure_reason
from scorebeater.stages.validation import compare_on_same_rows, disagreement, shadow_report


def test_disagreement_counts_flips_at_the_threshold_and_the_mean_absolute_difference() -> None:
    champion = np.array([0.2, 0.5, 0.7, 0.49, 0.9])
    challenger = np.array([0.3, 0.49, 0.5, 0.5, 0.1])
    d = disagreement(champion, challenger)
    # 0.5 is positive (p >= 0.5, as accuracy counts it): flips at rows 1, 3 and 4.
    assert d.rows == 5
    assert d.flip_rate == pytest.approx(3 / 5)
    assert d.mean_abs_diff == pytest.approx((0.1 + 0.01 + 0.2 + 0.01 + 0.8) / 5)


def test_disagreement_of_no_rows_is_nan_and_of_unequal_rows_an_error() -> None:
    d = disagreement(np.array([]), np.array([]))
    assert d.rows == 0
    assert math.isnan(d.flip_rate)
    assert math.isnan(d.mean_abs_diff)
    with pytest.raises(ValueError, match="same rows"):
        disagreement(np.array([0.1]), np.array([0.1, 0.2]))


def test_both_versions_are_scored_on_exactly_the_same_rows_per_bucket() -> None:
    rng = np.random.default_rng(3)
    n = 400
    y = rng.random(n) < 0.4
    champion = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    challenger = np.clip(y * 0.5 + rng.random(n) * 0.5, 0, 1)
    progress = rng.random(n).astype(np.float64)
    progress[:10] = 0.1  # bucket 0-25 certainly has rows; 1.0 belongs to 75-100
    progress[10] = 1.0
    out = compare_on_same_rows(y, champion, challenger, progress)
    assert set(out) == {"all", "0-25", "25-50", "50-75", "75-100"}
    assert out["all"][0] == quality.summary(y, champion)
    assert out["all"][1] == quality.summary(y, challenger)
    mask = (progress >= 0.75) & (progress <= 1.0)
    assert out["75-100"][0]["n"] == out["75-100"][1]["n"] == mask.sum()
    assert out["75-100"][1] == quality.summary(y[mask], challenger[mask])
    assert sum(out[b][0]["n"] for b in ("0-25", "25-50", "50-75", "75-100")) == n
    assert out["all"][1]["roc_auc"] > out["all"][0]["roc_auc"]  # the challenger separates better


def test_a_bucket_without_rows_is_left_out() -> None:
    y = np.array([True, False])
    out = compare_on_same_rows(y, np.array([0.6, 0.4]), np.array([0.7, 0.3]), np.array([0.1, 0.2]))
    assert set(out) == {"all", "0-25"}


def _pairs(rows: list[tuple[int, int, int, float, float, float]]) -> pa.Table:
    player, season, seq, champion, challenger, progress = zip(*rows, strict=True)
    return pa.table(
        {
            "player_id": pa.array(player, pa.int64()),
            "season": pa.array(season, pa.int32()),
            "as_of_seq": pa.array(seq, pa.int32()),
            "champion": pa.array(champion, pa.float64()),
            "progress": pa.array(progress, pa.float32()),
            "challenger": pa.array(challenger, pa.float64()),
        }
    )


def test_the_report_joins_labels_by_player_season_and_takes_each_players_latest_pair() -> None:
    pairs = _pairs(
        [
            # player 1 (labelled beat=True): two as-of points, the later one is his latest.
            (1, 2014, 3, 0.40, 0.60, 0.2),
            (1, 2014, 9, 0.45, 0.70, 0.8),
            # player 2 (labelled beat=False)
            (2, 2014, 5, 0.30, 0.20, 0.5),
            # player 3: no final outcome yet; counts in "latest" only
            (3, 2014, 4, 0.80, 0.30, 0.4),
        ]
    )
    final = pa.table(
        {
            "player_id": pa.array([1, 2, 4], pa.int64()),
            "season": pa.array([2014, 2014, 2014], pa.int32()),
            "beat": pa.array([True, False, True]),
        }
    )
    report = shadow_report(1, 2, pairs, final)
    assert (report.champion_version, report.challenger_version) == (1, 2)
    # Labelled: the three rows of players 1 and 2 (player 4 has no predictions).
    assert report.labelled.rows == 3
    assert report.labelled.flip_rate == pytest.approx(2 / 3)  # player 1's two rows flip
    assert report.labelled.mean_abs_diff == pytest.approx((0.2 + 0.25 + 0.1) / 3)
    # Latest: one pair per player-season (1 at seq 9, 2, 3), labelled or not.
    assert report.latest.rows == 3
    assert report.latest.flip_rate == pytest.approx(2 / 3)  # players 1 and 3
    assert report.latest.mean_abs_diff == pytest.approx((0.25 + 0.1 + 0.5) / 3)
    champion, challenger = report.buckets["all"]
    assert champion["n"] == challenger["n"] == 3
    assert challenger["accuracy"] == pytest.approx(1.0)
    assert champion["accuracy"] == pytest.approx(1 / 3)
    summary = report.summary()
    assert summary["labelled_rows"] == 3
    assert summary["flip_ratio"] == {"labelled": pytest.approx(2 / 3), "latest": pytest.approx(2 / 3)}


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ModelUnavailable("tfserving", "down"), "unavailable"),
        (ModelNotFound("tfserving", "no v2"), "not_found"),
        (BadModelRequest("tfserving", "bad"), "bad_request"),
        (TFServingError("tfserving", "500"), "model_error"),
        (StorageUnavailable("gone"), "storage"),
        (RuntimeError("bug"), "other"),
    ],
)
def test_shadow_failures_are_counted_by_reason(exc: Exception, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_a_report_without_labelled_rows_still_measures_the_latest_pairs() -> None:
    pairs = _pairs([(1, 2015, 2, 0.6, 0.4, 0.1), (2, 2015, 2, 0.2, 0.3, 0.1)])
    final = pa.table(
        {
            "player_id": pa.array([], pa.int64()),
            "season": pa.array([], pa.int32()),
            "beat": pa.array([], pa.bool_()),
        }
    )
    report = shadow_report(2, 3, pairs, final)
    assert report.buckets == {}
    assert report.labelled.rows == 0
    assert report.latest.rows == 2
    assert report.latest.flip_rate == pytest.approx(0.5)
    summary = report.summary()
    assert summary["flip_ratio"] == {"labelled": None, "latest": pytest.approx(0.5)}
    assert summary["metrics"] == {}
