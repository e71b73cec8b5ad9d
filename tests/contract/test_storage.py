"""The storage contract: every case runs against every backend (local files, S3 on moto, Postgres).

Each test gets a fresh, empty backend through ``open_storage`` (see ``conftest.py``) with
``batch_rows = 64``, so streaming is exercised with a few hundred rows. Cases stay to a few
commits each: moto answers a few hundred requests per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from typing import TYPE_CHECKING

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.inputs import INPUT_NAMES
from scorebeater.storage import open_storage
from scorebeater.storage.base import (
    EARLY_COLUMNS,
    FEATURE_KEY,
    FEATURES_SCHEMA,
    LATE_INPUTS,
    OUTCOME_KEY,
    OUTCOMES_SCHEMA,
    PREDICTION_KEY,
    PREDICTIONS_SCHEMA,
    TRAINING_SCHEMA,
    PredictionCache,
    Storage,
    conform,
    feature_hashes,
    upgraded_features,
)
from scorebeater.storage.objects import (
    FEATURES,
    FEATURES_LATEST,
    OUTCOMES,
    PREDICTIONS,
    Committer,
    ObjectTableStorage,
)
from tests.contract.conftest import BATCH_ROWS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Sequence

    from scorebeater.config import StorageConfig
    from scorebeater.storage.local import LocalStorage
    from scorebeater.storage.objects import ObjectInfo, ObjectSource, ObjectStore
    from scorebeater.storage.postgres import PostgresStorage
    from scorebeater.storage.s3 import S3Storage

T0 = dt.datetime(2024, 11, 1, 2, 30, tzinfo=dt.UTC)


# --- rows ------------------------------------------------------------------------------------


def features(keys: Iterable[tuple[int, int, int]], *, bump: float = 0.0) -> pa.Table:
    """Feature rows for ``(player_id, season, as_of_seq)`` keys; ``bump`` changes every input."""
    keys = list(keys)
    n = len(keys)
    player = np.array([k[0] for k in keys], dtype=np.int64)
    seq = np.array([k[2] for k in keys], dtype=np.int32)
    columns: dict[str, pa.Array] = {
        "player_id": pa.array(player),
        "season": pa.array([k[1] for k in keys], pa.int32()),
        "as_of_seq": pa.array(seq),
        "as_of_game_id": pa.array([f"00{k[1]}{k[2]:05d}" for k in keys]),
        "as_of_time": pa.array([T0 + dt.timedelta(days=int(s)) for s in seq], pa.timestamp("us", tz="UTC")),
        "player": pa.array([f"Player Ünïcode {p}" for p in player]),
        "team": pa.array(["BOS" if p % 2 else "LAL" for p in player]),
    }
    for i, name in enumerate(INPUT_NAMES):
        # Halved, so that every input stays within its bound (age and experience are the
        # narrowest: storage.base.COLUMN_BOUNDS) for the few hundred players a case writes.
        columns[name] = pa.array(((player % 97 + seq * 0.25) * 0.5 + i + bump).astype(np.float32))
    table = pa.table({**columns, "feature_hash": pa.array([""] * n)})
    hashes = pa.array(feature_hashes(table), pa.string())
    table = table.set_column(table.schema.get_field_index("feature_hash"), "feature_hash", hashes)
    return conform(table, FEATURES_SCHEMA, "test features")


def predictions(
    keys: Iterable[tuple[int, int, int, int]], *, probability: float = 0.25, role: str = "champion"
) -> pa.Table:
    keys = list(keys)
    ts = pa.timestamp("us", tz="UTC")
    table = pa.table(
        {
            "player_id": pa.array([k[0] for k in keys], pa.int64()),
            "season": pa.array([k[1] for k in keys], pa.int32()),
            "as_of_seq": pa.array([k[2] for k in keys], pa.int32()),
            "as_of_time": pa.array([T0 + dt.timedelta(days=k[2]) for k in keys], ts),
            "model_version": pa.array([k[3] for k in keys], pa.int64()),
            "probability": pa.array([probability + k[2] / 1000 for k in keys], pa.float64()),
            "feature_hash": pa.array([f"{k[0]:08x}{k[2]:08x}" for k in keys]),
            "progress": pa.array([k[2] / 82 for k in keys], pa.float32()),
            "predicted_at": pa.array([T0 + dt.timedelta(hours=k[3]) for k in keys], ts),
            "role": pa.array([role] * len(keys), pa.string()),
        }
    )
    return conform(table, PREDICTIONS_SCHEMA, "test predictions")


def outcomes(
    rows: Iterable[tuple[int, int, bool, str]], *, seq: int = 40, early_seq: int | None = None
) -> pa.Table:
    """Outcome rows resolved at game ``seq`` (at ``T0``, as every row here); an early row's
    early time is its own, a final row's is game ``early_seq`` (at ``T0``), null if not given."""
    rows = list(rows)
    ts = pa.timestamp("us", tz="UTC")
    early_at = T0
    own = [r[3] == "early" for r in rows]
    table = pa.table(
        {
            "player_id": pa.array([r[0] for r in rows], pa.int64()),
            "season": pa.array([r[1] for r in rows], pa.int32()),
            "beat": pa.array([r[2] for r in rows]),
            "resolution": pa.array([r[3] for r in rows]),
            "resolved_seq": pa.array([seq] * len(rows), pa.int32()),
            "resolved_at": pa.array([T0] * len(rows), pa.timestamp("us", tz="UTC")),
            "ftm": pa.array([300 + r[0] for r in rows], pa.int32()),
            "prev_ftm": pa.array([290] * len(rows), pa.int32()),
            "resolved_early_seq": pa.array([seq if o else early_seq for o in own], pa.int32()),
            "resolved_early_at": pa.array(
                [T0 if o else (None if early_seq is None else early_at) for o in own], ts
            ),
        }
    )
    return conform(table, OUTCOMES_SCHEMA, "test outcomes")


async def collect(batches: AsyncIterator[pa.Table], schema: pa.Schema) -> pa.Table:
    """All batches of a read, checking each against the schema and ``batch_rows``."""
    tables = []
    async for table in batches:
        assert table.schema.equals(schema), table.schema
        assert 0 < table.num_rows <= BATCH_ROWS
        tables.append(table)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def canonical(table: pa.Table, key: Sequence[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in key]).combine_chunks()


def assert_rows(actual: pa.Table, expected: pa.Table, key: Sequence[str]) -> None:
    """Exact equality of values and types, in key order."""
    assert actual.schema.equals(expected.schema)
    a, e = canonical(actual, key), canonical(expected, key)
    assert a.num_rows == e.num_rows
    assert a.equals(e), (a.slice(0, 3).to_pylist(), e.slice(0, 3).to_pylist())


