"""The object-store table engine's pure parts: keys, winners, segments, compaction choice, manifests."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scorebeater.storage.objects.scan as objects_scan
from scorebeater.errors import StorageError
from scorebeater.storage.objects import (
    CACHE,
    FEATURES,
    FEATURES_LATEST,
    Manifest,
    ParquetSource,
    Segment,
    check_key,
    compaction_run,
    manifest_key,
    ordered_winners,
    render,
    split_segments,
    winner_indices,
)
from tests.contract.test_storage import features, grid


@pytest.mark.parametrize(
    "key",
    ["../x", "a/../b", "/abs", "a//b", "a/./b", "", "a/", "a b", "a\\b", "features/season=1/..", "x\x00y"],
)
def test_unsafe_keys_are_rejected(key: str) -> None:
    with pytest.raises(StorageError, match="unsafe object key"):
        check_key(key)


@pytest.mark.parametrize(
    "key", ["_manifest/00000000000000000001.json", "features/season=2024/part-a-0000.parquet"]
)
def test_safe_keys_pass(key: str) -> None:
    assert check_key(key) == key


def test_winners_last_write_wins_per_key() -> None:
    keys = pa.table({"p": [1, 2, 1, 3, 2], "q": [1, 1, 1, 1, 2]})
    assert winner_indices(keys, ["p", "q"]).tolist() == [1, 2, 3, 4]


def test_winners_rank_beats_order() -> None:
    keys = pa.table({"p": [1, 1, 1, 2, 2]})
    rank = [pa.array([1, 0, 0, 0, 0], pa.int8())]  # a "final" first, "early" rows after it
    assert winner_indices(keys, ["p"], rank).tolist() == [0, 4]


def test_winners_on_strings_and_empty() -> None:
    assert winner_indices(pa.table({"h": ["b", "a", "b"]}), ["h"]).tolist() == [1, 2]
    assert winner_indices(pa.table({"h": pa.array([], pa.string())}), ["h"]).tolist() == []


@pytest.mark.parametrize(
    ("rows", "start"),
    [
        ([25] * 17, 0),  # equal small segments: merge all
        ([1_000_000, *[25] * 16], 1),  # a big base stays
        ([1_000_000, 400, *[25] * 16], 1),  # the previous merge joins the new run
        ([1000, 100, 10], 0),  # strictly shrinking: fall back to all
    ],
)
def test_compaction_run(rows: list[int], start: int) -> None:
    assert compaction_run(rows) == start


def test_manifest_round_trip_and_corruption() -> None:
    seg = Segment("features/season=2024/part-x-0000.parquet", 3, 100, "c1", {"player_id": (1, 9)})
    manifest = Manifest(7, "c1", {"features": {"season=2024": (seg,)}}, {"features": b"\x00\xff"})
    assert Manifest.from_json(manifest.to_json(), "m") == manifest
    with pytest.raises(StorageError, match="corrupt manifest"):
        Manifest.from_json(b"{not json", "m")
    bad = manifest.to_json().replace(b"features/season", b"../features/season")
    with pytest.raises(StorageError, match="unsafe object key"):
        Manifest.from_json(bad, "m")
    assert manifest_key(7) == "_manifest/00000000000000000007.json"


def test_manifest_records_each_segment_schema_version() -> None:
    """Segments name the schema version they were written at; older manifests have none: 1."""
    seg = Segment("features/season=2024/part-x-0000.parquet", 3, 100, "c1", {}, schema_version=2)
    manifest = Manifest(1, "c1", {"features": {"season=2024": (seg,)}}, {})
    doc = orjson.loads(manifest.to_json())
    assert doc["tables"]["features"]["season=2024"][0]["schema_version"] == 2
    assert Manifest.from_json(manifest.to_json(), "m") == manifest
    del doc["tables"]["features"]["season=2024"][0]["schema_version"]
    old = Manifest.from_json(orjson.dumps(doc), "m")
    assert old.partitions("features")["season=2024"][0].schema_version == 1
    doc["tables"]["features"]["season=2024"][0]["schema_version"] = "2"
    with pytest.raises(StorageError, match="corrupt manifest"):
        Manifest.from_json(orjson.dumps(doc), "m")


def test_segment_disjointness() -> None:
    a = Segment("a", 1, 1, "c1", {"player_id": (1, 5), "as_of_seq": (3, 3)})
    b = Segment("b", 1, 1, "c2", {"player_id": (1, 5), "as_of_seq": (4, 4)})
    c = Segment("c", 1, 1, "c3", {"player_id": (2, 9), "as_of_seq": (3, 9)})
    assert a.disjoint(b)
    assert not a.disjoint(c)
    assert Segment("d", 1, 1, "c1").disjoint(a)  # same commit
    assert not Segment("e", 1, 1, "c4").disjoint(a)  # no bounds: assume overlap


def _keys(table: pa.Table) -> list[tuple[int, ...]]:
    return list(zip(*(table.column(n).to_pylist() for n in table.column_names), strict=True))


def _latest_rows(triples: list[tuple[int, int, int]]) -> pa.Table:
    """``(season, player_id, as_of_seq)`` rows; ``as_of_seq`` is also the rank of FEATURES_LATEST."""
    seasons, players, seqs = zip(*triples, strict=True)
    return pa.table(
        {
            "season": pa.array(seasons, pa.int32()),
            "player_id": pa.array(players, pa.int64()),
            "as_of_seq": pa.array(seqs, pa.int32()),
        }
    )


@pytest.mark.parametrize(
    "triples",
    [
        [(2023, 1, 1), (2023, 1, 2), (2023, 2, 1), (2024, 1, 5), (2024, 1, 7)],  # ordered: fast path
        [(2024, 1, 7), (2023, 2, 1), (2023, 1, 2), (2024, 1, 5), (2023, 1, 1)],  # shuffled: sort
        [(2023, 1, 3), (2023, 1, 3), (2023, 2, 1), (2023, 2, 1)],  # ordered with duplicates
    ],
    ids=["ordered", "shuffled", "duplicates"],
)
def test_ordered_winners_match_the_sort_and_come_in_key_order(triples: list[tuple[int, int, int]]) -> None:
    table = _latest_rows(triples)
    for spec, winners in (
        (FEATURES, sorted(set(triples))),
        (FEATURES_LATEST, sorted({(s, p): (s, p, q) for s, p, q in sorted(triples)}.values())),
    ):
        got = ordered_winners(table, dataclasses.replace(spec, schema=table.schema))
        assert sorted(_keys(got)) == winners
        order = [(s, p, q) for s, p, q in _keys(got)]
        assert order == sorted(order)  # partition first, then key: segments are slices


def test_ordered_winners_ties_go_to_the_later_row() -> None:
    table = pa.table(
        {
            "season": pa.array([2024, 2024], pa.int32()),
            "player_id": pa.array([1, 1], pa.int64()),
            "as_of_seq": pa.array([3, 3], pa.int32()),
            "value": [1.0, 2.0],
        }
    )
    got = ordered_winners(table, dataclasses.replace(FEATURES, schema=table.schema))
    assert got.column("value").to_pylist() == [2.0]


def test_split_segments_cuts_partitions_into_bounded_slices() -> None:
    triples = [(2023, p, 1) for p in range(10)] + [(2024, p, 1) for p in range(3)]
    table = _latest_rows(triples)
    segments = split_segments(dataclasses.replace(FEATURES, schema=table.schema), table, max_rows=4)
    assert [(value, part.num_rows) for value, part in segments] == [
        (2023, 4),
        (2023, 4),
        (2023, 2),
        (2024, 3),
    ]
    assert [key for _, part in segments for key in _keys(part)] == sorted(triples)


def test_parquet_source_records_its_size_and_round_trips() -> None:
    table = pa.table({"feature_hash": ["a", "b"], "model_version": [1, 1], "probability": [0.5, 0.25]})
    table = table.cast(CACHE.schema)
    source = ParquetSource(table, CACHE)
    data = render(source)
    assert source.size == len(data) > 0
    assert pq.read_table(pa.BufferReader(data)).equals(table)


async def _stream(*tables: pa.Table) -> AsyncIterator[pa.Table]:
    for table in tables:
        yield table


def _keys_of(table: pa.Table) -> list[tuple[int, int]]:
    return list(
        zip(table.column("player_id").to_pylist(), table.column("as_of_seq").to_pylist(), strict=True)
    )


async def test_the_merge_keeps_the_whole_key_order_when_a_player_crosses_batches() -> None:
    # Stream a holds (1, 1) and (1, 3) in two batches; stream b holds (1, 2), (1, 4), (3, 1).
    a = _stream(features(grid([1], [2014], [1])), features(grid([1], [2014], [3])))
    b = _stream(features(grid([1], [2014], [2, 4]) + grid([3], [2014], [1])))
    merged = pa.concat_tables([t async for t in objects_scan._merged(FEATURES, [a, b])])
    assert _keys_of(merged) == [(1, 1), (1, 2), (1, 3), (1, 4), (3, 1)]


@given(
    st.lists(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 5)), max_size=12), min_size=1, max_size=4)
)
@settings(max_examples=60, deadline=None, database=None)
def test_the_merge_of_sorted_streams_is_their_sorted_union(runs: list[list[tuple[int, int]]]) -> None:
    async def go() -> list[tuple[int, int]]:
        streams = []
        for run in runs:
            keys = sorted(set(run))
            # Each stream cut into batches of up to 3 rows, as segments are read in batches.
            batches = [features([(p, 2014, q) for p, q in keys[i : i + 3]]) for i in range(0, len(keys), 3)]
            streams.append(_stream(*batches))
        return [k for t in [t async for t in objects_scan._merged(FEATURES, streams)] for k in _keys_of(t)]

    expected = sorted(k for run in runs for k in set(run))
    assert asyncio.run(go()) == expected


async def test_a_stream_out_of_key_order_is_refused() -> None:
    unsorted = _stream(features(grid([1], [2014], [2])), features(grid([1], [2014], [1])))
    with pytest.raises(objects_scan.UnsortedSegment):
        _ = [t async for t in objects_scan._merged(FEATURES, [unsorted])]
