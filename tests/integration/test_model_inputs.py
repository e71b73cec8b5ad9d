"""Models and feature rows of different input sets, on a small synthetic league.

The feature rows hold 17 inputs (feature schema version 2); the published model v1 takes the
13 of version 1, a newer one all 17. A model gets exactly the inputs its signature declares;
one that takes an input the daemon does not compute is refused; a row stored before an input
existed is skipped (and counted) by a model that takes it, never sent as 0, until the feature
stage fills it in when it loads the season, once; a row it cannot fill stays skipped, and never
fails a run. The replay Score API and the TF Serving stand-in are real; storage is local files;
each test drives the stages one run at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from structlog.testing import capture_logs

from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, open_daemon
from scorebeater.errors import StageError
from scorebeater.inputs import INPUT_NAMES
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.stages.handoff import features_checkpoint_name
from scorebeater.storage.base import (
    FEATURE_KEY,
    FEATURES_SCHEMA,
    LATE_INPUTS,
    feature_hashes,
    inputs_of_version,
    upgraded_features,
)
from scorebeater.storage.objects import FEATURES, FEATURES_LATEST, Committer, ObjectTableStorage
from scorebeater.testing.savedmodel import cached_models, in_process, publish
from scorebeater.testing.score_api import RunningReplay
from tests.integration.league import MODEL_CACHE, catalog_fixture, replay_fixture  # noqa: F401 - fixtures

SEASON = 2014
OLD_INPUTS = inputs_of_version(1)
LATE = [n for n in INPUT_NAMES if n in LATE_INPUTS]


@asynccontextmanager
async def serving(tmp_path: Path, inputs: Sequence[str]) -> AsyncIterator[tuple[str, Path]]:
    """The stand-in serving, as version 1, a small model taking ``inputs``; yields its URL and
    the exported model."""
    model = cached_models(MODEL_CACHE).score(1, inputs)
    base = tmp_path / "model" / "score_beater"
    publish(model, base, 1)
    async with serve_models(
        model_name="score_beater", base_path=base, host="127.0.0.1", port=0, poll_interval_s=60
    ) as server:
        yield server.url, model


def config(replay: RunningReplay, model_url: str, tmp_path: Path) -> Config:
    return Config(
        score_api=replay.client_config(max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(enabled=False),
    )


def day(catalog: ReplayCatalog, n: int) -> dt.datetime:
    """Just after the ``n``-th (1-based) regular-season game day of the season is final."""
    days = sorted({e.game.date for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"})
    return timeline.final_at(days[n - 1]) + dt.timedelta(minutes=1)


def rejected(daemon: Daemon, reason: str) -> float:
    """``records_rejected{kind="feature_row", reason}``: rows skipped or left unfilled."""
    labels = {"kind": "feature_row", "reason": reason}
    return daemon.ctx.metrics.registry.get_sample_value("scorebeater_records_rejected_total", labels) or 0.0


async def history(storage: ObjectTableStorage) -> pa.Table:
    tables = [t async for t in storage.read_feature_history()]
    rows = pa.concat_tables(tables) if tables else FEATURES_SCHEMA.empty_table()
    return rows.sort_by([(k, "ascending") for k in FEATURE_KEY]).combine_chunks()


async def store_as_version_1(
    storage: ObjectTableStorage, season: int, *, revised: tuple[int, int] | None = None
) -> pa.Table:
    """Make the store what the 13-input scorebeater would have left: the season's rows without
    the added inputs (hashed over the 13), and a checkpoint that names no feature schema.

    ``revised`` (player id, as-of seq): that row's ``prev_ftm`` is one more than the previous
    season's totals say now, as if they were corrected after it was stored.
    """
    old = (await history(storage)).drop_columns(sorted(LATE_INPUTS))
    if revised is not None:
        hit = pc.and_(
            pc.equal(old.column("player_id"), revised[0]), pc.equal(old.column("as_of_seq"), revised[1])
        )
        prev_ftm = pc.if_else(hit, pc.add(old.column("prev_ftm"), 1.0), old.column("prev_ftm"))
        old = old.set_column(old.schema.get_field_index("prev_ftm"), "prev_ftm", prev_ftm)
    hashes = pa.array(feature_hashes(upgraded_features(old, 1)), pa.string())
    old = old.set_column(old.schema.get_field_index("feature_hash"), "feature_hash", hashes)
    schema = pa.schema([f.with_nullable(nullable=False) for f in old.schema])
    old = pa.Table.from_arrays(old.columns, schema=schema)
    name = features_checkpoint_name(season)
    checkpoint = orjson.loads(await storage.get_checkpoint(name) or b"{}")
    del checkpoint["feature_schema"]
    committer = Committer(storage.objects, batch_rows=50_000, gc_grace_s=3600.0)
    await committer.snapshot()
    specs = [
        dataclasses.replace(spec, schema=schema, schema_version=1, upgrade=None)
        for spec in (FEATURES, FEATURES_LATEST)
    ]
    await committer.write([(spec, old) for spec in specs], (name, orjson.dumps(checkpoint)))
    return upgraded_features(old, 1)


async def test_a_model_of_the_older_inputs_scores_rows_holding_more(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    """The published v1 (13 inputs) against 17-input rows: it gets its 13, and the same scores."""
    async with serving(tmp_path, OLD_INPUTS) as (url, model):
        cfg = config(replay, url, tmp_path)
        async with open_daemon(cfg) as daemon:
            replay.clock.set(day(catalog, 2))
            rows = (await daemon.runners["features"].run_once())["rows"]
            result = await daemon.runners["predictions"].run_once()
            assert result["diff_rows"] == rows > 0
            refeed = await daemon.runners["refeed"].run_once()
            assert refeed["rows"] > 0
            stored = await history(daemon.ctx.storage)  # type: ignore[arg-type]
            assert all(stored.column(n).null_count == 0 for n in INPUT_NAMES)
            predicted = pa.concat_tables([t async for t in daemon.ctx.storage.read_predictions()])
    probability = {
        (r["player_id"], r["as_of_seq"]): r["probability"]
        for r in predicted.select(["player_id", "as_of_seq", "probability"]).to_pylist()
    }
    want = in_process(model, {n: stored.column(n).to_numpy() for n in OLD_INPUTS})[:, 0]
    got = [
        probability[(p, s)]
        for p, s in zip(stored["player_id"].to_pylist(), stored["as_of_seq"].to_pylist(), strict=True)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)


async def test_a_model_taking_an_input_the_daemon_does_not_compute_is_refused(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    async with serving(tmp_path, (*INPUT_NAMES, "shooting_hand")) as (url, _):
        cfg = config(replay, url, tmp_path)
        async with open_daemon(cfg) as daemon:
            replay.clock.set(day(catalog, 2))
            rows = (await daemon.runners["features"].run_once())["rows"]
            runner = daemon.runners["predictions"]
            with pytest.raises(
                StageError, match=r"model score_beater v1 takes input\(s\) \['shooting_hand'\]"
            ):
                await runner.run_once()
            status = runner.status()
            assert status["last_error"].startswith("StageError: predictions: model score_beater v1 takes")
            assert daemon.handoff.pending_rows == rows  # nothing taken: scored once a model fits
            with pytest.raises(StageError, match="shooting_hand"):
                await daemon.runners["refeed"].run_once()
            assert [t async for t in daemon.ctx.storage.read_predictions()] == []


async def test_rows_stored_before_an_input_existed_are_skipped_until_the_feature_stage_fills_them_in(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    async with serving(tmp_path, INPUT_NAMES) as (url, _):
        cfg = config(replay, url, tmp_path)
        # 1. two game days stored as the 13-input scorebeater stored them (no predictions yet)
        async with open_daemon(cfg) as daemon:
            replay.clock.set(day(catalog, 2))
            await daemon.runners["features"].run_once()
            storage = daemon.ctx.storage
            assert isinstance(storage, ObjectTableStorage)
            derived = await history(storage)
            old = await store_as_version_1(storage, SEASON)
            assert (await history(storage)).equals(old)
        # 2. after an upgrade: the 17-input model is never sent a null; the rows are skipped, counted
        async with open_daemon(cfg) as daemon:
            runner = daemon.runners["predictions"]
            with capture_logs() as logs:
                result = await runner.run_once()  # the start-up reconcile: every stored row is unpredicted
            assert result["recovered_rows"] == 0
            assert result["skipped_rows"] == old.num_rows
            (skipped,) = [e for e in logs if e["event"] == "predictions.rows_skipped"]
            assert skipped["season"] == SEASON
            assert skipped["rows"] == old.num_rows
            assert skipped["missing_inputs"] == LATE
            for text in ("[scheduler] seasons", "version_label"):
                assert text in skipped["hint"], text
            assert rejected(daemon, "missing_inputs") == old.num_rows
            assert [t async for t in daemon.ctx.storage.read_predictions()] == []
            # 3. the feature stage loads the season and fills them in: the rows derived from scratch
            with capture_logs() as logs:
                result = await daemon.runners["features"].run_once()
            assert result["games"] == 0
            (backfilled,) = [e for e in logs if e["event"] == "features.rows_backfilled"]
            assert backfilled["rows"] == old.num_rows
            assert backfilled["unfilled"] == 0
            assert daemon.handoff.status()["reconcile_due"]  # the filled rows have no prediction
            assert (await history(daemon.ctx.storage)).equals(derived)  # type: ignore[arg-type]
            checkpoint = await daemon.ctx.storage.get_checkpoint(features_checkpoint_name(SEASON))
            assert orjson.loads(checkpoint or b"{}")["feature_schema"] == 2
            recovered = await runner.run_once()
            assert recovered["recovered_rows"] == old.num_rows
        # 4. a restart does not fill them in again
        async with open_daemon(cfg) as daemon:
            with capture_logs() as logs:
                await daemon.runners["features"].run_once()
            assert not [e for e in logs if e["event"] == "features.rows_backfilled"]
            assert (await history(daemon.ctx.storage)).equals(derived)  # type: ignore[arg-type]


async def test_a_row_the_backfill_cannot_fill_is_counted_once_and_then_skipped_by_a_model_taking_its_inputs(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    """An old store with one row whose previous-season inputs were revised since: the backfill
    runs once, fills the rest and records schema 2; a 17-input model scores every other row
    and skips that one, counted; a restart reads the season's history no more."""
    async with serving(tmp_path, INPUT_NAMES) as (url, _):
        cfg = config(replay, url, tmp_path)
        async with open_daemon(cfg) as daemon:
            replay.clock.set(day(catalog, 2))
            await daemon.runners["features"].run_once()
            storage = daemon.ctx.storage
            assert isinstance(storage, ObjectTableStorage)
            derived = await history(storage)
            latest = pa.concat_tables([t async for t in storage.read_latest_features()])
            player, seq = latest.column("player_id")[0].as_py(), latest.column("as_of_seq")[0].as_py()
            old = await store_as_version_1(storage, SEASON, revised=(player, seq))
        async with open_daemon(cfg) as daemon:
            with capture_logs() as logs:
                assert (await daemon.runners["features"].run_once())["games"] == 0
            (backfilled,) = [e for e in logs if e["event"] == "features.rows_backfilled"]
            assert backfilled["rows"] == old.num_rows - 1
            assert backfilled["unfilled"] == 1
            assert backfilled["unfilled_by_reason"] == {"previous_season_revised": 1}
            assert backfilled["missing_inputs"] == LATE
            assert backfilled["log_level"] == "warning"
            assert rejected(daemon, "previous_season_revised") == 1
            checkpoint = await daemon.ctx.storage.get_checkpoint(features_checkpoint_name(SEASON))
            assert orjson.loads(checkpoint or b"{}")["feature_schema"] == 2
            stored = await history(daemon.ctx.storage)  # type: ignore[arg-type]
            unfilled = pc.and_(
                pc.equal(stored.column("player_id"), player), pc.equal(stored.column("as_of_seq"), seq)
            )
            assert stored.filter(pc.invert(unfilled)).equals(derived.filter(pc.invert(unfilled)))
            (row,) = stored.filter(unfilled).to_pylist()
            assert all(row[n] is None for n in LATE)  # never a mix no derivation gives
            # The start-up reconcile and a refeed score everything else and skip that row.
            with capture_logs() as logs:
                predicted = await daemon.runners["predictions"].run_once()
                refeed = await daemon.runners["refeed"].run_once()
            assert predicted["recovered_rows"] == old.num_rows - 1
            assert predicted["skipped_rows"] == 1
            assert refeed["rows"] == latest.num_rows - 1
            assert refeed["skipped_rows"] == 1
            skipped = [e for e in logs if e["event"] == "predictions.rows_skipped"]
            assert [(e["stage"], e["season"], e["rows"], e["missing_inputs"]) for e in skipped] == [
                ("predictions", SEASON, 1, LATE),
                ("refeed", SEASON, 1, LATE),
            ]
            assert rejected(daemon, "missing_inputs") == 2
            keys = {
                (r["player_id"], r["as_of_seq"])
                async for t in daemon.ctx.storage.read_predictions()
                for r in t.select(["player_id", "as_of_seq"]).to_pylist()
            }
            assert (player, seq) not in keys
            assert len(keys) == old.num_rows - 1
        # A restart does not read the season's history again to fill the row.
        async with open_daemon(cfg) as daemon:
            scans: list[Collection[int] | None] = []
            read = daemon.ctx.storage.read_feature_history

            def spy(*, seasons: Collection[int] | None = None) -> AsyncGenerator[pa.Table, None]:
                scans.append(seasons)
                return read(seasons=seasons)

            daemon.ctx.storage.read_feature_history = spy  # type: ignore[method-assign]
            with capture_logs() as logs:
                await daemon.runners["features"].run_once()
            assert not [e for e in logs if e["event"] == "features.rows_backfilled"]
            assert [SEASON] not in scans
            assert (await daemon.runners["predictions"].run_once())["skipped_rows"] == 1
            assert scans == [None]  # the spy sees reads: the reconcile's
            assert rejected(daemon, "previous_season_revised") == 0


