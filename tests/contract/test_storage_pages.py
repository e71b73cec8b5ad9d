"""The storage contract of ordered prediction pages (``read_latest_predictions_page``) and of
outcomes by player ids, on every backend; on the object stores also pages that cross row
groups and segments that overlap (the page reads only the row groups of its id range)."""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import scorebeater.storage.objects.commit as objects_commit
import scorebeater.storage.objects.scan as objects_scan
import scorebeater.storage.objects.store as objects_store
from scorebeater.config import StorageConfig
from scorebeater.errors import StorageError
from scorebeater.storage import open_storage
from scorebeater.storage.base import (
    EARLY_COLUMNS,
    FEATURES_SCHEMA,
    OUTCOMES_SCHEMA,
    PAGE_PLAYER_COLUMNS,
    PAGE_SCHEMA,
    PREDICTIONS_SCHEMA,
    Storage,
)
from scorebeater.storage.objects import ObjectTableStorage
from scorebeater.storage.objects.tables import PREDICTIONS
from tests.contract.conftest import BATCH_ROWS
from tests.contract.test_storage import (
    OUTCOMES_SCHEMA_V1,
    PREDICTIONS_SCHEMA_V1,
    collect,
    features,
    features_v1,
    grid,
    outcomes,
    predictions,
    store_as_version_1,
    store_before_version_2,
)
from tests.services.storage import config_for

SEASON = 2014
PLAYERS = list(range(3, 3 * 90, 3))
"""89 players, ids 3 apart (so a page may start between two ids)."""


def _keys(player: int) -> list[tuple[int, int, int, int]]:
    """Most players: seqs 1..3 (version 1), some a second version at seq 3, some only seq 2."""
    if player % 7 == 0:
        return [(player, SEASON, 2, 1)]
    keys = [(player, SEASON, s, 1) for s in (1, 2, 3)]
    if player % 5 == 0:
        keys.append((player, SEASON, 3, 2))
    return keys


async def _write(storage: Storage) -> None:
    rows = predictions([k for p in PLAYERS for k in _keys(p)])
    await storage.write_predictions(rows)
    await storage.write_predictions(predictions([(p, SEASON + 1, 1, 1) for p in PLAYERS]))  # another season
    await storage.write_predictions(predictions([(p, SEASON, 4, 9) for p in PLAYERS[:10]], role="challenger"))


def _previous(player: int) -> float | None:
    """predictions() gives probability 0.25 + seq / 1000: the previous point is his seq 2."""
    return None if player % 7 == 0 else 0.25 + 2 / 1000


async def _pages(storage: Storage, limit: int, role: str = "champion") -> list[pa.Table]:
    pages: list[pa.Table] = []
    after = None
    while True:
        page = await storage.read_latest_predictions_page(
            season=SEASON, after_player_id=after, limit=limit, role=role
        )
        assert page.schema.equals(PAGE_SCHEMA)
        pages.append(page)
        if page.num_rows < limit:
            return pages
        after = page.column("player_id")[-1].as_py()


@pytest.mark.parametrize("limit", [1, 7, 89, 1000])
async def test_pages_cover_every_players_latest_row_once_in_order(storage: Storage, limit: int) -> None:
    await _write(storage)
    pages = await _pages(storage, limit)
    rows = pa.concat_tables(pages)
    assert rows.column("player_id").to_pylist() == PLAYERS
    assert all(p.num_rows == limit for p in pages[:-1])
    latest = await collect(storage.read_predictions(season=SEASON, latest_only=True), PREDICTIONS_SCHEMA)
    expected = {r["player_id"]: r for r in latest.to_pylist()}
    for row in rows.to_pylist():
        previous = row.pop("previous_probability")
        assert all(row.pop(c) is None for c in (*PAGE_PLAYER_COLUMNS, "outcome_beat", "outcome_resolution"))
        assert row == expected[row["player_id"]]
        want = _previous(row["player_id"])
        assert previous == (None if want is None else pytest.approx(want))


