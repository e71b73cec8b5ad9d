"""The data loader: schema checks, and bad rows rejected with a reason and counted."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

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
