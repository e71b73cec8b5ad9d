"""The point-in-time training set: exact as-of values, labels, and no leakage from later games."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scorebeater.data import History, PlayerGame, load_history
from scorebeater.errors import DataError
from scorebeater.inputs import INPUT_NAMES, PreviousSeasons, RunningTotals, as_of_inputs
from scorebeater.storage.base import TRAINING_SCHEMA
from scorebeater.training.dataset import TrainingSet, build_training_set, from_arrow


@pytest.fixture(name="bundled", scope="module")
def _bundled() -> History:
    return load_history()


def reference_rows(
    history: History, season: int, as_of: date, player_ids: list[int]
) -> dict[int, dict[str, float]]:
    """Hand-computed running totals, fed to inputs.as_of_inputs: the definition, in loops."""
    totals = history.totals_by_season()
    games = [g for g in history.games if g.season == season and g.season_type == "regular"]
    per_team = Counter(t for g in games for t in (g.away, g.home))
    season_games = max(per_team.values())
    played = [g for g in games if g.date <= as_of]
    by_id = {g.game_id: g for g in games}

    def team_games(team: str) -> int:
        return sum(1 for g in played if team in (g.away, g.home))

    out = {}
    for pid in player_ids:
        mine = sorted(
            (
                p
                for p in history.player_games
                if p.season == season
                and p.season_type == "regular"
                and p.player_id == pid
                and p.date <= as_of
            ),
            key=lambda p: p.game_seq,
        )
        if not mine:
            continue
        known = [p for p in mine if p.team]
        if known:
            tg = team_games(known[-1].team)
        else:
            last = by_id[mine[-1].game_id]
            tg = max(team_games(last.away), team_games(last.home))
        prev, prev2 = totals[season - 1][pid], totals.get(season - 2, {}).get(pid)
        out[pid] = as_of_inputs(
            PreviousSeasons(
                ftm=prev.ftm,
                fta=prev.fta,
                games=prev.games,
                minutes=prev.minutes,
                age=prev.age,
                experience=prev.experience,
                prev2_ftm=prev2.ftm if prev2 else 0,
                prev2_games=prev2.games if prev2 else 0,
            ),
            RunningTotals(
                ftm=sum(p.ftm for p in mine),
                fta=sum(p.fta for p in mine),
                games_with_fta=sum(1 for p in mine if p.fta > 0),
                team_games=tg,
            ),
            season_games,
        )
    return out


def _rows_at(ts: TrainingSet, season: int, as_of_seq: int) -> dict[int, dict[str, float]]:
    idx = np.flatnonzero((ts.season == season) & (ts.as_of_seq == as_of_seq))
    return {int(ts.player_id[i]): {n: float(ts.inputs[n][i]) for n in INPUT_NAMES} for i in idx}


def test_rows_equal_as_of_inputs_on_hand_computed_totals(bundled: History) -> None:
    ts = build_training_set(bundled, [2014])
    games = sorted(
        (g for g in bundled.games if g.season == 2014 and g.season_type == "regular"),
        key=lambda g: g.game_seq,
    )
    days = sorted({g.date for g in games})
    for day in (days[0], days[40], days[-1]):
        seq = max(g.game_seq for g in games if g.date == day)
        built = _rows_at(ts, 2014, seq)
        sample = sorted(built)[::7]
        expected = reference_rows(bundled, 2014, day, sample)
        assert sorted(expected) == sample
        for pid in sample:
            # Exactly: the inputs are whole-number counts, exact in float32.
            assert built[pid] == expected[pid], pid


def test_labels_use_official_totals_and_ties_do_not_beat(bundled: History) -> None:
    ts = build_training_set(bundled, [2013])
    totals = bundled.totals_by_season()
    for pid in np.unique(ts.player_id)[:50]:
        labels = set(ts.label[ts.player_id == pid].tolist())
        assert labels == {totals[2013][int(pid)].ftm > totals[2012][int(pid)].ftm}
    assert ts.inputs["season_games"].max() == 82
    assert build_training_set(bundled, [2012]).inputs["season_games"].max() == 66
    # one row per player per game day, only once he has appeared
    keys = set(zip(ts.player_id.tolist(), ts.as_of_seq.tolist(), strict=True))
    assert len(keys) == len(ts)


def test_no_leakage_from_games_after_the_as_of_day(bundled: History) -> None:
    """Scenario: alter everything after game day k; rows as of days <= k must not change."""
    season = 2014
    games = [g for g in bundled.games if g.season == season and g.season_type == "regular"]
    days = sorted({g.date for g in games})
    cut = days[60]
    dropped = {g.game_id for g in games if g.date > cut and g.game_seq % 2}
    later = [
        PlayerGame(
            season=p.season,
            season_type=p.season_type,
            game_seq=p.game_seq,
            game_id=p.game_id,
            date=p.date,
            player_id=p.player_id,
            player=p.player,
            team="" if p.team == "LAL" else p.team,
            ftm=p.fta,
            fta=p.fta + 3,
        )
        for p in bundled.player_games
        if p.season == season and p.date > cut and p.game_id not in dropped
    ]
    altered = History(
        source="altered",
        season_totals=bundled.season_totals,
        # half the later games vanish, the rest get other box scores: only the past may matter
        games=tuple(g for g in bundled.games if g.game_id not in dropped),
        player_games=tuple(p for p in bundled.player_games if p.season != season or p.date <= cut)
        + tuple(later),
        report=bundled.report,
    )
    a = build_training_set(bundled, [season])
    b = build_training_set(altered, [season])
    seq_cut = max(g.game_seq for g in games if g.date == cut)
    ma, mb = a.as_of_seq <= seq_cut, b.as_of_seq <= seq_cut
    assert ma.sum() == mb.sum() > 10_000
    for name in INPUT_NAMES:
        if name == "season_games":
            continue  # the schedule length is known in advance; here the altered file truncated it
        np.testing.assert_array_equal(a.inputs[name][ma], b.inputs[name][mb], err_msg=name)
    np.testing.assert_array_equal(a.player_id[ma], b.player_id[mb])
    # and the rows after the cut did change (the test can fail)
    assert not np.array_equal(a.inputs["ftm"][~ma][:1000], b.inputs["ftm"][~mb][:1000])


def test_unknown_season_is_a_clear_error(bundled: History) -> None:
    with pytest.raises(DataError, match="2031"):
        build_training_set(bundled, [2031])


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_tiny_directory_team_fallback_and_skips(tmp_path: Path) -> None:
    """Scenario: a player whose team is never known counts the larger team's games; a player without
    a previous season and an unmatched row are skipped and counted."""
    _write_csv(
        tmp_path / "season_totals.csv.gz",
        ["season", "player_id", "player", "age", "experience", "team", "g", "mp", "ft", "fta", "pts"],
        [
            [2009, 1, "A", 24, 2, "AAA", 70, 2000, 100, 120, 900],
            [2010, 1, "A", 25, 3, "AAA", 3, 90, 100, 120, 300],  # pts >= ft, or the row is rejected
            [2010, 2, "B", 22, 1, "BBB", 3, 90, 5, 6, 30],
        ],
    )
    games = [
        [2010, "regular", 1, "101", "2009-11-01", 0, "AAA", "BBB", 90, 80],
        [2010, "regular", 2, "102", "2009-11-02", 0, "CCC", "AAA", 90, 80],
        [2010, "regular", 3, "103", "2009-11-03", 0, "AAA", "CCC", 90, 80],
        [2010, "playoffs", 4, "104", "2010-04-20", 0, "AAA", "CCC", 90, 80],
    ]
    _write_csv(
        tmp_path / "games.csv.gz",
        [
            "season",
            "season_type",
            "game_seq",
            "game_id",
            "date",
            "date_estimated",
            "away",
            "home",
            "away_pts",
            "home_pts",
        ],
        games,
    )
    _write_csv(
        tmp_path / "player_games.csv.gz",
        ["season", "season_type", "game_seq", "game_id", "date", "player_id", "player", "team", "ftm", "fta"],
        [
            [2010, "regular", 1, "101", "2009-11-01", 1, "A", "", 4, 5],
            [2010, "regular", 3, "103", "2009-11-03", 1, "A", "", 2, 2],
            [2010, "regular", 1, "101", "2009-11-01", 2, "B", "BBB", 1, 1],
            [2010, "regular", 2, "102", "2009-11-02", "", "X", "CCC", 1, 1],
            [2010, "playoffs", 4, "104", "2010-04-20", 1, "A", "AAA", 9, 9],
        ],
    )
    ts = build_training_set(load_history(tmp_path))
    assert ts.skipped["no_player_id"] == 1
    assert ts.skipped["no_previous_season"] == 1
    rows = {(int(p), int(s)): i for i, (p, s) in enumerate(zip(ts.player_id, ts.as_of_seq, strict=True))}
    assert sorted(rows) == [(1, 1), (1, 2), (1, 3)]
    day2 = rows[1, 2]
    # team unknown: last game 101 was AAA@BBB; AAA has played 2 by day 2, BBB 1
    assert ts.inputs["team_games"][day2] == 2
    assert ts.inputs["ftm"][day2] == 4
    assert ts.inputs["season_games"][day2] == 3  # AAA and CCC play 3 regular games; playoffs excluded
    day3 = rows[1, 3]
    assert (ts.inputs["ftm"][day3], ts.inputs["fta"][day3], ts.inputs["games_with_fta"][day3]) == (6, 7, 2)
    assert ts.inputs["experience"][day3] == 3  # his 2009 row says 2: this season is his 3rd
    assert ts.inputs["age"][day3] == 25
    assert not ts.label.any()  # 100 is not > 100: a tie does not beat


def test_from_arrow_uses_only_final_outcomes() -> None:
    n = 4
    columns: dict[str, list[object]] = {f.name: [] for f in TRAINING_SCHEMA}
    for i in range(n):
        columns["player_id"].append(i + 1)
        columns["season"].append(2015)
        columns["as_of_seq"].append(10)
        columns["as_of_game_id"].append("g10")
        columns["as_of_time"].append(0)
        columns["player"].append(f"p{i}")
        columns["team"].append("AAA")
        for name in INPUT_NAMES:
            columns[name].append(float(i))
        columns["feature_hash"].append("h")
        columns["beat"].append(i % 2 == 0)
        columns["resolution"].append("final" if i < 3 else "early")
    table = pa.Table.from_pydict(columns, schema=TRAINING_SCHEMA)
    ts = from_arrow([table.slice(0, 2), table.slice(2)])
    assert len(ts) == 3
    assert ts.skipped["not_final"] == 1
    assert ts.label.tolist() == [True, False, True]
    assert ts.inputs["ftm"].dtype == np.float32
    with pytest.raises(DataError, match="beat"):
        from_arrow([table.drop_columns(["beat"])])