async def test_a_page_may_start_between_ids_and_past_the_end(storage: Storage) -> None:
    await _write(storage)
    page = await storage.read_latest_predictions_page(season=SEASON, after_player_id=10, limit=3)
    assert page.column("player_id").to_pylist() == [12, 15, 18]
    end = await storage.read_latest_predictions_page(season=SEASON, after_player_id=PLAYERS[-1], limit=3)
    assert end.num_rows == 0
    assert end.schema.equals(PAGE_SCHEMA)


async def test_pages_of_one_role(storage: Storage) -> None:
    await _write(storage)
    rows = pa.concat_tables(await _pages(storage, 4, role="challenger"))
    assert rows.column("player_id").to_pylist() == PLAYERS[:10]
    assert rows.column("model_version").to_pylist() == [9] * 10
    # His previous challenger point: none (the challenger scored only seq 4).
    assert rows.column("previous_probability").null_count == 10


async def test_an_empty_season_is_an_empty_page(storage: Storage) -> None:
    page = await storage.read_latest_predictions_page(season=SEASON, limit=10)
    assert page.num_rows == 0
    assert page.schema.equals(PAGE_SCHEMA)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 10_001},
        {"limit": True},
        {"limit": 5, "role": "boss"},
        {"limit": 5, "role": None},
        {"limit": 5, "after_player_id": "3"},
    ],
)
async def test_bad_page_arguments_are_refused(storage: Storage, kwargs: dict[str, Any]) -> None:
    with pytest.raises(StorageError):
        await storage.read_latest_predictions_page(season=SEASON, **kwargs)


async def test_outcomes_by_player_ids(storage: Storage) -> None:
    await storage.write_outcomes(outcomes([(p, SEASON, p % 2 == 0, "final") for p in PLAYERS]))
    await storage.write_outcomes(outcomes([(6, SEASON + 1, True, "final")]))
    got = await collect(storage.read_outcomes(season=SEASON, player_ids=[6, 9, 1000]), OUTCOMES_SCHEMA)
    assert sorted(got.column("player_id").to_pylist()) == [6, 9]
    every = await collect(storage.read_outcomes(player_ids=[6]), OUTCOMES_SCHEMA)
    assert sorted(every.column("season").to_pylist()) == [SEASON, SEASON + 1]


# --- the players' columns; pages across row groups and overlapping segments ---------------------------


async def _expected(storage: Storage, role: str = "champion") -> list[dict[str, Any]]:
    """The season's whole listing computed from full reads: each player's latest row of
    ``role``, his previous point, the columns of the feature row it was made from (at its
    point, else the latest before it) and his outcome."""
    history = (
        await collect(storage.read_predictions(season=SEASON, role=role), PREDICTIONS_SCHEMA)
    ).to_pylist()
    latest = await collect(
        storage.read_predictions(season=SEASON, latest_only=True, role=role), PREDICTIONS_SCHEMA
    )
    feature_rows = (
        await collect(storage.read_feature_history(seasons=[SEASON]), FEATURES_SCHEMA)
    ).to_pylist()
    outcome_rows = await collect(storage.read_outcomes(season=SEASON), OUTCOMES_SCHEMA)
    outcome = {r["player_id"]: r for r in outcome_rows.to_pylist()}
    rows = []
    for row in sorted(latest.to_pylist(), key=lambda r: r["player_id"]):
        pid = row["player_id"]
        before = [h for h in history if h["player_id"] == pid and h["as_of_seq"] < row["as_of_seq"]]
        previous = max(before, key=lambda h: (h["as_of_seq"], h["model_version"]), default=None)
        made_from = [r for r in feature_rows if r["player_id"] == pid and r["as_of_seq"] <= row["as_of_seq"]]
        f: dict[str, Any] = max(made_from, key=lambda r: r["as_of_seq"], default={})
        o = outcome.get(pid, {})
        rows.append(
            {
                **row,
                "previous_probability": None if previous is None else previous["probability"],
                **{c: f.get(c) for c in PAGE_PLAYER_COLUMNS},
                "outcome_beat": o.get("beat"),
                "outcome_resolution": o.get("resolution"),
            }
        )
    return rows