def upserted(old: pa.Table, new: pa.Table, key: Sequence[str]) -> pa.Table:
    """``old`` with the rows of ``new`` replacing those with the same key."""
    tuples = set(zip(*(new.column(k).to_pylist() for k in key), strict=True))
    keep = [t not in tuples for t in zip(*(old.column(k).to_pylist() for k in key), strict=True)]
    return pa.concat_tables([old.filter(pa.array(keep, pa.bool_())), new])


def grid(players: Iterable[int], seasons: Iterable[int], seqs: Iterable[int]) -> list[tuple[int, int, int]]:
    return [(p, s, q) for s in seasons for p in players for q in seqs]


# --- the interface -----------------------------------------------------------------------------


def _static_typing_check(local: LocalStorage, s3: S3Storage, postgres: PostgresStorage) -> list[Storage]:
    """Checked by mypy only: each backend class satisfies the ``Storage`` protocol."""
    backends: list[Storage] = [local, s3, postgres]
    return backends


async def test_backend_satisfies_protocol_and_pings(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    await storage.ping()


async def test_empty_store_reads_nothing(storage: Storage) -> None:
    assert [t async for t in storage.read_feature_history()] == []
    assert [t async for t in storage.read_latest_features()] == []
    assert [t async for t in storage.read_predictions(latest_only=True)] == []
    assert [t async for t in storage.read_outcomes()] == []
    assert [t async for t in storage.export_training_set()] == []
    assert await storage.cache.get(1, ["00ff"]) == {}
    assert await storage.get_checkpoint("features") is None
    assert await storage.cache.clear() == 0
    assert await storage.quarantine.entries() == []


# --- round trips and upserts -----------------------------------------------------------------


async def test_features_round_trip_streams_in_batches(storage: Storage) -> None:
    rows = features(grid(range(1, 21), [2023, 2024], range(1, 8)))  # 280 rows
    await storage.write_features(rows)
    history = await collect(storage.read_feature_history(), FEATURES_SCHEMA)
    assert_rows(history, rows, FEATURE_KEY)
    only_2024 = await collect(storage.read_feature_history(seasons=[2024]), FEATURES_SCHEMA)
    assert_rows(only_2024, rows.filter(pc.equal(rows.column("season"), 2024)), FEATURE_KEY)
    assert (
        await collect(storage.read_feature_history(seasons=[1999]), FEATURES_SCHEMA)
        == FEATURES_SCHEMA.empty_table()
    )


async def test_features_upsert_is_idempotent_and_replaces(storage: Storage) -> None:
    first = features(grid([1, 2, 3], [2024], [1, 2]))
    await storage.write_features(first)
    await storage.write_features(first)
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), first, FEATURE_KEY)
    changed = features([(2, 2024, 2), (4, 2024, 1)], bump=10.0)
    await storage.write_features(changed)
    expected = upserted(first, changed, FEATURE_KEY)
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), expected, FEATURE_KEY)


async def test_duplicate_keys_in_one_batch_keep_the_last(storage: Storage) -> None:
    rows = pa.concat_tables([features([(1, 2024, 1)]), features([(1, 2024, 1)], bump=5.0)])
    await storage.write_features(rows)
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), rows.slice(1), FEATURE_KEY)


async def test_latest_features_per_player_and_season(storage: Storage) -> None:
    await storage.write_features(features(grid([1, 2, 3], [2023, 2024], [1, 2, 3])))
    # A late correction of an older game must not become the latest row; a newer game must.
    await storage.write_features(features([(1, 2024, 2), (2, 2024, 4)], bump=1.0))
    latest = await collect(storage.read_latest_features(), FEATURES_SCHEMA)
    expected = pa.concat_tables(
        [
            features([(p, 2023, 3) for p in (1, 2, 3)]),
            features([(1, 2024, 3), (3, 2024, 3)]),
            features([(2, 2024, 4)], bump=1.0),
        ]
    )
    assert_rows(latest, expected, FEATURE_KEY)
    filtered = await collect(
        storage.read_latest_features(season=2024, player_ids=[2, 3, 99]), FEATURES_SCHEMA
    )
    assert_rows(
        filtered,
        expected.filter(
            pc.and_(pc.equal(expected["season"], 2024), pc.is_in(expected["player_id"], pa.array([2, 3])))
        ),
        FEATURE_KEY,
    )
    assert (
        await collect(storage.read_latest_features(player_ids=[]), FEATURES_SCHEMA)
        == FEATURES_SCHEMA.empty_table()
    )


async def test_predictions_round_trip_filters_and_latest(storage: Storage) -> None:
    rows = predictions(
        [(p, s, q, v) for p in (1, 2) for s in (2023, 2024) for q in (1, 2, 3) for v in (5, 6)]
    )
    await storage.write_predictions(rows)
    await storage.write_predictions(rows)  # a rerun replaces, never duplicates
    assert_rows(await collect(storage.read_predictions(), PREDICTIONS_SCHEMA), rows, PREDICTION_KEY)
    one = await collect(storage.read_predictions(season=2024, player_id=2), PREDICTIONS_SCHEMA)
    assert_rows(
        one,
        rows.filter(pc.and_(pc.equal(rows["season"], 2024), pc.equal(rows["player_id"], 2))),
        PREDICTION_KEY,
    )
    rerun = predictions([(1, 2024, 3, 6)], probability=0.9)
    older_version_later_game = predictions([(2, 2024, 4, 5)])
    await storage.write_predictions(pa.concat_tables([rerun, older_version_later_game]))
    latest = await collect(storage.read_predictions(latest_only=True), PREDICTIONS_SCHEMA)
    expected = pa.concat_tables(
        [predictions([(1, 2023, 3, 6), (2, 2023, 3, 6)]), rerun, older_version_later_game]
    )
    assert_rows(latest, expected, PREDICTION_KEY)
    latest_one = await collect(
        storage.read_predictions(season=2024, player_id=1, latest_only=True), PREDICTIONS_SCHEMA
    )
    assert_rows(latest_one, rerun, PREDICTION_KEY)


