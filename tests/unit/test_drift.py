"""PSI, quantile bins and the reference file format (scorebeater.drift)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scorebeater import drift
from scorebeater.inputs import INPUT_NAMES


def test_psi_known_value() -> None:
    # sum((a - e) * ln(a / e)) by hand: (0.1)ln(2) + (0)ln(1) + (-0.1)ln(0.75)... per bin
    actual = np.array([0.2, 0.3, 0.5])
    expected = np.array([0.1, 0.3, 0.6])
    want = (0.2 - 0.1) * math.log(2.0) + 0.0 + (0.5 - 0.6) * math.log(0.5 / 0.6)
    assert drift.psi(actual, expected) == pytest.approx(want)
    assert drift.psi(expected, expected) == 0.0


def test_psi_floors_empty_bins_and_is_symmetric() -> None:
    a, e = np.array([0.0, 1.0]), np.array([0.5, 0.5])
    value = drift.psi(a, e)
    assert math.isfinite(value)
    assert value == pytest.approx(drift.psi(e, a))
    want = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + 0.5 * math.log(2.0)
    assert value == pytest.approx(want)
    with pytest.raises(ValueError, match="bin counts differ"):
        drift.psi(np.ones(2) / 2, np.ones(3) / 3)


def test_quantile_edges_handle_continuous_discrete_and_degenerate_columns() -> None:
    continuous = drift.quantile_edges(np.arange(1000, dtype=float))
    assert continuous.size == 9
    assert np.all(np.diff(continuous) > 0)
    assert drift.bin_shares(np.arange(1000, dtype=float), continuous) == pytest.approx(
        np.full(10, 0.1), abs=0.002
    )
    # experience: a few integers, repeated quantiles collapse
    discrete = drift.quantile_edges(np.repeat([1.0, 2.0, 3.0], [500, 300, 200]))
    assert list(discrete) == [1.0, 2.0, 3.0]
    shares = drift.bin_shares(np.repeat([1.0, 2.0, 3.0], [500, 300, 200]), discrete)
    assert list(shares) == pytest.approx([0.0, 0.5, 0.3, 0.2])  # (-inf, 1) is empty
    # season_games: all 82
    constant = drift.quantile_edges(np.full(100, 82.0))
    assert list(constant) == [82.0]
    assert list(drift.bin_shares(np.full(5, 82.0), constant)) == [0.0, 1.0]
    assert list(drift.bin_shares(np.full(5, 66.0), constant)) == [1.0, 0.0]  # a lockout season
    assert drift.quantile_edges(np.array([np.nan])).size == 0
    # non-finite values (a null input) are left out of the shares
    assert list(drift.bin_shares(np.array([1.0, np.nan, np.inf]), np.array([2.0]))) == [1.0, 0.0]


def test_a_halved_column_drifts_past_the_alert_threshold() -> None:
    rng = np.random.default_rng(3)
    ftm = rng.gamma(2.0, 40.0, 5000).round()
    assert drift.psi_of_values(rng.gamma(2.0, 40.0, 5000).round(), ftm) < 0.05
    assert drift.psi_of_values(ftm / 2, ftm) > drift.PSI_ALERT


def _rows(n_players: int = 40, days: int = 50, season: int = 2014) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    player = np.repeat(np.arange(n_players), days)
    day = np.tile(np.arange(1, days + 1), n_players)
    values = {name: rng.normal(10, 3, player.size) for name in INPUT_NAMES}
    values["team_games"] = day.astype(float)
    values["season_games"] = np.full(player.size, float(days))
    values["ftm"] = day * rng.uniform(1, 5, player.size)
    values["probability"] = rng.uniform(0, 1, player.size)
    return {
        **values,
        "_season": np.full(player.size, season),
        "_player": player,
        "_seq": day,
    }


def _reference(rows: dict[str, np.ndarray]) -> drift.Reference:
    values = {k: v for k, v in rows.items() if not k.startswith("_")}
    return drift.build_reference(
        values,
        season=rows["_season"],
        player_id=rows["_player"],
        as_of_seq=rows["_seq"],
        meta={"rows_included": "per_game", "seasons": [2014]},
    )


def test_latest_as_of_takes_each_players_latest_row_up_to_the_point() -> None:
    season = np.array([1, 1, 1, 1, 2, 2])
    player = np.array([7, 7, 7, 8, 7, 7])
    seq = np.array([1, 2, 3, 1, 1, 2])
    share = np.array([0.1, 0.2, 0.6, 0.1, 0.3, 0.5])
    assert sorted(drift.latest_as_of(season, player, seq, share, 0.5).tolist()) == [1, 3, 5]
    assert drift.latest_as_of(season, player, seq, share, 0.05).size == 0


def test_reference_snapshots_follow_season_progress() -> None:
    rows = _rows()
    reference = _reference(rows)
    assert reference.rows == rows["ftm"].size
    assert [s.progress for s in reference.snapshots] == list(drift.SNAPSHOT_POINTS)
    assert all(s.rows == 40 for s in reference.snapshots)  # every player, at each point
    # the rows at 30% of the season compare well with the 0.3 snapshot, badly with every row
    at30 = (rows["team_games"] == 15) & (rows["_season"] == 2014)
    current = {name: rows[name][at30] for name in ("ftm", "team_games")}
    assert reference.compare(current, 0.3)["team_games"] < 0.01
    assert reference.compare(current)["team_games"] > drift.PSI_ALERT
    # the nearest snapshot wins; a tie goes to the earlier one
    assert reference.at_progress(0.34)[0] is reference.snapshots[2].shares
    assert reference.at_progress(0.0)[0] is reference.snapshots[0].shares
    # a series with no finite value (an input the daemon does not have) is not compared
    assert "age" not in reference.compare({"age": np.array([np.nan])}, 0.3)


def test_reference_file_round_trip(tmp_path: Path) -> None:
    reference = _reference(_rows())
    path = tmp_path / "7" / "assets.extra" / drift.REFERENCE_FILE
    drift.write_reference(path, reference)
    data = json.loads(path.read_text())
    assert data["format"] == drift.REFERENCE_FORMAT
    assert data["format_version"] == drift.REFERENCE_VERSION
    assert data["rows_included"] == "per_game"
    assert set(data["series"]) == {*INPUT_NAMES, "probability"}
    back = drift.read_reference(tmp_path / "7")
    assert back is not None
    assert back.rows == reference.rows
    assert back.meta == {"rows_included": "per_game", "seasons": [2014]}
    for name in reference.edges:
        np.testing.assert_allclose(back.edges[name], reference.edges[name], rtol=1e-7)
        np.testing.assert_allclose(back.shares[name], reference.shares[name], atol=1e-8)
    assert len(back.snapshots) == len(reference.snapshots)
    np.testing.assert_allclose(
        back.snapshots[4].shares["ftm"], reference.snapshots[4].shares["ftm"], atol=1e-8
    )


def test_missing_and_malformed_references(tmp_path: Path) -> None:
    assert drift.read_reference(tmp_path / "1") is None
    extra = tmp_path / "2" / "assets.extra"
    extra.mkdir(parents=True)
    (extra / drift.REFERENCE_FILE).write_text("{not json")
    with pytest.raises(drift.ReferenceFileError, match="unreadable"):
        drift.read_reference(tmp_path / "2")
    (extra / drift.REFERENCE_FILE).write_text(
        json.dumps({"format": drift.REFERENCE_FORMAT, "format_version": 99})
    )
    with pytest.raises(drift.ReferenceFileError, match="format_version"):
        drift.read_reference(tmp_path / "2")
    bad = {
        "format": drift.REFERENCE_FORMAT,
        "format_version": 1,
        "rows": 3,
        "series": {"ftm": {"edges": [1.0], "shares": [1.0]}},
    }
    (extra / drift.REFERENCE_FILE).write_text(json.dumps(bad))
    with pytest.raises(drift.ReferenceFileError, match="1 shares for 1 edges"):
        drift.read_reference(tmp_path / "2")


def test_the_published_models_carry_a_reference() -> None:
    """model/score_beater/1 and 2 had their references added after export (same code)."""
    base = Path(__file__).resolve().parents[2] / "model" / "score_beater"
    for version in (1, 2):
        assert (base / str(version)).is_dir(), f"model/score_beater/{version} is missing"
        reference = drift.read_reference(base / str(version))
        assert reference is not None, version
        assert reference.meta["model_version"] == version
        assert reference.meta["added_after_export"] is True
        assert reference.meta["long_history_rows_included"] is False
        assert set(reference.edges) == {*INPUT_NAMES, "probability"}
        assert reference.rows > 100_000
