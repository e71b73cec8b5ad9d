"""Feature schema versions: rows stored before inputs existed, their hashes, their upgrade.

The rules (scorebeater.storage.base): version 1 had 13 inputs, version 2 added 4; a stored
row of version 1 reads back with them null and keeps the hash it was stored with; a row
written now has all 17 and hashes all 17. The object store records each segment's version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pytest

from scorebeater.config import LocalStorageConfig, StorageConfig
from scorebeater.errors import StorageError
from scorebeater.inputs import INPUT_NAMES
from scorebeater.storage.base import (
    ADDED_INPUTS,
    FEATURES_SCHEMA,
    FEATURES_SCHEMA_VERSION,
    LATE_INPUTS,
    conform,
    conform_features,
    feature_hashes,
    inputs_of_version,
    upgraded_features,
)
from scorebeater.storage.local import open_local
from scorebeater.storage.objects import FEATURES, Committer, Manifest

if TYPE_CHECKING:
    from pathlib import Path

VERSION_1_INPUTS = (
    "prev_ftm",
    "prev_fta",
    "prev_games",
    "prev_minutes",
    "prev2_ftm",
    "prev2_games",
    "experience",
    "age",
    "ftm",
    "fta",
    "games_with_fta",
    "team_games",
    "season_games",
)
"""The model's inputs before feature schema version 2, in their order then."""


def rows(n: int = 3, *, seq: int = 1) -> pa.Table:
    columns: dict[str, object] = {
        "player_id": list(range(1, n + 1)),
        "season": [2024] * n,
        "as_of_seq": [seq] * n,
        "as_of_game_id": [f"g{seq}"] * n,
        "as_of_time": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
        "player": [f"p{i}" for i in range(n)],
        "team": ["BOS"] * n,
        **{
            name: pa.array([float(i + 2 + k) for k in range(n)], pa.float32())
            for i, name in enumerate(INPUT_NAMES)
        },
        "feature_hash": [""] * n,
    }
    table = pa.table(columns)
    hashes = pa.array(feature_hashes(table))
    return conform(table.set_column(table.num_columns - 1, "feature_hash", hashes), FEATURES_SCHEMA, "test")


def version_1(table: pa.Table) -> pa.Table:
    """``table`` as the 13-input code stored it: no added inputs, hashed as then."""
    old = table.drop_columns(sorted(LATE_INPUTS))
    matrix = np.ascontiguousarray(
        np.column_stack([old.column(n).to_numpy().astype(np.float32) for n in VERSION_1_INPUTS])
    )
    hashes = [hashlib.blake2b(r.tobytes(), digest_size=8).hexdigest() for r in matrix]
    return old.set_column(old.schema.get_field_index("feature_hash"), "feature_hash", pa.array(hashes))


def test_versions_and_their_inputs() -> None:
    assert FEATURES_SCHEMA_VERSION == max(ADDED_INPUTS) == 2
    assert inputs_of_version(1) == VERSION_1_INPUTS
    assert inputs_of_version(2) == INPUT_NAMES
    assert {"prev_season_games", "prev_games_missed", "prev3_ftm", "prev3_games"} == LATE_INPUTS
    assert {f.name for f in FEATURES_SCHEMA if f.nullable} == LATE_INPUTS


def test_an_old_row_hashes_as_it_was_stored_and_never_as_a_full_row() -> None:
    new = rows()
    old = version_1(new)
    upgraded = upgraded_features(old, 1)
    assert feature_hashes(upgraded) == old.column("feature_hash").to_pylist()
    assert upgraded.column("feature_hash").to_pylist() == old.column("feature_hash").to_pylist()
    # The same 13 values with the 4 added: another hash (the cache and upserts see a change).
    assert not set(feature_hashes(new)) & set(feature_hashes(upgraded))


def test_upgraded_rows_have_the_added_inputs_null() -> None:
    old = version_1(rows())
    upgraded = upgraded_features(old, 1)
    assert upgraded.schema.equals(FEATURES_SCHEMA)
    for name in FEATURES_SCHEMA.names:
        if name in LATE_INPUTS:
            assert upgraded.column(name).null_count == upgraded.num_rows
        else:
            assert upgraded.column(name).equals(old.column(name))
    assert upgraded_features(rows(), 2).equals(rows())
    with pytest.raises(StorageError, match="schema version 3, newer"):
        upgraded_features(rows(), 3)
    with pytest.raises(StorageError, match="lack column ftm"):
        upgraded_features(old.drop_columns(["ftm"]), 1)


def test_a_row_written_now_must_have_every_input() -> None:
    """Nullable for reading old rows back; never null in a write."""
    old = upgraded_features(version_1(rows()), 1)
    assert conform(old, FEATURES_SCHEMA, "features").num_rows == 3  # the schema allows it...
    with pytest.raises(StorageError, match=r"column prev_season_games has 3 null value\(s\)"):
        conform_features(old)  # ...a write does not
    assert conform_features(rows()).equals(rows())


async def test_object_store_reads_old_segments_compacts_them_and_refuses_newer_ones(tmp_path: Path) -> None:
    # 1. a segment of schema version 1 and one of version 2 in the same partition
    old_spec = dataclasses.replace(
        FEATURES,
        schema=pa.schema(
            [f.with_nullable(nullable=False) for f in FEATURES_SCHEMA if f.name not in LATE_INPUTS]
        ),
        schema_version=1,
        upgrade=None,
    )
    old = version_1(rows(3, seq=1))
    new = rows(3, seq=2)
    cfg = StorageConfig(local=LocalStorageConfig(root=tmp_path), batch_rows=1000)
    async with open_local(cfg) as storage:
        committer = Committer(storage.objects, batch_rows=1000, gc_grace_s=3600.0)
        await committer.snapshot()
        await committer.write([(old_spec, old)], None)
        await storage.write_features(new)
        versions = [
            s.schema_version for s in (await storage.snapshot()).partitions("features")["season=2024"]
        ]
        assert versions == [1, 2]
        expected = pa.concat_tables([upgraded_features(old, 1), new])
        history = pa.concat_tables([t async for t in storage.read_feature_history()])
        assert history.equals(expected)
        # 2. compaction rewrites the old rows at the current version, nulls kept, in key order
        assert await storage.compact(FEATURES, "season=2024", everything=True)
        (merged,) = (await storage.snapshot()).partitions("features")["season=2024"]
        assert merged.schema_version == FEATURES_SCHEMA_VERSION
        history = pa.concat_tables([t async for t in storage.read_feature_history()])
        assert history.equals(expected.sort_by([("player_id", "ascending"), ("as_of_seq", "ascending")]))

        # 3. a segment of a version this code does not know is refused, naming the fix
        def newer(base: Manifest) -> Manifest:
            segments = base.partitions("features")["season=2024"]
            bumped = tuple(dataclasses.replace(s, schema_version=3) for s in segments)
            return base.with_partition("features", "season=2024", bumped)

        await committer.snapshot()
        await committer.commit(newer, "bump")
        with pytest.raises(StorageError, match=r"schema version 3.*upgrade scorebeater"):
            _ = [t async for t in storage.read_feature_history()]
