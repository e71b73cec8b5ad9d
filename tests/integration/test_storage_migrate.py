"""``scorebeater storage migrate`` between real backends: local, Postgres 15, S3 on moto.

The source store is what the daemon wrote over the first 20 game days of the replayed 2014
season (the replay Score API, the TF Serving stand-in): feature history and latest rows,
champion predictions, the first early outcomes, the prediction cache, the stages'
checkpoints. What a short replay does not reach is added on top (:func:`add_the_rest`):
challenger predictions, final outcomes replacing early ones, a second cache version,
quarantine entries, another season, the promotion records. Built once per module. Cases:

1. local -> Postgres -> S3 -> local: every hop's verification passes, and every table's
   content hash is the same on all four stores (batch sizes differ between them);
2. a ``scorebeater storage migrate`` process is SIGKILLed mid-copy (tiny batches make it
   slow): what its progress record calls done is there whole; a rerun resumes (skips what was
   done), and the result is identical, no key twice;
3. a rerun of a finished migration (the CLI, in-process) copies nothing and verifies;
4. refusals: an ``auto`` backend, the same store twice, a destination holding other data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from scorebeater.cli import main
from scorebeater.config import Config, LeadershipConfig, LocalStorageConfig, StorageConfig
from scorebeater.leadership import open_elector
from scorebeater.modelserver.app import serve_models
from scorebeater.storage import open_storage
from scorebeater.storage.base import EARLY_COLUMNS, LATE_INPUTS, Storage, feature_hashes
from scorebeater.storage.migrate import (
    PROGRESS_CHECKPOINT,
    VERIFIED,
    Digest,
    MigrationError,
    MigrationReport,
    migrate,
    row_hashes,
)
from scorebeater.storage.quarantine import QuarantineEntry, QuarantineState
from scorebeater.testing.daemon_process import storage_toml, uninterrupted_run
from scorebeater.testing.score_api import bundled_catalog, running_replay
from tests.contract.test_storage import features, grid
from tests.integration.daemon_support import model_base_path
from tests.services.storage import config_for

pytestmark = pytest.mark.services

SEASON = 2014
REPLAY_DAYS = 20
"""Game days the daemon replays: about 2,300 feature rows, and the first early outcomes."""
T0 = dt.datetime(2014, 11, 1, tzinfo=dt.UTC)
QUARANTINED: tuple[tuple[int, QuarantineState], ...] = ((1, "open"), (2, "skipped"), (3, "resolved"))


@pytest.fixture(name="replayed", scope="module")
def _replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local store written by the daemon over the first game days of 2014, plus what a short
    replay does not reach (see :func:`add_the_rest`); built once, copied by each test."""
    root = tmp_path_factory.mktemp("replayed")
    # Session fixtures share no event loop: the replay runs on a loop of its own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _replay(root)).result()
    return root / "store"


async def _replay(root: Path) -> None:
    catalog = bundled_catalog()
    base = root / "model" / "score_beater"
    shutil.copytree(model_base_path(), base / "1")
    storage = StorageConfig(backend="local", local=LocalStorageConfig(root=root / "store"))
    day = catalog.default_start(SEASON) + dt.timedelta(days=REPLAY_DAYS)
    async with (
        serve_models(model_name="score_beater", base_path=base, host="127.0.0.1", port=0) as models,
        running_replay(catalog, day) as replay,
    ):
        await uninterrupted_run(replay.client_config(), models.url, storage, SEASON)
    async with open_storage(storage) as store:
        await add_the_rest(store)