async def test_prediction_roles_round_trip_filter_and_latest_per_role(storage: Storage) -> None:
    champion = predictions([(p, 2024, q, 5) for p in (1, 2) for q in (1, 2)])
    # The challenger (a newer version) scored the same rows, and one more game of player 1.
    challenger = predictions(
        [(p, 2024, q, 6) for p in (1, 2) for q in (1, 2)] + [(1, 2024, 3, 6)],
        probability=0.5,
        role="challenger",
    )
    await storage.write_predictions(champion)
    await storage.write_predictions(challenger)
    await storage.write_predictions(challenger)  # a rerun replaces, never duplicates
    both = pa.concat_tables([champion, challenger])
    assert_rows(await collect(storage.read_predictions(), PREDICTIONS_SCHEMA), champion, PREDICTION_KEY)
    assert_rows(
        await collect(storage.read_predictions(role="challenger"), PREDICTIONS_SCHEMA),
        challenger,
        PREDICTION_KEY,
    )
    assert_rows(await collect(storage.read_predictions(role=None), PREDICTIONS_SCHEMA), both, PREDICTION_KEY)
    # latest_only within the role: the champion's own latest, though version 6 is newer and
    # has a later game.
    latest = await collect(storage.read_predictions(latest_only=True), PREDICTIONS_SCHEMA)
    assert_rows(latest, predictions([(1, 2024, 2, 5), (2, 2024, 2, 5)]), PREDICTION_KEY)
    latest = await collect(storage.read_predictions(latest_only=True, role="challenger"), PREDICTIONS_SCHEMA)
    expected = predictions([(1, 2024, 3, 6), (2, 2024, 2, 6)], probability=0.5, role="challenger")
    assert_rows(latest, expected, PREDICTION_KEY)
    latest = await collect(storage.read_predictions(latest_only=True, role=None), PREDICTIONS_SCHEMA)
    assert_rows(latest, expected, PREDICTION_KEY)  # across roles: the highest seq, then version
    one = await collect(
        storage.read_predictions(season=2024, player_id=2, latest_only=True, role="challenger"),
        PREDICTIONS_SCHEMA,
    )
    assert_rows(one, expected.slice(1), PREDICTION_KEY)
    # A version scoring a row in the other role replaces it (the role is not in the key).
    moved = predictions([(2, 2024, 2, 6)], probability=0.5)
    await storage.write_predictions(moved)
    assert_rows(
        await collect(storage.read_predictions(player_id=2, latest_only=True), PREDICTIONS_SCHEMA),
        moved,
        PREDICTION_KEY,
    )


async def test_a_challenger_row_never_relabels_a_champion_row(storage: Storage) -> None:
    # Version 6 served as champion, was rolled back and now shadows as the canary: a refeed
    # queues the same as-of points again. The rows it served stay the champion's history.
    served = predictions([(1, 2024, q, 6) for q in (1, 2)])
    await storage.write_predictions(served)
    shadowed = predictions([(1, 2024, q, 6) for q in (1, 2, 3)], probability=0.5, role="challenger")
    await storage.write_predictions(shadowed)
    expected = pa.concat_tables([served, shadowed.slice(2)])  # the new point is the challenger's
    assert_rows(
        await collect(storage.read_predictions(role=None), PREDICTIONS_SCHEMA), expected, PREDICTION_KEY
    )
    assert_rows(await collect(storage.read_predictions(), PREDICTIONS_SCHEMA), served, PREDICTION_KEY)
    page = await storage.read_latest_predictions_page(season=2024, limit=10)
    assert page.column("as_of_seq").to_pylist() == [2]
    # Both roles of one key in one batch: the champion's wins, in either order (a fresh key each).
    for player, first in ((2, "champion"), (3, "challenger")):
        second = "challenger" if first == "champion" else "champion"
        batch = pa.concat_tables(
            [
                predictions([(player, 2024, 1, 6)], role=first),
                predictions([(player, 2024, 1, 6)], role=second),
            ]
        )
        await storage.write_predictions(batch)
        got = await collect(storage.read_predictions(player_id=player, role=None), PREDICTIONS_SCHEMA)
        assert got.column("role").to_pylist() == ["champion"], first


async def test_unknown_prediction_role_is_rejected(storage: Storage) -> None:
    with pytest.raises(StorageError, match="role must be one of"):
        await storage.write_predictions(predictions([(1, 2024, 1, 1)], role="canary"))
    assert [t async for t in storage.read_predictions(role=None)] == []
    with pytest.raises(StorageError, match="role must be one of"):
        _ = [t async for t in storage.read_predictions(role="canary")]


async def test_outcomes_final_is_never_replaced_by_early(storage: Storage) -> None:
    await storage.write_outcomes(
        outcomes([(1, 2024, True, "early"), (2, 2024, False, "final"), (3, 2024, True, "early")])
    )
    await storage.write_outcomes(
        outcomes([(1, 2024, True, "final"), (2, 2024, True, "early"), (3, 2024, True, "early")], seq=50)
    )
    got = await collect(storage.read_outcomes(), OUTCOMES_SCHEMA)
    expected = pa.concat_tables(
        [
            outcomes([(1, 2024, True, "final")], seq=50, early_seq=40),  # keeps the early time
            outcomes([(3, 2024, True, "early")], seq=50),
            outcomes([(2, 2024, False, "final")]),
        ]
    )
    assert_rows(got, expected, OUTCOME_KEY)
    # A later final replaces a final (a correction); season filter.
    await storage.write_outcomes(outcomes([(2, 2024, True, "final"), (9, 2023, False, "final")], seq=82))
    got = await collect(storage.read_outcomes(season=2024), OUTCOMES_SCHEMA)
    expected = upserted(expected, outcomes([(2, 2024, True, "final")], seq=82), OUTCOME_KEY)
    assert_rows(got, expected, OUTCOME_KEY)


async def test_outcomes_batch_with_both_resolutions_keeps_final(storage: Storage) -> None:
    final = outcomes([(1, 2024, True, "final")], seq=82)
    await storage.write_outcomes(pa.concat_tables([final, outcomes([(1, 2024, True, "early")])]))
    got = await collect(storage.read_outcomes(), OUTCOMES_SCHEMA)
    assert got.column("resolution").to_pylist() == ["final"]
    # ... and with the early row's time, as if the two had been written one after the other.
    assert_rows(got, outcomes([(1, 2024, True, "final")], seq=82, early_seq=40), OUTCOME_KEY)


