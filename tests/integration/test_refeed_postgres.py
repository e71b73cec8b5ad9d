"""The refeed on real Postgres: the binary COPY read, the pipeline, unchanged rows left alone.

A few dozen synthetic players in batches of 7 rows (so the read, the scoring and the two
stores overlap over many batches), some sharing their inputs (one feature hash in several
batches), one with a multi-byte name, one stored before the late inputs existed (skipped by a
model taking them). The model is the committed one, served by the stand-in over HTTP.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry

from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import Config, ModelConfig, TFServingConfig
from scorebeater.inputs import INPUT_NAMES
from scorebeater.metrics import Metrics
from scorebeater.modelserver.app import serve_models
from scorebeater.scheduler import SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff
from scorebeater.stages.refeed import ReadsStoredPredictions, RefeedStage
from scorebeater.stages.scoring import Scorer
from scorebeater.storage import open_storage
from scorebeater.storage.base import FEATURE_KEY, FEATURES_SCHEMA, LATE_INPUTS, UTC_TS, feature_hashes
from scorebeater.storage.postgres import PostgresStorage
from tests.services.storage import config_for

REPO = Path(__file__).resolve().parents[2]
SEASON = 2014
PLAYERS = 60
BATCH_ROWS = 7


def players(n: int = PLAYERS) -> pa.Table:
    """``n`` players' latest rows; every fifth shares the inputs of player 0 (one hash)."""
    rng = np.random.default_rng(5)
    values = {name: rng.integers(1, 40, n).astype(np.float32) for name in INPUT_NAMES}
    values["fta"] = values["ftm"] + 5
    values["prev_fta"] = values["prev_ftm"] + 5
    values["team_games"] = rng.integers(2, 82, n).astype(np.float32)
    values["season_games"] = np.full(n, 82, dtype=np.float32)
    for name in INPUT_NAMES:
        values[name][::5] = values[name][0]
    seq = values["team_games"].astype(np.int32)
    names = [f"Player {i}" for i in range(n)]
    names[3] = "Žydrūnas Ilgauskas 李"
    table = pa.table(
        {
            "player_id": pa.array(np.arange(n, dtype=np.int64) + 1_000),
            "season": pa.array(np.full(n, SEASON, dtype=np.int32)),
            "as_of_seq": pa.array(seq),
            "as_of_game_id": pa.array([f"G{s:04d}" for s in seq.tolist()]),
            "as_of_time": pa.array(
                np.datetime64("2014-11-01T02:00:00", "us") + seq.astype("timedelta64[D]"), UTC_TS
            ),
            "player": pa.array(names),
            "team": pa.array(["CLE"] * n),
            **{name: pa.array(values[name]) for name in INPUT_NAMES},
        }
    )
    table = table.append_column("feature_hash", pa.array(feature_hashes(table), pa.string()))
    return table.cast(FEATURES_SCHEMA)


def sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in FEATURE_KEY]).combine_chunks()


@dataclass
class Refeed:
    storage: PostgresStorage
    stage: RefeedStage
    handoff: Handoff
    written: list[int]
    """Rows of each ``write_predictions`` call, in order."""

    async def run(self, *, clear_cache: bool) -> dict[str, object]:
        self.written.clear()
        self.handoff.request_refeed(clear_cache=clear_cache)
        return await self.stage.run("test")

    async def predictions(self) -> pa.Table:
        tables = [t async for t in self.storage.read_predictions()]
        return pa.concat_tables(tables).sort_by("player_id")


@pytest.fixture(name="refeed")
async def _refeed(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Refeed]:
    storage_cfg = config_for("postgres", request, tmp_path, monkeypatch, batch_rows=BATCH_ROWS, name="refeed")
    async with (
        serve_models(base_path=REPO / "model/score_beater", port=0, poll_interval_s=60) as server,
        open_storage(storage_cfg) as storage,
    ):
        cfg = Config(
            model=ModelConfig(name="score_beater"),
            tfserving=TFServingConfig(base_url=server.url),
            storage=storage_cfg,
        )
        async with TFServingClient.open(cfg.tfserving, cfg.model.name) as model:
            assert isinstance(storage, PostgresStorage)
            written: list[int] = []
            write = storage.write_predictions

            async def counted(rows: pa.Table, **kwargs: Any) -> None:
                written.append(rows.num_rows)
                await write(rows, **kwargs)

            monkeypatch.setattr(storage, "write_predictions", counted)
            ctx = StageContext(
                cfg=cfg,
                storage=storage,
                scores=cast("Any", None),
                model=model,
                metrics=Metrics(CollectorRegistry()),
                clock=SystemClock(),
            )
            handoff = Handoff()
            yield Refeed(storage, RefeedStage(ctx, handoff, Scorer(ctx)), handoff, written)