async def _write_players(storage: Storage) -> None:
    """Feature rows (a later one for some), outcomes (early, then final for some) for most of
    the players of :func:`_write`; none for the last five."""
    # Ids whose generated inputs stay within their bounds (test_storage.features).
    known = [p for p in PLAYERS[:-5] if p % 97 < 60]
    await storage.write_features(features(grid(known, [SEASON], [1, 2])))
    await storage.write_features(features(grid(known[::3], [SEASON], [3])))
    await storage.write_features(features(grid(known[:4], [SEASON + 1], [1])))  # another season
    await storage.write_outcomes(outcomes([(p, SEASON, p % 2 == 0, "early") for p in known[::2]]))
    await storage.write_outcomes(outcomes([(p, SEASON, False, "final") for p in known[::4]]))


async def _listing(storage: Storage, limit: int, role: str = "champion") -> list[dict[str, Any]]:
    return [row for page in await _pages(storage, limit, role) for row in page.to_pylist()]


@pytest.mark.parametrize("limit", [7, 1000])
async def test_pages_carry_the_players_latest_feature_row_and_outcome(storage: Storage, limit: int) -> None:
    await _write(storage)
    await _write_players(storage)
    rows = await _listing(storage, limit)
    assert rows == await _expected(storage)
    assert rows[0]["player"] == f"Player Ünïcode {PLAYERS[0]}"
    assert rows[-1]["player"] is None  # no feature row
    assert sum(r["player"] is not None for r in rows) == 59
    assert {r["outcome_resolution"] for r in rows} == {"early", "final", None}
    # A newer game's features waiting for their prediction (player 21: predicted at seq 2,
    # features up to seq 3): his counts are those of seq 2, the row his prediction came from.
    latest_features = await collect(
        storage.read_latest_features(season=SEASON, player_ids=[21]), FEATURES_SCHEMA
    )
    assert latest_features.column("as_of_seq").to_pylist() == [3]
    (row21,) = [r for r in rows if r["player_id"] == 21]
    assert row21["as_of_seq"] == 2
    at_2 = await collect(storage.read_features_at(season=SEASON, points={21: 2}), FEATURES_SCHEMA)
    assert at_2.column("as_of_seq").to_pylist() == [2]
    assert row21["ftm"] == at_2.column("ftm")[0].as_py() != latest_features.column("ftm")[0].as_py()


async def test_features_at_points(storage: Storage) -> None:
    await storage.write_features(features(grid([3, 6, 9], [SEASON], [1, 2, 4])))
    await storage.write_features(features(grid([3], [SEASON + 1], [1])))
    points = {3: 4, 6: 3, 9: 0, 12: 5}  # at his point; the latest before it; none before; no rows
    got = await collect(storage.read_features_at(season=SEASON, points=points), FEATURES_SCHEMA)
    assert sorted(
        zip(got.column("player_id").to_pylist(), got.column("as_of_seq").to_pylist(), strict=True)
    ) == [
        (3, 4),
        (6, 2),
    ]
    assert set(got.column("season").to_pylist()) == {SEASON}
    assert [t async for t in storage.read_features_at(season=SEASON, points={})] == []