async def add_the_rest(storage: Storage) -> None:
    """What a few replayed game days leave out: challenger predictions of each player's latest
    point (a second model version), final outcomes replacing half the early ones (keeping their
    early time), that version's cache, quarantine entries (a binary payload, three states),
    another season's feature rows, and the promotion records."""
    latest = pa.concat_tables([t async for t in storage.read_predictions(season=SEASON, latest_only=True)])
    challenger = latest.set_column(
        latest.schema.get_field_index("role"), "role", pa.repeat(pa.scalar("challenger"), latest.num_rows)
    )
    challenger = challenger.set_column(
        challenger.schema.get_field_index("model_version"),
        "model_version",
        pc.add(challenger.column("model_version"), 1),
    )
    challenger = challenger.set_column(
        challenger.schema.get_field_index("probability"),
        "probability",
        pc.multiply(challenger.column("probability"), 0.5),
    )
    await storage.write_predictions(challenger)
    early = pa.concat_tables([t async for t in storage.read_outcomes(season=SEASON)])
    assert early.num_rows >= 2, "the replay resolved no player early: replay more days"
    final = early.slice(0, early.num_rows // 2)
    final = final.set_column(
        final.schema.get_field_index("resolution"),
        "resolution",
        pa.repeat(pa.scalar("final"), final.num_rows),
    )
    for column in EARLY_COLUMNS:
        field = final.schema.field(column)
        final = final.set_column(
            final.schema.get_field_index(column), field, pa.nulls(final.num_rows, field.type)
        )
    await storage.write_outcomes(final)
    cached = pa.concat_tables([t async for t in storage.cache.read_entries()])
    hashes = cached.column("feature_hash").to_pylist()
    await storage.cache.put(
        2, dict(zip(hashes, (p / 2 for p in cached.column("probability").to_pylist()), strict=True))
    )
    # Another season, stored before feature schema 2 and never filled in: the added inputs null.
    old = features(grid(range(1, 21), [SEASON + 1], [1, 2]))
    for name in LATE_INPUTS:
        old = old.set_column(old.schema.get_field_index(name), name, pa.nulls(old.num_rows, pa.float32()))
    old = old.set_column(
        old.schema.get_field_index("feature_hash"), "feature_hash", pa.array(feature_hashes(old))
    )
    await storage.write_features(old, allow_missing_inputs=True)
    await storage.quarantine.put(
        [
            QuarantineEntry(
                kind="box_score",
                key=f"{SEASON}{n:05d}",
                season=SEASON,
                reason="bad_type",
                detail="fta: expected an int",
                payload=b'{"fta": "x"}\x00\xff',
                first_seen=T0,
                last_seen=T0 + dt.timedelta(hours=n),
                attempts=n,
                state=state,
            )
            for n, state in QUARANTINED
        ]
    )
    await storage.put_checkpoint("promotions", orjson.dumps([{"label": "stable", "to": 2, "reason": "é"}]))


def _local(tmp_path: Path, name: str, batch_rows: int = 400) -> StorageConfig:
    return StorageConfig(
        backend="local", batch_rows=batch_rows, local=LocalStorageConfig(root=tmp_path / name)
    )


def _hashes(report: MigrationReport, side: str) -> dict[str, tuple[int, int]]:
    out = {}
    for name, result in report.tables.items():
        digest = getattr(result, side)
        assert digest is not None
        out[name] = (digest.rows, digest.total)
    return out


def _source(tmp_path: Path, replayed: Path) -> StorageConfig:
    """A copy of the replayed store, this test's own."""
    cfg = _local(tmp_path, "source")
    shutil.copytree(replayed, cfg.local.root)
    return cfg


def test_row_hash_is_canonical_and_order_independent() -> None:
    ts = pa.timestamp("us", tz="UTC")
    a = pa.table(
        {
            "x": pa.array([1.0, -0.0, float("nan"), None], pa.float32()),
            "s": pa.array(["a", "b", None, "a"]),
            "t": pa.array([T0, T0, None, T0], ts),
        }
    )
    b = pa.table(
        {
            "t": pa.array([T0, None, T0, T0], pa.timestamp("ms", tz="UTC")),
            "s": pa.array(["a", None, "b", "a"]),
            "x": pa.array([None, float("nan"), 0.0, 1.0], pa.float64()),
        }
    )
    # Same rows (row 0 of a is row 3 of b, ...): column order, batch order, -0.0, NaN bits,
    # float width and timestamp unit do not matter.
    one, two = Digest(), Digest()
    one.add(a)
    two.add(b.slice(0, 2))
    two.add(b.slice(2))
    assert (one.rows, one.total) == (two.rows, two.total) == (4, one.total)
    changed = a.set_column(1, "s", pa.array(["a", "b", None, "c"]))
    assert sorted(row_hashes(changed).tolist()) != sorted(row_hashes(a).tolist())
    nulled = a.set_column(1, "s", pa.array(["a", "b", "", "a"]))
    assert sorted(row_hashes(nulled).tolist()) != sorted(row_hashes(a).tolist())


async def test_round_trip_local_postgres_s3_local_keeps_every_table(
    replayed: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(tmp_path, replayed)
    pg = config_for("postgres", request, tmp_path, monkeypatch, batch_rows=500, name="migrate")
    s3 = config_for("s3", request, tmp_path, monkeypatch, batch_rows=700, name="migrate")
    back = _local(tmp_path, "back", batch_rows=300)  # batch sizes differ: the hash must not care
    reports = [await migrate(a, b, stream=io.StringIO()) for a, b in ((source, pg), (pg, s3), (s3, back))]
    want = _hashes(reports[0], "source")
    assert set(want) == set(VERIFIED)
    async with open_storage(source) as storage:
        history = sum([t.num_rows async for t in storage.read_feature_history()])
        checkpoints = await storage.checkpoint_names()
    assert all(rows for rows, _ in want.values()), want  # every table holds rows
    assert (want["features"][0], want["quarantine"][0]) == (history, len(QUARANTINED))
    assert want["checkpoints"][0] == len(checkpoints)
    for report in reports:
        assert report.identical, report.render()
        assert _hashes(report, "source") == want
        assert _hashes(report, "dest") == want
    # The progress record of the first hop is not copied on: only the stages' checkpoints.
    async with open_storage(back) as storage:
        names = await storage.checkpoint_names()
        final = [
            t.filter(pc.equal(t.column("resolution"), "final")).column("resolved_early_seq").to_pylist()
            async for t in storage.read_outcomes()
        ]
    assert names == sorted([*checkpoints, PROGRESS_CHECKPOINT])
    assert "promotions" in names
    kept = [seq for part in final for seq in part]
    assert kept
    assert None not in kept  # each final row kept the early time of the row it replaced


def _config_file(path: Path, storage: StorageConfig) -> dict[str, str]:
    section, env = storage_toml(storage)
    path.write_text(f'[logging]\nformat = "json"\nlevel = "warning"\n\n{section}')
    return env


async def _progress(cfg: StorageConfig) -> dict[str, list[int]]:
    async with open_storage(cfg) as storage:
        raw = await storage.get_checkpoint(PROGRESS_CHECKPOINT)
    return {} if raw is None else orjson.loads(raw)["done"]


@pytest.mark.timeout(120)
async def test_a_killed_migration_resumes_and_a_finished_one_copies_nothing(
    replayed: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(tmp_path, replayed)
    dest = config_for("postgres", request, tmp_path, monkeypatch, name="migrate")
    env = _config_file(tmp_path / "a.toml", source) | _config_file(tmp_path / "b.toml", dest)
    command = [sys.executable, "-m", "scorebeater", "storage", "migrate", "--from", str(tmp_path / "a.toml")]
    command += ["--to", str(tmp_path / "b.toml"), "--batch-rows", "8"]  # hundreds of transactions
    with (tmp_path / "migrate.log").open("wb") as log:
        proc = subprocess.Popen(command, env=os.environ | env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not (await _progress(dest)).get("features"):
            assert proc.poll() is None, (tmp_path / "migrate.log").read_text()
            assert time.monotonic() < deadline, "no partition copied in 60 s"
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    cut = await _progress(dest)
    assert "checkpoints" not in cut, "the migration finished before it was killed: make it slower"
    # A partition recorded as done holds every one of its rows: they committed together.
    for season in cut["features"]:
        async with open_storage(source) as a, open_storage(dest) as b:
            want = sum([t.num_rows async for t in a.read_feature_history(seasons=[season])])
            got = sum([t.num_rows async for t in b.read_feature_history(seasons=[season])])
        assert got == want

    resumed = await migrate(source, dest, stream=io.StringIO())
    assert resumed.identical, resumed.render()
    assert resumed.tables["features"].skipped >= 1  # the partition done before the kill
    async with open_storage(dest) as storage:
        keys = [
            (r["player_id"], r["season"], r["as_of_seq"], r["model_version"])
            for t in [t async for t in storage.read_predictions(role=None)]
            for r in t.select(["player_id", "season", "as_of_seq", "model_version"]).to_pylist()
        ]
    assert len(keys) == len(set(keys)) == resumed.tables["predictions"].source.rows  # type: ignore[union-attr]

    # Finished: the command copies nothing and verifies (the summary on stdout).
    configs = {tmp_path / "a.toml": Config(storage=source), tmp_path / "b.toml": Config(storage=dest)}
    monkeypatch.setattr("scorebeater.config.load_config", configs.__getitem__)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    argv = ["storage", "migrate", "--from", str(tmp_path / "a.toml"), "--to", str(tmp_path / "b.toml")]
    assert await asyncio.to_thread(main, argv) == 0  # the command runs its own event loop
    assert "0 rows copied, content identical" in out.getvalue()


@pytest.mark.timeout(120)
async def test_a_migration_killed_inside_its_first_partition_resumes(
    replayed: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed before any partition is done: the destination holds rows and the claimed progress
    record, so the rerun recognises its own migration (not "not empty") and finishes it."""
    source = _source(tmp_path, replayed)
    dest = config_for("postgres", request, tmp_path, monkeypatch, name="migrate")
    env = _config_file(tmp_path / "a.toml", source) | _config_file(tmp_path / "b.toml", dest)
    command = [sys.executable, "-m", "scorebeater", "storage", "migrate", "--from", str(tmp_path / "a.toml")]
    command += ["--to", str(tmp_path / "b.toml"), "--batch-rows", "8"]
    with (tmp_path / "migrate.log").open("wb") as log:
        proc = subprocess.Popen(command, env=os.environ | env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "migrate.log").read_text()
            assert time.monotonic() < deadline, "no row copied in 60 s"
            async with open_storage(dest) as storage:
                claimed = await storage.get_checkpoint(PROGRESS_CHECKPOINT) is not None
                rows = await storage.stored_rows() if claimed else {}
            if rows:
                break
            await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (await _progress(dest)).get("features", []) == [], "a partition finished: kill earlier"
    resumed = await migrate(source, dest, stream=io.StringIO())
    assert resumed.identical, resumed.render()


async def test_refusals(
    replayed: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _source(tmp_path, replayed)
    quick = LeadershipConfig(lease_ttl_s=1.0, poll_s=0.1)
    # A daemon leads a side: the migration waits one lease, then refuses, naming it.
    async with open_elector(source, quick) as daemon:
        await daemon.try_acquire()
        with pytest.raises(MigrationError, match=r"source store .* is led by a running daemon \(pid"):
            await migrate(source, _local(tmp_path, "y"), leadership=quick)
    pg = config_for("postgres", request, tmp_path, monkeypatch, name="led")
    async with open_storage(pg), open_elector(pg, quick) as daemon:
        await daemon.acquire()
        holding = asyncio.ensure_future(daemon.hold())  # renews, as a live daemon does
        try:
            with pytest.raises(MigrationError, match=r"destination store .* is led by a running daemon"):
                await migrate(source, pg, leadership=quick)
        finally:
            holding.cancel()
            await asyncio.gather(holding, return_exceptions=True)
    with pytest.raises(MigrationError, match="name the backend"):
        await migrate(dataclasses.replace(source, backend="auto"), _local(tmp_path, "x"))
    with pytest.raises(MigrationError, match="same store"):
        await migrate(source, dataclasses.replace(source, batch_rows=5))
    other = _local(tmp_path, "other")
    async with open_storage(other) as storage:
        await storage.put_checkpoint("features.2014", b"{}")
    with pytest.raises(MigrationError, match="not empty"):
        await migrate(source, other)
