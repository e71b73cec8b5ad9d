"""The storage contract of ordered prediction pages (``read_latest_predictions_page``) and of
outcomes by player ids, on every backend."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from scorebeater.errors import StorageError
from scorebeater.storage.base import OUTCOMES_SCHEMA, PAGE_SCHEMA, PREDICTIONS_SCHEMA, Storage
from tests.contract.test_storage import collect, outcomes, predictions

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