@pytest.fixture(name="small_row_groups")
def _small_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments written from here on have row groups of 5 rows (writes and compactions)."""
    monkeypatch.setattr(objects_commit, "ROW_GROUP_ROWS", 5)
    monkeypatch.setattr(objects_store, "ROW_GROUP_ROWS", 5)


@pytest.mark.usefixtures("small_row_groups")
@pytest.mark.parametrize("limit", [3, 13, 89])
async def test_object_pages_across_row_groups_and_overlapping_segments(
    object_storage: ObjectTableStorage, limit: int
) -> None:
    storage = object_storage
    await _write(storage)  # three commits: overlapping player ranges
    # A rewrite of some keys (the later commit wins, whatever the segments' order of rows),
    # a new latest point for others, and challenger rows that must not count as champions.
    await storage.write_predictions(predictions([(p, SEASON, 2, 1) for p in PLAYERS[::4]], probability=0.5))
    await storage.write_predictions(predictions([(p, SEASON, 5, 1) for p in PLAYERS[5::6]], probability=0.75))
    await storage.write_predictions(predictions([(p, SEASON, 6, 3) for p in PLAYERS[40:]], role="challenger"))
    await _write_players(storage)
    partition = (await storage.snapshot()).partitions("predictions")[f"season={SEASON}"]
    assert len(partition) > 3  # overlapping segments, not one compacted
    rows = await _listing(storage, limit)
    assert rows == await _expected(storage)
    challenger = await _listing(storage, limit, role="challenger")
    assert challenger == await _expected(storage, role="challenger")
    assert [r["player_id"] for r in challenger] == PLAYERS[:10] + PLAYERS[40:]


async def _group_ranges(storage: ObjectTableStorage) -> list[list[tuple[int, int]]]:
    """Each predictions segment of the season: its row groups' ``player_id`` ranges, in order."""
    out = []
    for segment in (await storage.snapshot()).partitions("predictions")[f"season={SEASON}"]:
        source = await storage.objects.open_input(segment.key)
        try:
            meta = pq.read_metadata(source)
        finally:
            source.close()
        index = meta.schema.names.index("player_id")
        out.append(
            [
                (
                    meta.row_group(g).column(index).statistics.min,
                    meta.row_group(g).column(index).statistics.max,
                )
                for g in range(meta.num_row_groups)
            ]
        )
    return out


async def _write_overlapping(storage: ObjectTableStorage) -> None:
    await _write(storage)
    await storage.write_predictions(predictions([(p, SEASON, 2, 1) for p in PLAYERS[::4]], probability=0.5))
    await storage.write_predictions(predictions([(p, SEASON, 5, 1) for p in PLAYERS[5::6]], probability=0.75))
    await storage.write_predictions(predictions([(p, SEASON, 6, 3) for p in PLAYERS[40:]], role="challenger"))
    await _write_players(storage)


@pytest.mark.usefixtures("small_row_groups")
async def test_a_compacted_partition_is_in_key_order_and_pages_right(
    object_storage: ObjectTableStorage,
) -> None:
    storage = object_storage
    await _write_overlapping(storage)
    expected = await _expected(storage)
    assert await storage.compact(PREDICTIONS, f"season={SEASON}", everything=True)
    (groups,) = await _group_ranges(storage)
    assert len(groups) > 10
    assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(groups))  # ascending
    for limit in (3, 13, 89):
        assert await _listing(storage, limit) == expected


@pytest.mark.usefixtures("small_row_groups")
async def test_disjoint_segments_committed_in_any_order_compact_in_key_order(
    object_storage: ObjectTableStorage,
) -> None:
    storage = object_storage
    for chunk in (PLAYERS[60:], PLAYERS[:30], PLAYERS[30:60]):  # disjoint id ranges, out of order
        await storage.write_predictions(predictions([k for p in chunk for k in _keys(p)]))
    expected = await _expected(storage)
    assert await storage.compact(PREDICTIONS, f"season={SEASON}", everything=True)
    (groups,) = await _group_ranges(storage)
    assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(groups))
    assert await _listing(storage, 13) == expected


@pytest.mark.usefixtures("small_row_groups")
async def test_a_segment_compacted_out_of_key_order_still_pages_right_and_is_sorted_by_the_next_compaction(
    object_storage: ObjectTableStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = object_storage
    await _write_overlapping(storage)
    expected = await _expected(storage)
    # What compactions wrote before they merged in key order: the segments one after another.
    with monkeypatch.context() as old:
        old.setattr(objects_commit, "scan_partition_in_key_order", objects_scan.scan_partition)
        assert await storage.compact(PREDICTIONS, f"season={SEASON}", everything=True)
    (groups,) = await _group_ranges(storage)
    assert any(hi > lo for (_, hi), (lo, _) in itertools.pairwise(groups))  # overlapping
    for limit in (3, 13, 89):
        assert await _listing(storage, limit) == expected
    # The next compaction meets the unsorted segment and sorts the run in memory.
    await storage.write_predictions(predictions([(PLAYERS[0], SEASON, 7, 1)], probability=0.125))
    assert await storage.compact(PREDICTIONS, f"season={SEASON}", everything=True)
    (groups,) = await _group_ranges(storage)
    assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(groups))
    assert await _listing(storage, 13) == await _expected(storage)