async def test_final_outcome_keeps_the_early_time(storage: Storage) -> None:
    """``COALESCE(new, old)``: a final row written without an early time keeps the stored one."""
    await storage.write_outcomes(outcomes([(1, 2024, True, "early"), (2, 2023, True, "early")], seq=30))
    await storage.write_outcomes(
        outcomes([(1, 2024, True, "final"), (2, 2023, True, "final"), (3, 2024, False, "final")], seq=82)
    )
    expected = pa.concat_tables(
        [
            outcomes([(1, 2024, True, "final"), (2, 2023, True, "final")], seq=82, early_seq=30),
            outcomes([(3, 2024, False, "final")], seq=82),  # never resolved early: null
        ]
    )
    assert_rows(await collect(storage.read_outcomes(), OUTCOMES_SCHEMA), expected, OUTCOME_KEY)
    # A correction of the final row keeps it too; a late early row changes nothing.
    await storage.write_outcomes(outcomes([(1, 2024, False, "final"), (3, 2024, False, "final")], seq=82))
    await storage.write_outcomes(outcomes([(3, 2024, True, "early")], seq=50))
    expected = upserted(expected, outcomes([(1, 2024, False, "final")], seq=82, early_seq=30), OUTCOME_KEY)
    assert_rows(await collect(storage.read_outcomes(), OUTCOMES_SCHEMA), expected, OUTCOME_KEY)
    # A final row that brings its own early time keeps its own.
    await storage.write_outcomes(outcomes([(2, 2023, True, "final")], seq=82, early_seq=35))
    expected = upserted(expected, outcomes([(2, 2023, True, "final")], seq=82, early_seq=35), OUTCOME_KEY)
    assert_rows(await collect(storage.read_outcomes(), OUTCOMES_SCHEMA), expected, OUTCOME_KEY)
    # The training export carries it.
    await storage.write_features(features(grid([1, 3], [2024], [1])))
    export = (await collect(storage.export_training_set(), TRAINING_SCHEMA)).sort_by("player_id")
    assert export.column("resolved_early_seq").to_pylist() == [30, None]
    assert export.column("resolved_early_at").to_pylist() == [T0, None]


async def test_early_outcome_time_must_be_its_own(storage: Storage) -> None:
    rows = outcomes([(1, 2024, True, "early")], seq=30)
    rows = rows.set_column(
        rows.schema.get_field_index("resolved_early_seq"), "resolved_early_seq", pa.array([29], pa.int32())
    )
    with pytest.raises(StorageError, match="resolved_early_seq of an early row must equal its resolved_seq"):
        await storage.write_outcomes(rows)
    # Left null, it is filled in.
    rows = rows.set_column(
        rows.schema.get_field_index("resolved_early_seq"), "resolved_early_seq", pa.nulls(1, pa.int32())
    )
    await storage.write_outcomes(rows)
    got = await collect(storage.read_outcomes(), OUTCOMES_SCHEMA)
    assert got.column("resolved_early_seq").to_pylist() == [30]


async def test_export_training_set_joins_features_with_outcomes(storage: Storage) -> None:
    rows = features(grid([1, 2, 3], [2023, 2024], [1, 2]))
    await storage.write_features(rows)
    await storage.write_outcomes(
        outcomes([(1, 2024, True, "final"), (3, 2023, False, "early"), (7, 2024, True, "final")])
    )
    got = await collect(storage.export_training_set(), TRAINING_SCHEMA)
    labelled = []
    for player, season, beat, resolution in ((1, 2024, True, "final"), (3, 2023, False, "early")):
        part = features(grid([player], [season], [1, 2]))
        part = part.append_column(TRAINING_SCHEMA.field("beat"), pa.array([beat] * 2))
        part = part.append_column(TRAINING_SCHEMA.field("resolution"), pa.array([resolution] * 2))
        early = resolution == "early"  # resolved at game 40 (outcomes' default), at T0
        part = part.append_column(
            TRAINING_SCHEMA.field("resolved_early_seq"), pa.array([40 if early else None] * 2, pa.int32())
        )
        labelled.append(
            part.append_column(
                TRAINING_SCHEMA.field("resolved_early_at"),
                pa.array([T0 if early else None] * 2, TRAINING_SCHEMA.field("resolved_early_at").type),
            )
        )
    expected = pa.Table.from_batches(pa.concat_tables(labelled).to_batches(), schema=TRAINING_SCHEMA)
    assert_rows(got, expected, FEATURE_KEY)
    only = await collect(storage.export_training_set(seasons=[2023]), TRAINING_SCHEMA)
    assert_rows(only, expected.filter(pc.equal(expected["season"], 2023)), FEATURE_KEY)


async def test_export_streams_large_history_in_batches(storage: Storage) -> None:
    await storage.write_features(features(grid(range(1, 51), [2024], range(1, 7))))  # 300 rows
    await storage.write_outcomes(outcomes([(p, 2024, p % 2 == 0, "final") for p in range(1, 51)]))
    got = await collect(storage.export_training_set(), TRAINING_SCHEMA)
    assert got.num_rows == 300


# --- cache and checkpoints -------------------------------------------------------------------


async def test_cache_get_put_clear(storage: Storage) -> None:
    await storage.cache.put(7, {"aa": 0.25, "bb": 0.5})
    await storage.cache.put(8, {"aa": 0.75})
    await storage.cache.put(7, {"bb": 0.125, "cc": 1.0})
    assert await storage.cache.get(7, ["aa", "bb", "cc", "zz"]) == {"aa": 0.25, "bb": 0.125, "cc": 1.0}
    assert await storage.cache.get(8, ["aa", "bb"]) == {"aa": 0.75}
    assert await storage.cache.get(9, ["aa"]) == {}
    assert await storage.cache.get(7, []) == {}
    assert await storage.cache.clear() == 4
    assert await storage.cache.get(7, ["aa", "bb", "cc"]) == {}
    assert await storage.cache.get(8, ["aa"]) == {}
    await storage.cache.put(7, {"aa": 0.5})
    assert await storage.cache.get(7, ["aa"]) == {"aa": 0.5}


async def test_cache_rejects_a_model_version_that_is_not_an_int(storage: Storage) -> None:
    # A bool is an int to Python, never a model version: every backend refuses it alike.
    for version in (True, False, 1.0, "1", None):
        with pytest.raises(StorageError, match="model_version"):
            await storage.cache.put(version, {"aa": 0.5})  # type: ignore[arg-type]
        with pytest.raises(StorageError, match="model_version"):
            await storage.cache.get(version, ["aa"])  # type: ignore[arg-type]
    assert await storage.cache.clear() == 0


async def test_cache_accepts_numpy_ints_and_rejects_bad_entries(storage: Storage) -> None:
    assert isinstance(storage.cache, PredictionCache)
    assert storage.cache is storage.cache
    await storage.cache.put(np.int64(4), {"aa": 0.5})  # type: ignore[arg-type]
    assert await storage.cache.get(np.int32(4), ["aa"]) == {"aa": 0.5}  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="entries"):
        await storage.cache.put(4, {"bb": "high"})  # type: ignore[dict-item]
    assert await storage.cache.get(4, ["aa", "bb"]) == {"aa": 0.5}


