"""The plausibility bounds: their records are the bundled data's, and every boundary uses them."""

from __future__ import annotations

import csv
import gzip
import io
from typing import TYPE_CHECKING

import pytest

from scorebeater import bounds
from scorebeater.data import GAMES, PLAYER_GAMES, SEASON_TOTALS, bundled_data_dir
from scorebeater.inputs import INPUT_NAMES
from scorebeater.scoreapi.catalog import DERIVED_ID_BASE
from scorebeater.storage.base import COLUMN_BOUNDS, FEATURES_SCHEMA, OUTCOMES_SCHEMA

if TYPE_CHECKING:
    from collections.abc import Iterator


def _rows(name: str) -> Iterator[dict[str, str]]:
    # Read raw, not through the loader: the loader applies the bounds under test.
    text = gzip.decompress((bundled_data_dir() / name).read_bytes()).decode("utf-8")
    return csv.DictReader(io.StringIO(text))


def _ints(rows: list[dict[str, str]], column: str) -> list[int]:
    return [int(r[column]) for r in rows if r[column].strip()]


@pytest.fixture(name="totals", scope="module")
def _totals() -> list[dict[str, str]]:
    return list(_rows(SEASON_TOTALS))


def test_season_records_are_the_bundled_maxima(totals: list[dict[str, str]]) -> None:
    assert max(_ints(totals, "ft")) == bounds.RECORD_SEASON_FTM
    assert max(_ints(totals, "fta")) == bounds.RECORD_SEASON_FTA
    assert max(_ints(totals, "g")) == bounds.RECORD_SEASON_GAMES
    assert max(_ints(totals, "mp")) == bounds.RECORD_SEASON_MINUTES
    assert max(_ints(totals, "pts")) == bounds.RECORD_SEASON_PTS
    assert (min(_ints(totals, "age")), max(_ints(totals, "age"))) == bounds.RECORD_AGE
    assert max(_ints(totals, "experience")) == bounds.RECORD_EXPERIENCE
    record = max(totals, key=lambda r: int(r["ft"]))
    assert (record["player"], record["season"]) == ("Jerry West", "1966")
    seasons = _ints(totals, "season")
    assert (min(seasons), max(seasons)) == (bounds.SEASON.lo, 2014)


def test_game_records_are_the_bundled_maxima() -> None:
    assert max(_ints(list(_rows(PLAYER_GAMES)), "fta")) == bounds.RECORD_GAME_FTA
    games = list(_rows(GAMES))
    assert max(_ints(games, "game_seq")) == bounds.RECORD_SEASON_GAME_SEQ
    assert max(_ints(games, "home_pts") + _ints(games, "away_pts")) <= bounds.RECORD_TEAM_GAME_PTS


def test_counts_allow_twice_their_record_and_per_game_free_throws_fifty() -> None:
    assert (bounds.SEASON_FTM.hi, bounds.SEASON_FTA.hi) == (1680, 2726)
    assert (bounds.SEASON_GAMES.hi, bounds.SEASON_MINUTES.hi) == (176, 7764)
    assert (bounds.GAME_FTM.hi, bounds.GAME_FTA.hi) == (50, 50)
    assert all(b.implausible for b in (*bounds.GAME_FREE_THROWS, *bounds.SEASON_FREE_THROWS))
    assert bounds.SEASON_FTA.reason == "implausible_fta"
    assert bounds.PLAYER_ID.hi == 2**63 - 1
    assert not bounds.PLAYER_ID.implausible
    assert (2014 in bounds.SEASON, 2101 in bounds.SEASON, str(bounds.SEASON)) == (True, False, "1947..2100")


def test_data_player_ids_stay_below_the_replays_derived_ids() -> None:
    assert bounds.DATA_PLAYER_ID.hi < DERIVED_ID_BASE
    assert bounds.PLAYER_ID.hi >= DERIVED_ID_BASE + 2**32


def test_every_stored_count_has_a_bound() -> None:
    assert set(INPUT_NAMES) <= set(COLUMN_BOUNDS)
    assert {"player_id", "season", "as_of_seq"} <= set(COLUMN_BOUNDS)
    assert {"ftm", "prev_ftm", "resolved_seq"} <= set(COLUMN_BOUNDS)
    assert set(COLUMN_BOUNDS) <= set(FEATURES_SCHEMA.names) | set(OUTCOMES_SCHEMA.names)
    # A model input derived from last season's age or experience (+1; 0 where unknown).
    assert (COLUMN_BOUNDS["age"].lo, COLUMN_BOUNDS["age"].hi) == (0, bounds.AGE.hi + 1)
    assert (COLUMN_BOUNDS["experience"].lo, COLUMN_BOUNDS["experience"].hi) == (0, bounds.EXPERIENCE.hi + 1)