async def test_pages_of_rows_stored_before_schema_version_2(
    storage: Storage, backend_config: StorageConfig
) -> None:
    """Rows of older schema versions (object stores: whole segments read and upgraded instead
    of the page's columns) page like current ones, next to a current segment."""
    old = predictions([(p, SEASON, q, 1) for p in (3, 6, 9) for q in (1, 2)])
    early = outcomes([(3, SEASON, True, "early")])
    await store_before_version_2(
        storage,
        backend_config,
        pa.Table.from_arrays(old.drop_columns(["role"]).columns, schema=PREDICTIONS_SCHEMA_V1),
        pa.Table.from_arrays(early.drop_columns(list(EARLY_COLUMNS)).columns, schema=OUTCOMES_SCHEMA_V1),
    )
    await store_as_version_1(storage, backend_config, features_v1(grid([3, 6], [SEASON], [1, 2])))
    async with open_storage(backend_config) as reopened:
        await reopened.write_predictions(predictions([(12, SEASON, 1, 1)]))
        rows = await _listing(reopened, 2)
        assert rows == await _expected(reopened)
    assert [r["player_id"] for r in rows] == [3, 6, 9, 12]
    assert [r["player"] for r in rows] == ["Player Ünïcode 3", "Player Ünïcode 6", None, None]
    assert [r["outcome_resolution"] for r in rows] == ["early", None, None, None]
    assert rows[0]["previous_probability"] == pytest.approx(0.25 + 1 / 1000)


class _CountingStore:
    """Passes everything through to the S3 store, counting what reads transfer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.where = inner.where
        self.ranged_reads = inner.ranged_reads
        self.whole: list[str] = []
        self.ranged_bytes = 0

    async def read_ranges(self, key: str, ranges: Any) -> list[bytes]:
        found: list[bytes] = await self.inner.read_ranges(key, ranges)
        self.ranged_bytes += sum(len(b) for b in found)
        return found

    async def open_input(self, key: str) -> Any:
        self.whole.append(key)
        return await self.inner.open_input(key)

    async def get(self, key: str) -> bytes:
        if key.endswith(".parquet"):
            self.whole.append(key)
        data: bytes = await self.inner.get(key)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_an_s3_page_transfers_its_row_groups_not_its_segments(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranged GETs: the footer once (then cached), then only the row groups a page reads."""
    monkeypatch.setattr(objects_commit, "ROW_GROUP_ROWS", 100)
    monkeypatch.setattr(objects_store, "ROW_GROUP_ROWS", 100)
    cfg = config_for("s3", request, tmp_path, monkeypatch, batch_rows=BATCH_ROWS, name="ranged")
    async with open_storage(cfg) as storage:
        assert isinstance(storage, ObjectTableStorage)
        players = range(1, 20_001)
        await storage.write_predictions(predictions([(p, SEASON, 1, 1) for p in players]))
        [segment] = (await storage.snapshot()).partitions("predictions")[f"season={SEASON}"]
        counting = _CountingStore(storage.objects)
        storage.objects = counting
        first = await storage.read_latest_predictions_page(season=SEASON, limit=50)
        footer_and_page = counting.ranged_bytes
        counting.ranged_bytes = 0
        second = await storage.read_latest_predictions_page(season=SEASON, after_player_id=12_500, limit=50)
        assert first.column("player_id").to_pylist() == list(range(1, 51))
        assert second.column("player_id").to_pylist() == list(range(12_501, 12_551))
        assert counting.whole == []  # no segment fetched whole
        assert 0 < counting.ranged_bytes < segment.size / 20  # one or two of 200 row groups
        assert footer_and_page < segment.size / 2
