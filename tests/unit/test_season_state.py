"""The feature stage's season state: its checkpoint's feature schema, and the backfill of rows
stored before the inputs added since existed."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import orjson
import pyarrow as pa

from scorebeater.inputs import INPUT_NAMES, PreviousSeasons, RunningTotals, as_of_inputs
from scorebeater.stages.season_state import UNFILLED_NO_PREVIOUS, UNFILLED_PREVIOUS_REVISED, SeasonState
from scorebeater.storage.base import (
    FEATURES_SCHEMA,
    FEATURES_SCHEMA_VERSION,
    LATE_INPUTS,
    conform_features,
    feature_hashes,
)

PREVIOUS = {
    1: PreviousSeasons(ftm=300, fta=360, games=70, minutes=2500, age=27, experience=6, season_games=82),
    2: PreviousSeasons(
        ftm=90, fta=120, games=82, minutes=None, age=None, experience=1, season_games=82, prev2_ftm=40
    ),
    3: PreviousSeasons(
        ftm=10, fta=20, games=30, minutes=400, age=33, experience=12, season_games=82, prev3_games=64
    ),
}


def derived_rows(previous: dict[int, PreviousSeasons]) -> pa.Table:
    """One row per player as the stage derives it (all 17 inputs), as of game 5."""
    records = []
    for pid, prev in previous.items():
        values = as_of_inputs(prev, RunningTotals(ftm=12, fta=15, games_with_fta=4, team_games=5), 82)
        records.append(
            {
                "player_id": pid,
                "season": 2014,
                "as_of_seq": 5,
                "as_of_game_id": "0021300005",
                "as_of_time": dt.datetime(2013, 11, 3, 6, tzinfo=dt.UTC),
                "player": f"Player {pid}",
                "team": "BOS",
                **values,
                "feature_hash": "",
            }
        )
    table = pa.Table.from_pylist(records, schema=FEATURES_SCHEMA)
    hashes = pa.array(feature_hashes(table), pa.string())
    return conform_features(
        table.set_column(table.num_columns - 1, FEATURES_SCHEMA.field("feature_hash"), hashes)
    )


def as_stored_by_version_1(rows: pa.Table) -> pa.Table:
    for name in LATE_INPUTS:
        i = rows.schema.get_field_index(name)
        rows = rows.set_column(i, FEATURES_SCHEMA.field(name), pa.nulls(rows.num_rows, pa.float32()))
    hashes = pa.array(feature_hashes(rows), pa.string())
    return rows.set_column(rows.num_columns - 1, FEATURES_SCHEMA.field("feature_hash"), hashes)


def test_the_checkpoint_records_the_feature_schema_and_an_old_one_is_version_1() -> None:
    state = SeasonState(2014, season_games=82)
    assert state.feature_schema == FEATURES_SCHEMA_VERSION
    restored = SeasonState(2014)
    restored.restore(state.checkpoint())
    assert restored.feature_schema == FEATURES_SCHEMA_VERSION
    old = orjson.loads(state.checkpoint())
    del old["feature_schema"]
    restored.restore(orjson.dumps(old))
    assert restored.feature_schema == 1


def test_backfill_derives_the_added_inputs_as_for_a_new_row() -> None:
    derived = derived_rows(PREVIOUS)
    state = SeasonState(2014, season_games=82, previous=dict(PREVIOUS))
    filled, unfilled = state.backfill(as_stored_by_version_1(derived))
    assert not unfilled
    assert filled.equals(derived)  # inputs and hashes
    # Rows that have every input are not rewritten.
    assert state.backfill(derived) == (derived.slice(0, 0), Counter())


def test_backfill_leaves_rows_it_cannot_derive_and_counts_them() -> None:
    """A player with no previous seasons now, or whose stored previous-season inputs differ
    from what they now say: filling in would make a row no derivation gives."""
    stored = as_stored_by_version_1(derived_rows(PREVIOUS))
    revised = PreviousSeasons(
        ftm=91, fta=120, games=82, minutes=None, age=None, experience=1, season_games=82
    )
    state = SeasonState(2014, season_games=82, previous={1: PREVIOUS[1], 2: revised})
    filled, unfilled = state.backfill(stored)
    assert unfilled == {UNFILLED_NO_PREVIOUS: 1, UNFILLED_PREVIOUS_REVISED: 1}
    assert filled.column("player_id").to_pylist() == [1]
    assert all(filled.column(n).null_count == 0 for n in INPUT_NAMES)
