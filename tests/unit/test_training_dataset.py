"""The point-in-time training set: exact as-of values, labels, and no leakage from later games."""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scorebeater.data import Game, History, LoadReport, PlayerGame, SeasonTotal, load_history
from scorebeater.errors import DataError
from scorebeater.inputs import INPUT_NAMES, PreviousSeasons, RunningTotals, as_of_inputs
from scorebeater.storage.base import TRAINING_SCHEMA
from scorebeater.training.dataset import TrainingSet, build_long_history, build_training_set, from_arrow


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
    previous = [g for g in history.games if g.season == season - 1 and g.season_type == "regular"]
    prev_season_games = max(Counter(t for g in previous for t in (g.away, g.home)).values())
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
        prev3 = totals.get(season - 3, {}).get(pid)
        out[pid] = as_of_inputs(
            PreviousSeasons(
                ftm=prev.ftm,
                fta=prev.fta,
                games=prev.games,
                minutes=prev.minutes,
                age=prev.age,
                experience=prev.experience,
                season_games=prev_season_games,
                prev2_ftm=prev2.ftm if prev2 else 0,
                prev2_games=prev2.games if prev2 else 0,
                prev3_ftm=prev3.ftm if prev3 else 0,
                prev3_games=prev3.games if prev3 else 0,
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
        columns["resolved_early_seq"].append(None)
        columns["resolved_early_at"].append(None)
    table = pa.Table.from_pydict(columns, schema=TRAINING_SCHEMA)
    ts = from_arrow([table.slice(0, 2), table.slice(2)])
    assert len(ts) == 3
    assert ts.skipped["not_final"] == 1
    assert ts.label.tolist() == [True, False, True]
    assert ts.inputs["ftm"].dtype == np.float32
    with pytest.raises(DataError, match="beat"):
        from_arrow([table.drop_columns(["beat"])])


# --- long-history season-start rows and the previous-season inputs, on a synthetic league ----

SCHEDULE = 70
"""Games per team in the synthetic league's seasons known only from totals."""
PLAYERS = range(1, 9)


def _total(season: int, pid: int, **changes: object) -> SeasonTotal:
    games = {2: 60, 3: 72}.get(pid, SCHEDULE) if season == 2005 else SCHEDULE
    ftm = 40 + 9 * pid + (season - 2000) * (3 if pid % 2 else -2)
    if (pid, season) == (7, 2006):
        ftm = 40 + 9 * 7 + 5 * 3  # his 2005 count: a tie does not beat
    total = SeasonTotal(
        season=season,
        player_id=pid,
        player=f"P{pid}",
        age=20 + pid + season - 2000,
        experience=season - 1999,
        team="AAA" if pid % 2 else "BBB",
        games=games,
        minutes=games * (15 + pid),
        ftm=ftm,
        fta=ftm + 10 + pid,
        pts=3 * ftm + 200,
    )
    return replace(total, **changes)  # type: ignore[arg-type]


def _games(season: int, n: int, start: date) -> list[Game]:
    """``n`` regular-season games of AAA against BBB, one per day."""
    return [
        Game(
            season=season,
            season_type="regular",
            game_seq=i + 1,
            game_id=f"{season}-{i + 1}",
            date=start + timedelta(days=i),
            date_estimated=False,
            away="AAA" if i % 2 else "BBB",
            home="BBB" if i % 2 else "AAA",
            away_pts=90,
            home_pts=95,
        )
        for i in range(n)
    ]


def _league(*, prev_season_games: int | None = 66, totals: list[SeasonTotal] | None = None) -> History:
    """Eight players with totals 2000-2006 (player 5 has no 2004, player 6 no 2003); season 2006
    has three games with a box score line for every player; season 2005 has
    ``prev_season_games`` games per team in the games file (``None``: none, known only from
    totals, where six players played all 70)."""
    if totals is None:
        totals = [
            _total(s, p) for s in range(2000, 2007) for p in PLAYERS if (p, s) not in {(5, 2004), (6, 2003)}
        ]
    games = _games(2006, 3, date(2005, 11, 1))
    if prev_season_games is not None:
        games += _games(2005, prev_season_games, date(2004, 11, 1))
    player_games = [
        PlayerGame(
            season=2006,
            season_type="regular",
            game_seq=g.game_seq,
            game_id=g.game_id,
            date=g.date,
            player_id=p,
            player=f"P{p}",
            team="AAA" if p % 2 else "BBB",
            ftm=p % 3,
            fta=p % 3 + 1,
        )
        for g in games
        if g.season == 2006
        for p in PLAYERS
    ]
    return History(
        source="synthetic",
        season_totals=tuple(totals),
        games=tuple(games),
        player_games=tuple(player_games),
        report=LoadReport(),
    )


def _by_player(ts: TrainingSet, season: int) -> dict[int, dict[str, float]]:
    """The one row per player of ``season`` (long-history rows) as ``{pid: {input: value}}``."""
    idx = np.flatnonzero(ts.season == season)
    assert len(set(ts.player_id[idx].tolist())) == len(idx)
    return {int(ts.player_id[i]): {n: float(ts.inputs[n][i]) for n in INPUT_NAMES} for i in idx}


def _perturbed(history: History, season: int, **changes: object) -> History:
    """``history`` with every total of ``season`` changed (each value shifted per player)."""
    totals = []
    for t in history.season_totals:
        if t.season == season:
            values = {k: v(t) if callable(v) else v for k, v in changes.items()}
            t = replace(t, **values)  # type: ignore[arg-type]  # noqa: PLW2901
        totals.append(t)
    return replace(history, season_totals=tuple(totals))


CURRENT_SEASON_INPUTS = ("ftm", "fta", "games_with_fta", "team_games")


def test_long_history_row_uses_only_the_three_previous_seasons() -> None:
    """Scenario: change season S's totals (all but its FTM, which is the label) and S-4's; the
    rows of S must not change. Change S-3 and S-2: only prev3 / prev2 inputs move (the test can
    fail)."""
    league = _league()
    base = _by_player(build_long_history(league, [2006]), 2006)
    assert sorted(base) == list(PLAYERS)

    season_changed = _perturbed(
        league,
        2006,
        fta=lambda t: t.fta + 97,
        games=lambda t: t.games - 1 - t.player_id % 4,  # the schedule comes from the games file
        minutes=lambda t: 1,
        age=lambda t: 40,
        experience=lambda t: 19,
        team="ZZZ",
        pts=lambda t: t.pts + 500,
    )
    assert _by_player(build_long_history(season_changed, [2006]), 2006) == base
    labels = build_long_history(season_changed, [2006]).label
    np.testing.assert_array_equal(labels, build_long_history(league, [2006]).label)

    older = _perturbed(
        league, 2002, ftm=lambda t: t.ftm * 3, games=1, fta=lambda t: t.fta * 3, minutes=1, age=1
    )
    assert _by_player(build_long_history(older, [2006]), 2006) == base

    prev3_changed = _by_player(build_long_history(_perturbed(league, 2003, ftm=7, games=11), [2006]), 2006)
    prev2_changed = _by_player(build_long_history(_perturbed(league, 2004, ftm=5, games=13), [2006]), 2006)
    for pid in PLAYERS:
        moved3 = {n for n in INPUT_NAMES if prev3_changed[pid][n] != base[pid][n]}
        moved2 = {n for n in INPUT_NAMES if prev2_changed[pid][n] != base[pid][n]}
        assert moved3 == (set() if pid == 6 else {"prev3_ftm", "prev3_games"}), pid
        assert moved2 == (set() if pid == 5 else {"prev2_ftm", "prev2_games"}), pid
        if pid != 6:
            assert (prev3_changed[pid]["prev3_ftm"], prev3_changed[pid]["prev3_games"]) == (7, 11)


def test_long_history_row_starts_the_season_at_zero_with_the_seasons_label() -> None:
    league = _league()
    ts = build_long_history(league, [2006])
    assert ts.is_long_history().all()
    assert (ts.as_of_seq == 0).all()
    for name in CURRENT_SEASON_INPUTS:
        assert (ts.inputs[name] == 0).all(), name
    totals = league.totals_by_season()
    rows = _by_player(ts, 2006)
    for i, pid in enumerate(ts.player_id.tolist()):
        prev, prev2, prev3 = totals[2005][pid], totals[2004].get(pid), totals[2003].get(pid)
        assert bool(ts.label[i]) == (totals[2006][pid].ftm > prev.ftm)
        expected = {
            "prev_ftm": prev.ftm,
            "prev_fta": prev.fta,
            "prev_games": prev.games,
            "prev_minutes": prev.minutes,
            "prev_season_games": 66,  # the 2005 games file, not its totals' 70
            "prev_games_missed": max(66 - prev.games, 0),
            "prev2_ftm": prev2.ftm if prev2 else 0,
            "prev2_games": prev2.games if prev2 else 0,
            "prev3_ftm": prev3.ftm if prev3 else 0,
            "prev3_games": prev3.games if prev3 else 0,
            "experience": prev.experience + 1,
            "age": (prev.age or 0) + 1,
            "season_games": 3,  # season 2006's schedule: three games each
        }
        assert {k: rows[pid][k] for k in expected} == expected, pid
    assert not ts.label[ts.player_id == 7].any()  # a tie does not beat
    assert ts.label.any()


def test_long_history_seasons_start_at_first_and_need_previous_totals() -> None:
    league = _league()
    everything = build_long_history(league, first=2003)
    assert everything.seasons() == [2003, 2004, 2005, 2006]
    assert build_long_history(league, first=2001).seasons()[0] == 2001  # 2000 has no 1999 totals
    assert len(build_long_history(league, [])) == 0
    with pytest.raises(DataError, match="2002"):
        build_long_history(league, [2002], first=2003)  # before first: never built
    gap = _league(totals=[_total(s, p) for s in (2000, 2001, 2003) for p in PLAYERS])
    with pytest.raises(DataError, match="2003"):
        build_long_history(gap, [2003], first=2000)  # no 2002 totals
    # a season without games reads its schedule from its totals (six players played all 70)
    from_games = _by_player(build_long_history(league, [2005]), 2005)
    assert {r["season_games"] for r in from_games.values()} == {66}
    no_games = _by_player(build_long_history(_league(prev_season_games=None), [2005]), 2005)
    assert {r["season_games"] for r in no_games.values()} == {SCHEDULE}


def test_prev_season_games_from_the_games_file_else_from_totals() -> None:
    """Per-game rows of 2006: the previous season's schedule is 2005's games file (66 per team)
    when it has games, else read from 2005's totals (70: player 3's 72 after a trade is one
    player, not a schedule); games missed is the schedule minus games played, at least 0."""
    for league, schedule in (
        (_league(prev_season_games=66), 66),
        (_league(prev_season_games=None), SCHEDULE),
    ):
        ts = build_training_set(league, [2006])
        assert len(ts) == 3 * len(PLAYERS)
        assert set(ts.inputs["prev_season_games"].tolist()) == {schedule}
        prev_games = ts.inputs["prev_games"]
        np.testing.assert_array_equal(ts.inputs["prev_games_missed"], np.maximum(schedule - prev_games, 0))
        missed = {int(p): float(m) for p, m in zip(ts.player_id, ts.inputs["prev_games_missed"], strict=True)}
        assert missed[2] == schedule - 60
        assert missed[3] == 0  # 72 games: traded into more games than the schedule
    # a different 2005 games file changes exactly those two inputs
    a = build_training_set(_league(prev_season_games=66), [2006])
    b = build_training_set(_league(prev_season_games=50), [2006])
    for name in INPUT_NAMES:
        same = np.array_equal(a.inputs[name], b.inputs[name])
        assert same == (name not in {"prev_season_games", "prev_games_missed"}), name


def test_per_game_rows_take_prev3_from_three_seasons_back_only() -> None:
    league = _league()
    base = build_training_set(league, [2006])
    totals = league.totals_by_season()
    for i, pid in enumerate(base.player_id.tolist()):
        prev3 = totals[2003].get(pid)
        assert base.inputs["prev3_ftm"][i] == (prev3.ftm if prev3 else 0)
        assert base.inputs["prev3_games"][i] == (prev3.games if prev3 else 0)
    for season, moved in ((2003, {"prev3_ftm"}), (2004, {"prev2_ftm"}), (2002, set())):
        changed = build_training_set(_perturbed(league, season, ftm=lambda t: t.ftm + 1), [2006])
        differs = {n for n in INPUT_NAMES if not np.array_equal(base.inputs[n], changed.inputs[n])}
        assert differs == moved, season
