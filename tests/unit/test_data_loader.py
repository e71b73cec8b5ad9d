"""The data loader: schema checks, and bad rows rejected with a reason and counted."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scorebeater.data import FILES, GAMES, PLAYER_GAMES, SEASON_TOTALS, bundled_data_dir, load_history
from scorebeater.errors import DataError

GAMES_HEADER = "season,season_type,game_seq,game_id,date,date_estimated,away,home,away_pts,home_pts\n"
PG_HEADER = "season,season_type,game_seq,game_id,date,player_id,player,team,ftm,fta\n"
TOTALS_HEADER = (
    "season,player_id,player,age,experience,pos,team,g,gs,mp,fg,fga,fg3,fg3a,ft,fta,orb,drb,trb,ast,"
    "stl,blk,tov,pf,pts\n"
)


def _write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_bytes(gzip.compress(text.encode()))


def test_bundled_data_loads_without_rejections() -> None:
    history = load_history()
    assert len(history.season_totals) == 19_293
    assert len(history.games) == 10_246
    assert len(history.player_games) == 124_090
    assert history.report.rejected_total == 0
    assert history.report.warnings == Counter()  # no date out of schedule order
    assert history.game_seasons() == list(range(2007, 2015))


def test_bad_rows_are_rejected_with_reasons_and_counted(tmp_path: Path) -> None:
    _write(
        tmp_path,
        SEASON_TOTALS,
        TOTALS_HEADER
        + "2013,1,A B,25,3,C,BOS,80,,2000,1,1,,,100,120,,,,,,,,,300\n"
        + "2013,2,C D,25,3,C,BOS,80,,2000,1,1,,,130,120,,,,,,,,,300\n"  # ftm > fta
        + "2013,3,E F,25,3,C,BOS,-1,,2000,1,1,,,10,20,,,,,,,,,300\n"  # negative games
        + "2013,1,A B,25,3,C,BOS,80,,2000,1,1,,,100,120,,,,,,,,,300\n",
    )  # duplicate
    _write(
        tmp_path,
        GAMES,
        GAMES_HEADER
        + "2014,regular,1,100,2013-10-29,0,A,B,90,91\n"
        + "2014,regular,2,101,2013-13-29,0,A,B,90,91\n"  # bad date
        + "2014,preseason,3,102,2013-10-29,0,A,B,90,91\n",
    )  # bad season type
    _write(
        tmp_path,
        PLAYER_GAMES,
        PG_HEADER
        + "2014,regular,1,100,2013-10-29,1,A B,A,3,4\n"
        + "2014,regular,1,999,2013-10-29,1,A B,A,3,4\n"  # unknown game
        + "2014,regular,1,100,2013-10-29,3,E F,A,5,4\n"  # ftm > fta
        + "2014,regular,2,100,2013-10-29,4,G H,A,1,1\n"  # disagrees with games
        + "2014,regular,1,100,2013-10-29,,Unmatched,,1,2\n",
    )
    history = load_history(tmp_path)
    rejected = dict(history.report.rejected)
    assert rejected == {
        (SEASON_TOTALS, "ftm_gt_fta"): 1,
        (SEASON_TOTALS, "negative_count"): 1,
        (SEASON_TOTALS, "duplicate"): 1,
        (GAMES, "bad_date"): 1,
        (GAMES, "bad_season_type"): 1,
        (PLAYER_GAMES, "unknown_game"): 1,
        (PLAYER_GAMES, "ftm_gt_fta"): 1,
        (PLAYER_GAMES, "game_mismatch"): 1,
    }
    assert [t.player_id for t in history.season_totals] == [1]
    assert [pg.player_id for pg in history.player_games] == [1, None]
    assert history.report.accepted[PLAYER_GAMES] == 2
    assert any("ftm_gt_fta" in s and ":3:" in s for s in history.report.samples)


def test_missing_file_or_column_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing season_totals\.csv\.gz"):
        load_history(tmp_path)
    for name in FILES:
        (tmp_path / name).write_bytes((bundled_data_dir() / name).read_bytes())
    _write(tmp_path, GAMES, "season,game_id\n2014,1\n")
    with pytest.raises(DataError, match="missing column"):
        load_history(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_history(tmp_path / "nope")


def test_games_for_only_some_seasons(tmp_path: Path) -> None:
    full = load_history()
    for name in FILES:
        (tmp_path / name).write_bytes((bundled_data_dir() / name).read_bytes())
    lines = gzip.decompress((tmp_path / GAMES).read_bytes()).decode().splitlines(keepends=True)
    _write(tmp_path, GAMES, lines[0] + "".join(line for line in lines[1:] if line.startswith("2014,")))
    lines = gzip.decompress((tmp_path / PLAYER_GAMES).read_bytes()).decode().splitlines(keepends=True)
    _write(tmp_path, PLAYER_GAMES, lines[0] + "".join(line for line in lines[1:] if line.startswith("2014,")))
    history = load_history(tmp_path)
    assert history.game_seasons() == [2014]
    assert len(history.season_totals) == len(full.season_totals)
    assert history.report.rejected_total == 0


def test_implausible_values_are_rejected_with_reasons(tmp_path: Path) -> None:
    """Issue #11: an ``fta`` of 10^20 passed the loader, and the replay answered 500 for its game."""
    _write(
        tmp_path,
        SEASON_TOTALS,
        TOTALS_HEADER
        + "2013,1,A B,25,3,C,BOS,80,,2000,1,1,,,100,120,,,,,,,,,300\n"
        + "2013,2,C D,25,3,C,BOS,80,,2000,1,1,,,1000,3000,,,,,,,,,3000\n"  # fta > 2 x 1363
        + "2013,3,E F,25,3,C,BOS,200,,2000,1,1,,,10,20,,,,,,,,,300\n"  # g > 2 x 88
        + "2013,9000000000,G H,25,3,C,BOS,80,,2000,1,1,,,10,20,,,,,,,,,300\n"  # a derived id
        + "1900,5,I J,25,3,C,BOS,80,,2000,1,1,,,10,20,,,,,,,,,300\n"  # before the BAA
        + "2013,6,K L,25,3,C,BOS,80,,2000,1,1,,,10,20,,,,,,,,,5\n",  # pts < ft
    )
    _write(
        tmp_path,
        GAMES,
        GAMES_HEADER
        + "2014,regular,1,100,2013-10-29,0,A,B,90,91\n"
        + "2014,regular,2,\u0661\u0660\u0661,2013-10-30,0,A,B,90,91\n"  # Arabic-Indic digits
        + "2014,regular,3,102,2013-10-30,0,A,B,90,99999\n",  # team points
    )
    _write(
        tmp_path,
        PLAYER_GAMES,
        PG_HEADER
        + "2014,regular,1,100,2013-10-29,1,A B,A,3,4\n"
        + "2014,regular,1,100,2013-10-29,2,C D,A,3,99999999999999999999\n"
        + "2014,regular,1,100,2013-10-29,3,E F,B,51,51\n"
        + "2014,regular,1,100,2013-10-29,4,G H,Z,1,1\n",  # a team that did not play
    )
    history = load_history(tmp_path)
    assert dict(history.report.rejected) == {
        (SEASON_TOTALS, "implausible_fta"): 1,
        (SEASON_TOTALS, "implausible_games"): 1,
        (SEASON_TOTALS, "bad_player_id"): 1,
        (SEASON_TOTALS, "bad_season"): 1,
        (SEASON_TOTALS, "bad_pts"): 1,
        (GAMES, "bad_game_id"): 1,
        (GAMES, "implausible_pts"): 1,
        (PLAYER_GAMES, "implausible_fta"): 2,
        (PLAYER_GAMES, "unknown_team"): 1,
    }
    assert [(pg.player_id, pg.fta) for pg in history.player_games] == [(1, 4)]
    assert any(":3: implausible_fta: fta=99999999999999999999" in s for s in history.report.samples)
    assert history.report.rejections()[:2] == [
        ("data_games", "bad_game_id", 1),
        ("data_games", "implausible_pts", 1),
    ]