async def test_the_copy_read_returns_every_latest_row_exactly(refeed: Refeed) -> None:
    rows = players()
    old = rows.slice(0, 1)
    old = old.set_column(old.schema.get_field_index("as_of_seq"), "as_of_seq", pa.array([1], pa.int32()))
    old = old.cast(FEATURES_SCHEMA)
    # A row stored before the late inputs existed: nulls read back as nulls.
    late = rows.slice(PLAYERS - 1, 1)
    for name in LATE_INPUTS:
        late = late.set_column(late.schema.get_field_index(name), name, pa.nulls(1, pa.float32()))
    late = late.cast(FEATURES_SCHEMA)
    await refeed.storage.write_features(pa.concat_tables([rows.slice(0, PLAYERS - 1), old]))
    await refeed.storage.write_features(late, allow_missing_inputs=True)
    expected = sorted_rows(pa.concat_tables([rows.slice(0, PLAYERS - 1), late]))

    batches = [t async for t in refeed.storage.read_latest_features()]
    assert max(t.num_rows for t in batches) <= BATCH_ROWS
    assert sorted_rows(pa.concat_tables(batches)).equals(expected)
    stored = [t async for t in refeed.storage.read_latest_features_with_stored(model_version=2)]
    assert sorted_rows(pa.concat_tables(stored).select(FEATURES_SCHEMA.names)).equals(expected)
    assert all(t.column("stored_probability").null_count == t.num_rows for t in stored)
    # Closing a read early stops its COPY; the pool's connections stay usable.
    for _ in range(3):
        async with contextlib.aclosing(refeed.storage.read_latest_features()) as reading:
            async for _first in reading:
                break
    picked = [t async for t in refeed.storage.read_latest_features(season=SEASON, player_ids=[1_003])]
    assert pa.concat_tables(picked).column("player").to_pylist() == ["Žydrūnas Ilgauskas 李"]


async def test_a_refeed_rewrites_only_the_predictions_that_change(refeed: Refeed) -> None:
    assert isinstance(refeed.storage, ReadsStoredPredictions)
    await refeed.storage.write_features(players())

    first = await refeed.run(clear_cache=True)
    assert (first["rows"], first["skipped_rows"]) == (PLAYERS, 0)
    assert sum(refeed.written) == PLAYERS
    stored = await refeed.predictions()
    assert stored.num_rows == PLAYERS
    # Every distinct hash cached once, though one of them is in every batch.
    entries = pa.concat_tables([t async for t in refeed.storage.cache.read_entries()])
    assert entries.num_rows == len(set(players().column("feature_hash").to_pylist()))

    again = await refeed.run(clear_cache=True)
    assert again["rows"] == PLAYERS
    assert refeed.written == []  # nothing changed: nothing rewritten
    assert (await refeed.predictions()).equals(stored)
    warm = await refeed.run(clear_cache=False)
    assert (warm["rows"], refeed.written) == (PLAYERS, [])

    # A stored probability that differs from the model's is written again, and only it.
    table = refeed.storage._db.table("predictions")  # tampering, as an operator could
    async with refeed.storage._db.transaction("tamper") as conn:
        await conn.execute(f"UPDATE {table} SET probability = 0.5 WHERE player_id = 1007")  # noqa: S608
    await refeed.run(clear_cache=False)
    assert refeed.written == [1]
    restored = await refeed.predictions()
    assert restored.column("probability").equals(stored.column("probability"))
    moved = pc.not_equal(restored.column("predicted_at"), stored.column("predicted_at"))
    assert restored.filter(moved).column("player_id").to_pylist() == [1007]