async def test_a_refeed_skips_the_old_rows_of_a_season_no_longer_followed(
    replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    """A season stored by the 13-input scorebeater and not followed since is never backfilled:
    a 17-input model skips its rows, counted, and the refeed and the reconcile succeed."""
    async with serving(tmp_path, INPUT_NAMES) as (url, _):
        cfg = config(replay, url, tmp_path)
        async with open_daemon(cfg) as daemon:
            replay.clock.set(day(catalog, 2))
            await daemon.runners["features"].run_once()
            storage = daemon.ctx.storage
            assert isinstance(storage, ObjectTableStorage)
            old = await store_as_version_1(storage, SEASON)
            latest = pa.concat_tables([t async for t in storage.read_latest_features()])
        elsewhere = dataclasses.replace(
            cfg, scheduler=dataclasses.replace(cfg.scheduler, seasons=(SEASON + 1,))
        )
        async with open_daemon(elsewhere) as daemon:
            with capture_logs() as logs:
                predicted = await daemon.runners["predictions"].run_once()
                refeed = await daemon.runners["refeed"].run_once()
            assert (predicted["recovered_rows"], predicted["skipped_rows"]) == (0, old.num_rows)
            assert (refeed["rows"], refeed["skipped_rows"]) == (0, latest.num_rows)
            assert daemon.runners["refeed"].status()["last_error"] is None
            skipped = [e for e in logs if e["event"] == "predictions.rows_skipped"]
            assert [(e["stage"], e["season"], e["rows"]) for e in skipped] == [
                ("predictions", SEASON, old.num_rows),
                ("refeed", SEASON, latest.num_rows),
            ]
            assert rejected(daemon, "missing_inputs") == old.num_rows + latest.num_rows
            assert [t async for t in daemon.ctx.storage.read_predictions()] == []