async def test_cache_large_lookup(storage: Storage) -> None:
    entries = {f"{i:016x}": i / 5000 for i in range(5000)}
    await storage.cache.put(3, entries)
    wanted = [f"{i:016x}" for i in range(0, 10000, 3)]
    got = await storage.cache.get(3, wanted)
    assert got == {h: entries[h] for h in wanted if h in entries}


async def test_checkpoint_put_get_and_names(storage: Storage) -> None:
    await storage.put_checkpoint("features.2024", b"\x00\x01seq=12")
    await storage.put_checkpoint("features.2024", b"seq=13")
    assert await storage.get_checkpoint("features.2024") == b"seq=13"
    assert await storage.get_checkpoint("predictions") is None
    for bad in ("../x", "..", "a/b", "Upper", "", "x" * 65):
        with pytest.raises(StorageError, match="checkpoint name"):
            await storage.put_checkpoint(bad, b"1")
        with pytest.raises(StorageError, match="checkpoint name"):
            await storage.get_checkpoint(bad)


async def test_checkpoint_commits_with_rows(storage: Storage) -> None:
    rows = features(grid([1, 2], [2024], [1]))
    await storage.write_features(rows, checkpoint=("features", b"game-1"))
    assert await storage.get_checkpoint("features") == b"game-1"
    await storage.write_predictions(predictions([(1, 2024, 1, 1)]), checkpoint=("predictions", b"p-1"))
    await storage.write_outcomes(outcomes([(1, 2024, True, "early")]), checkpoint=("validation", b"v-1"))
    assert await storage.get_checkpoint("predictions") == b"p-1"
    assert await storage.get_checkpoint("validation") == b"v-1"
    # An empty batch still commits its checkpoint.
    await storage.write_features(features([]), checkpoint=("features", b"game-2"))
    assert await storage.get_checkpoint("features") == b"game-2"
    bad = rows.drop_columns(["team"])
    with pytest.raises(StorageError, match="team"):
        await storage.write_features(bad, checkpoint=("features", b"game-3"))
    assert await storage.get_checkpoint("features") == b"game-2"
    with pytest.raises(StorageError, match="checkpoint name"):
        await storage.write_features(features(grid([5], [2024], [1])), checkpoint=("../escape", b"x"))
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), rows, FEATURE_KEY)


# --- bad input -------------------------------------------------------------------------------


def _wrong_type(t: pa.Table) -> pa.Table:
    return t.set_column(t.schema.get_field_index("as_of_seq"), "as_of_seq", pa.array([1.5] * t.num_rows))


def _null_key(t: pa.Table) -> pa.Table:
    return t.set_column(
        t.schema.get_field_index("player_id"), "player_id", pa.array([None] * t.num_rows, pa.int64())
    )


def _extra(t: pa.Table) -> pa.Table:
    return t.append_column("surprise", pa.array([1] * t.num_rows))


@pytest.mark.parametrize(
    ("mutate", "column"),
    [
        (_wrong_type, "as_of_seq"),
        (_null_key, "player_id"),
        (_extra, "surprise"),
        (lambda t: t.drop_columns(["ftm"]), "ftm"),
    ],
    ids=["wrong-type", "null-key", "extra-column", "missing-column"],
)
async def test_schema_violation_is_rejected_and_writes_nothing(
    storage: Storage, mutate: Callable[[pa.Table], pa.Table], column: str
) -> None:
    good = features(grid([1], [2024], [1]))
    await storage.write_features(good, checkpoint=("features", b"1"))
    with pytest.raises(StorageError, match=column):
        await storage.write_features(
            mutate(features(grid([2, 3], [2024], [1]))), checkpoint=("features", b"2")
        )
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), good, FEATURE_KEY)
    assert await storage.get_checkpoint("features") == b"1"


def _set(**values: float) -> Callable[[pa.Table], pa.Table]:
    """A mutation that sets the first row's ``column=value`` pairs, after ``conform``."""

    def mutate(t: pa.Table) -> pa.Table:
        for column, value in values.items():
            cells = t.column(column).to_pylist()
            cells[0] = value
            t = t.set_column(
                t.schema.get_field_index(column), column, pa.array(cells, t.schema.field(column).type)
            )
        return t

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set(fta=2.0**63), r"column fta has 1 value\(s\) outside 0\.\.2726 \(implausible_fta.*9\.22"),
        (_set(ftm=1e6, fta=1e6), r"column ftm has 1 value\(s\) outside 0\.\.1680 \(implausible_ftm"),
        (_set(ftm=500.0), r"column ftm exceeds fta in 1 row"),
        (_set(prev_fta=float("nan")), r"column prev_fta has 1 value\(s\) that are not finite"),
        (_set(age=200.0), r"column age has 1 value\(s\) outside 0\.\.61"),
        (_set(player_id=0), r"column player_id has 1 value\(s\) outside 1\.\.9223372036854775807"),
        (_set(season=3000), r"column season has 1 value\(s\) outside 1947\.\.2100"),
        (_set(as_of_seq=-1), r"column as_of_seq has 1 value\(s\) outside 1\.\.2634"),
    ],
    ids=["fta-2^63", "ftm=fta=10^6", "ftm>fta", "nan", "age", "player-id-0", "season", "negative-seq"],
)
async def test_values_beyond_their_bounds_are_rejected_and_write_nothing(
    storage: Storage, mutate: Callable[[pa.Table], pa.Table], message: str
) -> None:
    """The last line of defence: an impossible count never reaches a model input or a label."""
    good = features(grid([1], [2024], [1]))
    await storage.write_features(good, checkpoint=("features", b"1"))
    with pytest.raises(StorageError, match=r"^features: " + message):
        await storage.write_features(
            mutate(features(grid([2, 3], [2024], [1]))), checkpoint=("features", b"2")
        )
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), good, FEATURE_KEY)
    assert await storage.get_checkpoint("features") == b"1"


async def test_outcomes_beyond_their_bounds_are_rejected(storage: Storage) -> None:
    for mutate in (_set(ftm=10**6), _set(prev_ftm=-1), _set(resolved_seq=0)):
        with pytest.raises(StorageError, match=r"^outcomes: column (ftm|prev_ftm|resolved_seq) has 1 value"):
            await storage.write_outcomes(mutate(outcomes([(1, 2024, True, "early")])))
    assert [t async for t in storage.read_outcomes()] == []


