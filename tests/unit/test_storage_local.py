"""Local backend specifics: paths stay under the root, sources written in place, garbage
collection, compaction, two writers."""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from scorebeater.config import LocalStorageConfig, StorageConfig
from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.inputs import INPUT_NAMES
from scorebeater.storage.base import FEATURES_SCHEMA, conform
from scorebeater.storage.local import LocalObjectStore, open_local
from scorebeater.storage.objects import FEATURES, MANIFEST_DIR, ObjectTableStorage, ParquetSource

if TYPE_CHECKING:
    from pathlib import Path


def rows(player_ids: list[int], seq: int, season: int = 2024, value: float = 1.0) -> pa.Table:
    n = len(player_ids)
    columns = {
        "player_id": player_ids,
        "season": [season] * n,
        "as_of_seq": [seq] * n,
        "as_of_game_id": [f"g{seq}"] * n,
        "as_of_time": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
        "player": [f"p{p}" for p in player_ids],
        "team": ["BOS"] * n,
        **{name: pa.array([value] * n, pa.float32()) for name in INPUT_NAMES},
        "feature_hash": [f"{p:08x}{seq:08x}" for p in player_ids],
    }
    return conform(pa.table(columns), FEATURES_SCHEMA, "test")


def config(root: Path, batch_rows: int = 1000) -> StorageConfig:
    return StorageConfig(local=LocalStorageConfig(root=root), batch_rows=batch_rows)


async def history(storage: ObjectTableStorage) -> list[tuple[int, int, float]]:
    found: list[tuple[int, int, float]] = []
    async for t in storage.read_feature_history():
        found += zip(
            t["player_id"].to_pylist(), t["as_of_seq"].to_pylist(), t["ftm"].to_pylist(), strict=True
        )
    return sorted(found)


def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "root")
    assert store.path("features/season=2024/x.parquet").is_relative_to(tmp_path / "root")
    for key in ("../x", "a/../../x", "/etc/passwd", "..", "a//b"):
        with pytest.raises(StorageError):
            store.path(key)


async def test_crafted_checkpoint_name_never_touches_the_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with open_local(config(root)) as storage:
        with pytest.raises(StorageError, match="checkpoint name"):
            await storage.put_checkpoint("../x", b"1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert not (root / MANIFEST_DIR).exists()


async def test_root_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageUnavailable, match="file"):
        async with open_local(config(tmp_path / "file" / "store")):
            pass


@pytest.mark.skipif(not pathlib.Path("/proc/self").is_dir(), reason="needs Linux procfs")
@pytest.mark.parametrize(
    ("root", "reason"),
    [
        ("/proc/scorebeater-x", "/proc/scorebeater-x cannot be created: ENOENT"),
        ("/proc", "/proc is not writable: ENOENT"),
    ],
)
async def test_an_unusable_root_is_named_with_the_reason_at_open(root: str, reason: str) -> None:
    """The root is created and a file made in it at open, not at the first write (``no object ''``)."""
    with pytest.raises(StorageUnavailable, match=f"^storage.local.root: {reason}"):
        async with open_local(config(pathlib.Path(root))):
            pass


async def test_corrupt_manifest_fails_open(tmp_path: Path) -> None:
    async with open_local(config(tmp_path)) as storage:
        await storage.write_features(rows([1], 1))
    manifest = next((tmp_path / MANIFEST_DIR).iterdir())
    manifest.write_bytes(b'{"format": 1, "generation":')
    with pytest.raises(StorageError, match="corrupt manifest"):
        async with open_local(config(tmp_path)):
            pass


async def test_garbage_collection_spares_foreign_and_young_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("the user's own file")
    (tmp_path / "features").mkdir()
    foreign = tmp_path / "features" / "keep-me.parquet"
    foreign.write_text("not ours")
    orphan = tmp_path / "features" / "season=2024" / f"part-{'a' * 32}-0000.parquet"
    orphan.parent.mkdir()
    orphan.write_bytes(b"half a batch")
    async with open_local(config(tmp_path)) as storage:  # default grace: the orphan is young
        assert orphan.exists()
        await storage.write_features(rows([1, 2], 1))
        assert await storage.collect_garbage(grace_s=0) == 1
        assert await history(storage) == [(1, 1, 1.0), (2, 1, 1.0)]
    assert not orphan.exists()
    assert foreign.exists()
    assert (tmp_path / "notes.txt").exists()


async def test_compaction_bounds_segments_and_keeps_rows(tmp_path: Path) -> None:
    async with open_local(config(tmp_path, batch_rows=7)) as storage:
        for seq in range(1, 41):
            await storage.write_features(rows([1, 2, 3], seq, value=float(seq)))
        await storage.write_features(rows([2], 5, value=41.0))  # a correction after compaction
        manifest = await storage.snapshot()
        segments = manifest.partitions(FEATURES.name)["season=2024"]
        assert len(segments) <= FEATURES.max_segments
        got = await history(storage)
        assert len(got) == 120
        assert (2, 5, 41.0) in got
        latest = [t async for t in storage.read_latest_features()]
        assert sorted(pa.concat_tables(latest)["as_of_seq"].to_pylist()) == [40, 40, 40]
        assert await storage.compact(FEATURES, "season=2024", everything=True)
        assert len((await storage.snapshot()).partitions(FEATURES.name)["season=2024"]) == 1
        assert await history(storage) == got


async def test_a_second_writer_is_detected_and_both_commits_survive(tmp_path: Path) -> None:
    async with open_local(config(tmp_path)) as first, open_local(config(tmp_path)) as second:
        await first.write_features(rows([1], 1), checkpoint=("a", b"1"))
        with capture_logs() as logs:
            await second.write_features(rows([2], 1), checkpoint=("b", b"1"))
        assert any(e["event"] == "storage.commit_conflict" for e in logs)
        await first.write_features(rows([3], 1))
        for storage in (first, second):
            assert await history(storage) == [(1, 1, 1.0), (2, 1, 1.0), (3, 1, 1.0)]
            assert await storage.get_checkpoint("a") == b"1"
            assert await storage.get_checkpoint("b") == b"1"


async def test_old_manifests_are_pruned(tmp_path: Path) -> None:
    async with open_local(config(tmp_path)) as storage:
        for seq in range(10):
            await storage.put_checkpoint("n", str(seq).encode())
        assert len(list((tmp_path / MANIFEST_DIR).iterdir())) <= 5
        assert await storage.get_checkpoint("n") == b"9"


class FailingSource:
    """An ``ObjectSource`` that writes some bytes, then fails (an encoder error)."""

    size = 0

    def write_to(self, sink: pa.NativeFile) -> None:
        sink.write(b"half a segment" * 1000)
        raise ValueError("encoder failed midway")


async def test_source_is_written_in_place_and_a_failing_one_leaves_nothing(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    table = rows([1, 2, 3], 1)
    source = ParquetSource(table, FEATURES)
    await store.put("features/season=2024/seg.parquet", source)
    path = tmp_path / "features" / "season=2024" / "seg.parquet"
    assert source.size == path.stat().st_size
    assert pq.read_table(path).equals(table)
    with pytest.raises(ValueError, match="encoder failed midway"):
        await store.put("features/season=2024/bad.parquet", FailingSource())
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.parquet"]  # no temporary file left
