"""Season-progress buckets: one rule for training, evaluation and the validation stage."""

from __future__ import annotations

import numpy as np

from scorebeater.inputs import PROGRESS_BUCKETS, progress_bucket_index, progress_buckets


def test_a_boundary_belongs_to_the_upper_bucket_except_the_end_of_the_season() -> None:
    share = np.array([0.0, 0.2499, 0.25, 0.5, 0.7499, 0.75, 1.0, 1.2, -0.1])
    assert progress_bucket_index(share).tolist() == [0, 0, 1, 2, 2, 3, 3, 3, 0]


def test_bucket_names_follow_the_share_of_team_games_played() -> None:
    team_games = np.array([0, 20, 41, 62, 82, 5])
    season_games = np.array([82, 82, 82, 82, 82, 0])
    names = progress_buckets(team_games, season_games).tolist()
    assert names == ["0-25", "0-25", "50-75", "75-100", "75-100", "0-25"]
    assert set(names) <= set(PROGRESS_BUCKETS)