async def test_unknown_resolution_is_rejected(storage: Storage) -> None:
    with pytest.raises(StorageError, match="resolution"):
        await storage.write_outcomes(outcomes([(1, 2024, True, "maybe")]))
    assert [t async for t in storage.read_outcomes()] == []


async def test_predictions_schema_violation_names_column(storage: Storage) -> None:
    rows = predictions([(1, 2024, 1, 1)])
    rows = rows.set_column(rows.schema.get_field_index("model_version"), "model_version", pa.array(["v1"]))
    with pytest.raises(StorageError, match="model_version"):
        await storage.write_predictions(rows)


# --- feature schema versions -----------------------------------------------------------------

FEATURES_SCHEMA_V1 = pa.schema(
    [f.with_nullable(nullable=False) for f in FEATURES_SCHEMA if f.name not in LATE_INPUTS]
)
"""Feature rows as scorebeater stored them before feature schema version 2 (13 inputs)."""


def features_v1(keys: Iterable[tuple[int, int, int]]) -> pa.Table:
    """Rows of schema version 1: the inputs of version 1, hashed over them as then."""
    rows = features(keys).drop_columns(sorted(LATE_INPUTS))
    hashes = pa.array(feature_hashes(upgraded_features(rows, 1)), pa.string())
    rows = rows.set_column(rows.schema.get_field_index("feature_hash"), "feature_hash", hashes)
    return pa.Table.from_arrays(rows.columns, schema=FEATURES_SCHEMA_V1)


async def store_as_version_1(storage: Storage, config: StorageConfig, rows: pa.Table) -> None:
    """Store ``rows`` (``FEATURES_SCHEMA_V1``) as a scorebeater of feature schema version 1 did:
    segments of schema version 1 (object stores), or rows in the tables of migration 0002
    (Postgres: the columns added by 0003 stay null)."""
    if isinstance(storage, ObjectTableStorage):
        committer = Committer(storage.objects, batch_rows=BATCH_ROWS, gc_grace_s=3600.0)
        await committer.snapshot()
        old = [
            dataclasses.replace(spec, schema=FEATURES_SCHEMA_V1, schema_version=1, upgrade=None)
            for spec in (FEATURES, FEATURES_LATEST)
        ]
        await committer.write([(spec, rows) for spec in old], None)
        return
    assert config.postgres.dsn is not None
    schema = config.postgres.schema
    conn = await asyncpg.connect(config.postgres.dsn.get())
    try:
        records = [tuple(r.values()) for r in rows.to_pylist()]
        await conn.copy_records_to_table(
            "features", records=records, columns=rows.column_names, schema_name=schema
        )
        await conn.executemany(
            f'INSERT INTO "{schema}".latest_features AS l (player_id, season, as_of_seq)'  # noqa: S608 - a test-made schema name
            " VALUES ($1, $2, $3) ON CONFLICT (season, player_id)"
            " DO UPDATE SET as_of_seq = EXCLUDED.as_of_seq WHERE l.as_of_seq < EXCLUDED.as_of_seq",
            [(r["player_id"], r["season"], r["as_of_seq"]) for r in rows.to_pylist()],
        )
    finally:
        await conn.close()


async def test_rows_stored_before_schema_2_read_back_with_the_added_inputs_null(
    storage: Storage, backend_config: StorageConfig
) -> None:
    # 1. rows stored by the 13-input scorebeater, then rows of the current one in the same season
    old = features_v1(grid([1, 2, 3], [2024], [1, 2]))
    await store_as_version_1(storage, backend_config, old)
    stored = upgraded_features(old, 1)
    assert all(stored.column(n).null_count == stored.num_rows for n in LATE_INPUTS)
    # An old row keeps the hash it was stored with: the hash of the inputs it has.
    assert feature_hashes(stored) == old.column("feature_hash").to_pylist()
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), stored, FEATURE_KEY)
    # 2. a new row replaces the old one of its key (player 1, seq 2), and adds one (seq 3)
    new = features(grid([1], [2024], [2, 3]))
    assert not set(new.column("feature_hash").to_pylist()) & set(old.column("feature_hash").to_pylist())
    await storage.write_features(new)
    history = await collect(storage.read_feature_history(), FEATURES_SCHEMA)
    assert_rows(history, upserted(stored, new, FEATURE_KEY), FEATURE_KEY)
    latest = canonical(await collect(storage.read_latest_features(), FEATURES_SCHEMA), FEATURE_KEY)
    assert [(r["player_id"], r["as_of_seq"], r["prev3_ftm"] is None) for r in latest.to_pylist()] == [
        (1, 3, False),
        (2, 2, True),
        (3, 2, True),
    ]
    # 3. the training export carries them (null where the row has none)
    await storage.write_outcomes(outcomes([(1, 2024, True, "final"), (2, 2024, False, "final")]))
    export = (await collect(storage.export_training_set(), TRAINING_SCHEMA)).to_pylist()
    assert sorted((r["player_id"], r["as_of_seq"]) for r in export) == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
    ]
    lacking = sorted((r["player_id"], r["as_of_seq"]) for r in export if r["prev_season_games"] is None)
    assert lacking == [(1, 1), (2, 1), (2, 2)]


@pytest.mark.parametrize("name", sorted(LATE_INPUTS))
async def test_a_new_row_lacking_an_added_input_is_rejected(storage: Storage, name: str) -> None:
    good = features(grid([1], [2024], [1]))
    await storage.write_features(good, checkpoint=("features", b"1"))
    rows = features(grid([2, 3], [2024], [1]))
    rows = rows.set_column(
        rows.schema.get_field_index(name), rows.schema.field(name), pa.array([1.0, None], pa.float32())
    )
    with pytest.raises(StorageError, match=rf"^features: column {name} has 1 null value\(s\)"):
        await storage.write_features(rows, checkpoint=("features", b"2"))
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), good, FEATURE_KEY)
    assert await storage.get_checkpoint("features") == b"1"


# --- prediction and outcome schema versions --------------------------------------------------

PREDICTIONS_SCHEMA_V1 = pa.schema([f for f in PREDICTIONS_SCHEMA if f.name != "role"])
OUTCOMES_SCHEMA_V1 = pa.schema([f for f in OUTCOMES_SCHEMA if f.name not in EARLY_COLUMNS])
"""Rows as scorebeater stored them before prediction/outcome schema version 2."""


