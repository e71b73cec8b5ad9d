"""The champion's stored predictions as the gate reads them (``train --from-storage``).

:func:`stored_champion_predictions` reads the ``champion`` role of the evaluation seasons from
a real (local) store and keeps the version that served the most rows;
:meth:`StoredPredictions.on` aligns them with evaluation rows, keeping only the rows they
cover, in the rows' order.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from scorebeater.config import LocalStorageConfig, StorageConfig
from scorebeater.inputs import INPUT_NAMES
from scorebeater.storage.base import PREDICTIONS_SCHEMA, conform
from scorebeater.storage.local import open_local
from scorebeater.training.dataset import TrainingSet
from scorebeater.training.pipeline import StoredPredictions, stored_champion_predictions

if TYPE_CHECKING:
    from pathlib import Path

T0 = dt.datetime(2014, 11, 1, tzinfo=dt.UTC)


def predictions(keys: list[tuple[int, int, int]], version: int, role: str, p: float) -> pa.Table:
    """Stored predictions of ``(player_id, season, as_of_seq)`` keys; probability ``p + seq/100``."""
    ts = pa.timestamp("us", tz="UTC")
    table = pa.table(
        {
            "player_id": pa.array([k[0] for k in keys], pa.int64()),
            "season": pa.array([k[1] for k in keys], pa.int32()),
            "as_of_seq": pa.array([k[2] for k in keys], pa.int32()),
            "as_of_time": pa.array([T0] * len(keys), ts),
            "model_version": pa.array([version] * len(keys), pa.int64()),
            "probability": pa.array([p + k[2] / 100 for k in keys], pa.float64()),
            "feature_hash": pa.array([f"{k[0]}-{k[2]}" for k in keys]),
            "progress": pa.array([0.5] * len(keys), pa.float32()),
            "predicted_at": pa.array([T0] * len(keys), ts),
            "role": pa.array([role] * len(keys)),
        }
    )
    return conform(table, PREDICTIONS_SCHEMA, "test predictions")


def rows(keys: list[tuple[int, int, int]]) -> TrainingSet:
    n = len(keys)
    return TrainingSet(
        inputs={name: np.full(n, i, np.float32) for i, name in enumerate(INPUT_NAMES)},
        label=np.array([k[0] % 2 == 0 for k in keys]),
        season=np.array([k[1] for k in keys], np.int32),
        player_id=np.array([k[0] for k in keys], np.int64),
        as_of_seq=np.array([k[2] for k in keys], np.int32),
    )


async def test_the_served_version_of_the_champion_role_is_read(tmp_path: Path) -> None:
    cfg = StorageConfig(local=LocalStorageConfig(root=tmp_path / "store"), batch_rows=4)
    async with open_local(cfg) as storage:
        assert await stored_champion_predictions(storage, [2014]) is None  # nothing stored
        served = [(p, 2014, q) for p in (1, 2, 3) for q in (1, 2)]
        await storage.write_predictions(predictions(served, 2, "champion", 0.25))
        # the version before it served one row; the challenger scored every row, and more
        await storage.write_predictions(predictions([(4, 2014, 1)], 1, "champion", 0.75))
        await storage.write_predictions(predictions([*served, (5, 2014, 1)], 3, "challenger", 0.5))
        await storage.write_predictions(predictions([(1, 2013, 1)], 1, "champion", 0.5))  # another season
        found = await stored_champion_predictions(storage, [2014])
        assert await stored_champion_predictions(storage, [2015]) is None
    assert found is not None
    assert (found.version, found.seasons) == (2, [2014])
    got = found.predictions.sort_by([("player_id", "ascending"), ("as_of_seq", "ascending")])
    assert got.column_names == ["player_id", "season", "as_of_seq", "probability"]
    assert list(zip(*(got.column(c).to_pylist() for c in ("player_id", "as_of_seq")), strict=True)) == [
        (p, q) for p in (1, 2, 3) for q in (1, 2)
    ]
    assert got.column("probability").to_pylist() == [0.25 + q / 100 for _ in (1, 2, 3) for q in (1, 2)]


def test_stored_predictions_cover_only_the_rows_they_predicted_in_row_order() -> None:
    evaluation = rows([(p, 2014, q) for p in (1, 2, 3, 4) for q in (1, 2, 3)])
    stored = predictions(
        [(3, 2014, 2), (1, 2014, 3), (1, 2014, 1), (9, 2014, 1), (2, 2013, 1)], 2, "champion", 0.5
    )
    table = stored.select(["player_id", "season", "as_of_seq", "probability"])
    judged, probability = StoredPredictions(version=2, seasons=[2014], predictions=table).on(evaluation)
    keys = list(zip(judged.player_id.tolist(), judged.as_of_seq.tolist(), strict=True))
    assert keys == [(1, 1), (1, 3), (3, 2)]  # the evaluation rows' order; rows they lack are left out
    np.testing.assert_allclose(probability, [0.51, 0.53, 0.52])
    assert judged.label.tolist() == [False, False, False]
    assert len(judged.inputs["ftm"]) == 3
