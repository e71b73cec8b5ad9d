"""Every regular-season box score of a season, fetched through the client from the replay
server, sums to each player's FTM computed directly from the data files."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.scoreapi.catalog import DERIVED_ID_BASE, derived_player_id
from scorebeater.scoreapi.records import BoxScore
from scorebeater.testing.score_api import bundled_catalog, bundled_history, running_replay

if TYPE_CHECKING:
    from scorebeater.metrics import Metrics

UTC = dt.UTC


def ftm_from_files(season: int) -> Counter[int]:
    """Summed regular-season FTM per player id straight from player_games (no server code)."""
    sums: Counter[int] = Counter()
    for row in bundled_history().player_games:
        if row.season == season and row.season_type == "regular":
            pid = row.player_id if row.player_id is not None else derived_player_id(row.player)
            sums[pid] += row.ftm
    return sums


@pytest.mark.parametrize("season", [2014, 2012])
async def test_summed_box_score_ftm_equals_the_data_files(season: int, metrics: Metrics) -> None:
    """Scenario: replay ``season`` with the clock after its regular season; list its final
    games through the feed; fetch every regular-season box score (8 connections); sum FTM
    per player; compare with the files. The whole fetch must take seconds."""
    catalog = bundled_catalog()
    last_regular = catalog.seasons[season].last_regular_date
    assert last_regular is not None
    after_regular = dt.datetime.combine(last_regular + dt.timedelta(days=1), dt.time(2), tzinfo=UTC)
    async with (
        running_replay(catalog, after_regular) as replay,
        ScoreApiClient.open(replay.client_config(max_connections=8), metrics=metrics) as api,
    ):
        started = time.perf_counter()
        info = await api.season(season)
        assert info.status in ("regular_season_final", "final")
        game_ids = [g.game_id async for g in api.games(season, status="final") if g.season_type == "regular"]
        gate = asyncio.Semaphore(8)

        async def fetch(game_id: str) -> BoxScore | None:
            async with gate:
                return await api.box_score(game_id, season=season)

        boxes = await asyncio.gather(*(fetch(gid) for gid in game_ids))
        elapsed = time.perf_counter() - started

    expected_games = sum(
        1 for g in bundled_history().games if g.season == season and g.season_type == "regular"
    )
    assert len(game_ids) == expected_games == info.games.regular
    assert all(box is not None for box in boxes)
    summed: Counter[int] = Counter()
    for box in boxes:
        assert box is not None
        for line in box.players:
            summed[line.player_id] += line.ftm
    expected = ftm_from_files(season)
    assert set(summed) == set(expected)
    assert summed == expected
    assert any(pid >= DERIVED_ID_BASE for pid in summed), "unmatched players must be served too"
    assert api.rejected == Counter()
    assert elapsed < 30, f"full-season fetch took {elapsed:.1f} s"
    print(f"season {season}: {len(game_ids)} box scores in {elapsed:.2f} s")
    if season == 2012:
        assert info.scheduled_games_per_team == 66
    else:
        assert info.scheduled_games_per_team == 82