async def store_before_version_2(
    storage: Storage, config: StorageConfig, old_predictions: pa.Table, old_outcomes: pa.Table
) -> None:
    """Store rows as a scorebeater of prediction/outcome schema version 1 did: segments of
    schema version 1 (object stores), or rows in the tables before migration 0004 (Postgres:
    its columns are dropped, the rows inserted, and 0004 is applied again on the next open)."""
    if isinstance(storage, ObjectTableStorage):
        committer = Committer(storage.objects, batch_rows=BATCH_ROWS, gc_grace_s=3600.0)
        await committer.snapshot()
        old_p = dataclasses.replace(PREDICTIONS, schema=PREDICTIONS_SCHEMA_V1, schema_version=1, upgrade=None)
        old_o = dataclasses.replace(OUTCOMES, schema=OUTCOMES_SCHEMA_V1, schema_version=1, upgrade=None)
        await committer.write([(old_p, old_predictions), (old_o, old_outcomes)], None)
        return
    assert config.postgres.dsn is not None
    q = f'"{config.postgres.schema}"'
    conn = await asyncpg.connect(config.postgres.dsn.get())
    try:
        async with conn.transaction():
            await conn.execute(f"ALTER TABLE {q}.predictions DROP COLUMN role")
            await conn.execute(
                f"ALTER TABLE {q}.outcomes DROP COLUMN resolved_early_seq, DROP COLUMN resolved_early_at"
            )
            await conn.execute(f"DELETE FROM {q}.schema_migrations WHERE version = 4")  # noqa: S608 - a test-made schema name
        for table, rows in (("predictions", old_predictions), ("outcomes", old_outcomes)):
            await conn.copy_records_to_table(
                table,
                records=[tuple(r.values()) for r in rows.to_pylist()],
                columns=rows.column_names,
                schema_name=config.postgres.schema,
            )
    finally:
        await conn.close()


async def test_rows_stored_before_roles_and_early_times_read_back(
    storage: Storage, backend_config: StorageConfig
) -> None:
    # 1. predictions and outcomes stored by the scorebeater before roles and early times
    old_predictions = predictions([(p, 2024, q, 1) for p in (1, 2) for q in (1, 2)])
    old_outcomes = pa.concat_tables(
        [outcomes([(1, 2024, True, "early")], seq=30), outcomes([(2, 2023, False, "final")], seq=82)]
    )
    await store_before_version_2(
        storage,
        backend_config,
        pa.Table.from_arrays(old_predictions.drop_columns(["role"]).columns, schema=PREDICTIONS_SCHEMA_V1),
        pa.Table.from_arrays(
            old_outcomes.drop_columns(list(EARLY_COLUMNS)).columns, schema=OUTCOMES_SCHEMA_V1
        ),
    )
    async with open_storage(backend_config) as reopened:
        # 2. they read back as the champion's, and an early row with its own early time; the
        #    final row's was never stored (null)
        assert_rows(
            await collect(reopened.read_predictions(role=None), PREDICTIONS_SCHEMA),
            old_predictions,
            PREDICTION_KEY,
        )
        assert_rows(
            await collect(reopened.read_predictions(), PREDICTIONS_SCHEMA), old_predictions, PREDICTION_KEY
        )
        assert [t async for t in reopened.read_predictions(role="challenger")] == []
        assert_rows(await collect(reopened.read_outcomes(), OUTCOMES_SCHEMA), old_outcomes, OUTCOME_KEY)
        # 3. new rows of both roles beside them; latest per role reads across old and new rows
        new = pa.concat_tables(
            [
                predictions([(1, 2024, 3, 2)], probability=0.75),
                predictions([(1, 2024, 3, 3), (2, 2024, 1, 3)], probability=0.5, role="challenger"),
            ]
        )
        await reopened.write_predictions(new)
        latest = await collect(reopened.read_predictions(latest_only=True), PREDICTIONS_SCHEMA)
        assert_rows(latest, pa.concat_tables([new.slice(0, 1), old_predictions.slice(3)]), PREDICTION_KEY)
        latest = await collect(
            reopened.read_predictions(latest_only=True, role="challenger"), PREDICTIONS_SCHEMA
        )
        assert_rows(latest, new.slice(1), PREDICTION_KEY)
        everything = await collect(reopened.read_predictions(role=None), PREDICTIONS_SCHEMA)
        assert_rows(everything, pa.concat_tables([old_predictions, new]), PREDICTION_KEY)
        # 4. the final row replacing the old early one keeps its early time
        await reopened.write_outcomes(outcomes([(1, 2024, True, "final")], seq=82))
        expected = upserted(
            old_outcomes, outcomes([(1, 2024, True, "final")], seq=82, early_seq=30), OUTCOME_KEY
        )
        assert_rows(await collect(reopened.read_outcomes(), OUTCOMES_SCHEMA), expected, OUTCOME_KEY)
        if isinstance(reopened, ObjectTableStorage):
            # 5. compaction rewrites the old segments (with new ones) at the current schema version
            for spec in (PREDICTIONS, OUTCOMES):
                assert await reopened.compact(spec, "season=2024", everything=True)
                (merged,) = (await reopened.snapshot()).partitions(spec.name)["season=2024"]
                assert merged.schema_version == 2
            assert_rows(
                await collect(reopened.read_predictions(role=None), PREDICTIONS_SCHEMA),
                everything,
                PREDICTION_KEY,
            )
            assert_rows(await collect(reopened.read_outcomes(), OUTCOMES_SCHEMA), expected, OUTCOME_KEY)


# --- crash consistency -----------------------------------------------------------------------


async def test_cancelled_write_is_all_or_nothing_and_rerun_does_not_duplicate(storage: Storage) -> None:
    before = features(grid(range(1, 11), [2024], [1, 2]))
    await storage.write_features(before, checkpoint=("features", b"before"))
    batch = pa.concat_tables(
        [features(grid(range(1, 6), [2024], [2]), bump=3.0), features(grid(range(1, 41), [2024], [3]))]
    )
    after = upserted(before, batch, FEATURE_KEY)
    # Cancel at different moments: right away, after some loop turns, after some real time.
    for delay in (None, 0, 2, 0.002, 0.01):
        task = asyncio.create_task(storage.write_features(batch, checkpoint=("features", b"after")))
        if isinstance(delay, int):
            for _ in range(delay + 1):
                await asyncio.sleep(0)
        elif isinstance(delay, float):
            await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await storage.drain_commits()  # a commit already begun runs to its end
        history = await collect(storage.read_feature_history(), FEATURES_SCHEMA)
        checkpoint = await storage.get_checkpoint("features")
        # Never a partial batch: the old state with the old watermark, or all of the new.
        if checkpoint == b"before":
            assert_rows(history, before, FEATURE_KEY)
        else:
            assert checkpoint == b"after"
            assert_rows(history, after, FEATURE_KEY)
    await storage.write_features(batch, checkpoint=("features", b"after"))
    assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), after, FEATURE_KEY)
    latest = await collect(storage.read_latest_features(), FEATURES_SCHEMA)
    assert latest.num_rows == 40