def test_dates_out_of_schedule_order_are_kept_and_reported(tmp_path: Path) -> None:
    """A postponed game keeps its place in the schedule: a warning, not a rejection."""
    for name in (SEASON_TOTALS, PLAYER_GAMES):
        _write(tmp_path, name, {SEASON_TOTALS: TOTALS_HEADER, PLAYER_GAMES: PG_HEADER}[name])
    _write(
        tmp_path,
        GAMES,
        GAMES_HEADER
        + "2014,regular,1,100,2013-10-29,0,A,B,90,91\n"
        + "2014,regular,2,101,2013-11-05,0,A,B,90,91\n"
        + "2014,regular,3,102,2013-11-01,0,A,B,90,91\n"  # before game 2
        + "2014,regular,4,103,2013-11-05,0,A,B,90,91\n"
        + "2015,regular,1,200,2014-10-28,0,A,B,90,91\n",  # a new season starts over
    )
    with capture_logs() as logs:
        history = load_history(tmp_path)
    assert [g.game_id for g in history.games] == ["100", "101", "102", "103", "200"]
    assert history.report.rejected_total == 0
    assert dict(history.report.warnings) == {(GAMES, "date_out_of_order"): 1}
    assert any(
        "game_seq 3 (game_id 102) on 2013-11-01 is before game_seq 2" in s for s in history.report.samples
    )
    assert [e["first"] for e in logs if e["event"] == "data.dates_out_of_order"] == [["102"]]