async def test_data_survives_reopen(backend_config: StorageConfig) -> None:
    rows = features(grid([1, 2], [2024], [1, 2]))
    async with open_storage(backend_config) as storage:
        await storage.write_features(rows, checkpoint=("features", b"1"))
        await storage.cache.put(1, {"h": 0.5})
    async with open_storage(backend_config) as storage:
        assert_rows(await collect(storage.read_feature_history(), FEATURES_SCHEMA), rows, FEATURE_KEY)
        assert await storage.get_checkpoint("features") == b"1"
        assert await storage.cache.get(1, ["h"]) == {"h": 0.5}


# --- crash consistency, injected into the object store (local and S3) --------------------------


class FaultyStore:
    """An ``ObjectStore`` that fails or hangs on its n-th put, passing everything else through.

    ``landed``: the failing put reaches the inner store first (the reply is what gets lost).
    """

    def __init__(
        self, inner: ObjectStore, *, fail_at: int = 0, landed: bool = False, hang_at: int = 0
    ) -> None:
        self.inner = inner
        self.where = inner.where
        self.ranged_reads = inner.ranged_reads
        self.fail_at = fail_at
        self.landed = landed
        self.hang_at = hang_at
        self.puts = 0
        self.hanging = asyncio.Event()
        self.uploaded: list[str] = []

    async def put(self, key: str, data: bytes | ObjectSource, *, exclusive: bool = False) -> None:
        self.puts += 1
        number = self.puts
        if number == self.hang_at:
            self.hanging.set()
            await asyncio.Event().wait()
        if number == self.fail_at and not self.landed:
            raise StorageUnavailable(f"injected failure on put {number} ({key})")
        await self.inner.put(key, data, exclusive=exclusive)
        self.uploaded.append(key)
        if number == self.fail_at:
            raise StorageUnavailable(f"injected failure on put {number} ({key}) after it landed")

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def open_input(self, key: str) -> pa.NativeFile:
        return await self.inner.open_input(key)

    async def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return await self.inner.read_ranges(key, ranges)

    async def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        return await self.inner.list_prefix(prefix)

    async def delete(self, keys: Sequence[str]) -> None:
        await self.inner.delete(keys)


@pytest.mark.parametrize(("fail_at", "landed"), [(2, True), (3, False)], ids=["after-segments", "at-commit"])
async def test_write_failing_midway_leaves_previous_state(
    object_storage: ObjectTableStorage, fail_at: int, landed: bool
) -> None:
    before = features(grid([1, 2], [2024], [1]))
    await object_storage.write_features(before, checkpoint=("features", b"before"))
    inner = object_storage.objects
    faulty = FaultyStore(inner, fail_at=fail_at, landed=landed)
    object_storage.objects = faulty
    batch = features(grid([1, 2, 3], [2024], [2]))
    with pytest.raises(StorageUnavailable, match="injected"):
        await object_storage.write_features(batch, checkpoint=("features", b"after"))
    # Segments upload concurrently: the failing one landed, its sibling may have been cut short.
    assert faulty.uploaded, "the failure came after a segment was uploaded"
    assert_rows(await collect(object_storage.read_feature_history(), FEATURES_SCHEMA), before, FEATURE_KEY)
    assert await object_storage.get_checkpoint("features") == b"before"
    # Orphans are invisible, removed by garbage collection, and a rerun does not duplicate.
    object_storage.objects = inner
    assert await object_storage.collect_garbage(grace_s=0) >= len(faulty.uploaded)
    objects_left = {o.key for o in await inner.list_prefix("features/")}
    objects_left |= {o.key for o in await inner.list_prefix("features_latest/")}
    assert not objects_left & set(faulty.uploaded)
    await object_storage.write_features(batch, checkpoint=("features", b"after"))
    after = pa.concat_tables([before, batch])
    assert_rows(await collect(object_storage.read_feature_history(), FEATURES_SCHEMA), after, FEATURE_KEY)
    assert await object_storage.get_checkpoint("features") == b"after"


async def test_commit_whose_reply_is_lost_is_wholly_visible(object_storage: ObjectTableStorage) -> None:
    before = features(grid([1, 2], [2024], [1]))
    await object_storage.write_features(before)
    inner = object_storage.objects
    object_storage.objects = FaultyStore(inner, fail_at=3, landed=True)
    batch = features(grid([1, 2, 3], [2024], [2]))
    with pytest.raises(StorageUnavailable, match="after it landed"):
        await object_storage.write_features(batch, checkpoint=("features", b"after"))
    object_storage.objects = inner
    after = pa.concat_tables([before, batch])
    assert_rows(await collect(object_storage.read_feature_history(), FEATURES_SCHEMA), after, FEATURE_KEY)
    assert await object_storage.get_checkpoint("features") == b"after"
    # The caller retries (it saw an error): the rerun commits on top, without duplicates.
    await object_storage.write_features(batch, checkpoint=("features", b"after"))
    assert_rows(await collect(object_storage.read_feature_history(), FEATURES_SCHEMA), after, FEATURE_KEY)


async def test_write_cancelled_while_uploading_leaves_previous_state(
    object_storage: ObjectTableStorage,
) -> None:
    before = outcomes([(1, 2024, True, "early")])
    await object_storage.write_outcomes(before, checkpoint=("validation", b"before"))
    inner = object_storage.objects
    faulty = FaultyStore(inner, hang_at=1)
    object_storage.objects = faulty
    final = outcomes([(1, 2024, True, "final")])
    task = asyncio.create_task(object_storage.write_outcomes(final, checkpoint=("validation", b"after")))
    await faulty.hanging.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    object_storage.objects = inner
    assert_rows(await collect(object_storage.read_outcomes(), OUTCOMES_SCHEMA), before, OUTCOME_KEY)
    assert await object_storage.get_checkpoint("validation") == b"before"
    await object_storage.write_outcomes(final, checkpoint=("validation", b"after"))
    kept = outcomes([(1, 2024, True, "final")], early_seq=40)  # the early row's time
    assert_rows(await collect(object_storage.read_outcomes(), OUTCOMES_SCHEMA), kept, OUTCOME_KEY)
