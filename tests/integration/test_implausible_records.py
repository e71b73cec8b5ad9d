"""Issue #11's impossible values, at each boundary: the data files, the Score API client, the daemon.

Each case was seen on a fresh clone: a ``player_games`` row with ``fta = 10^20`` passed the
loader and the replay answered 500 for its game; box-score lines with ``fta = 2^63`` or
``ftm = fta = 10^6`` were stored and pinned a probability at 0 or 1. Storage's own refusal
is in the storage contract suite.
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ReplayConfig,
    ScoreApiConfig,
    StorageConfig,
)
from scorebeater.daemon import open_daemon
from scorebeater.data import GAMES, PLAYER_GAMES, SEASON_TOTALS, load_history
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.score_api import Fault, RunningReplay, running_replay, synthetic_history

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from scorebeater.metrics import Metrics

MID_SEASON = dt.datetime(2013, 11, 4, 12, tzinfo=dt.UTC)
"""Synthetic 2014: the games of Nov 1-3 are final."""
AFTER_TWO_GAMES = dt.datetime(2013, 11, 1, tzinfo=dt.UTC)
"""The small data set below: both games (Oct 29 and 30) are final."""


def write_data(directory: Path) -> None:
    """Two games of 2014; the first has a player line with ``fta = 10^20``."""
    files = {
        SEASON_TOTALS: "season,player_id,player,age,experience,team,g,mp,ft,fta,pts\n"
        "2013,1,A B,25,3,AAA,80,2000,100,120,300\n"
        "2013,2,C D,25,3,BBB,80,2000,100,120,300\n",
        GAMES: "season,season_type,game_seq,game_id,date,date_estimated,away,home,away_pts,home_pts\n"
        "2014,regular,1,100,2013-10-29,0,AAA,BBB,90,91\n"
        "2014,regular,2,101,2013-10-30,0,BBB,AAA,90,91\n",
        PLAYER_GAMES: "season,season_type,game_seq,game_id,date,player_id,player,team,ftm,fta\n"
        "2014,regular,1,100,2013-10-29,1,A B,AAA,3,4\n"
        "2014,regular,1,100,2013-10-29,2,C D,BBB,2,99999999999999999999\n"
        "2014,regular,2,101,2013-10-30,1,A B,AAA,1,2\n",
    }
    for name, text in files.items():
        (directory / name).write_bytes(gzip.compress(text.encode()))


def sample(metrics: Metrics, **labels: str) -> float:
    return metrics.registry.get_sample_value("scorebeater_records_rejected_total", labels) or 0.0


async def test_a_rejected_data_row_leaves_its_game_servable(tmp_path: Path) -> None:
    """The loader rejects the row; the replay serves the game's other lines (it answered 500)."""
    write_data(tmp_path)
    history = load_history(tmp_path)
    assert history.report.rejections() == [("data_player_games", "implausible_fta", 1)]
    async with (
        running_replay(ReplayCatalog.build(history), AFTER_TWO_GAMES) as replay,
        ScoreApiClient.open(replay.client_config()) as api,
    ):
        box = await api.box_score("100", season=2014)
    assert box is not None
    assert [(p.player_id, p.ftm, p.fta) for p in box.players] == [(1, 3, 4)]
    assert api.rejected == Counter()


async def test_the_daemon_counts_the_loaders_rejections(tmp_path: Path, metrics: Metrics) -> None:
    (tmp_path / "data").mkdir()
    write_data(tmp_path / "data")
    cfg = Config(
        score_api=ScoreApiConfig(replay=ReplayConfig(enabled=True, port=0)),
        storage=StorageConfig(local=LocalStorageConfig(root=tmp_path / "store")),
        admin=AdminConfig(enabled=False),
    )
    async with open_daemon(cfg, metrics=metrics, data_dir=tmp_path / "data"):
        assert sample(metrics, kind="data_player_games", reason="implausible_fta") == 1


@pytest.fixture(name="replay")
async def _replay() -> AsyncIterator[RunningReplay]:
    async with running_replay(ReplayCatalog.build(synthetic_history()), MID_SEASON) as replay:
        yield replay


def _implausible_lines(body: dict[str, Any]) -> dict[str, Any]:
    first = body["players"][0]
    body["players"] += [
        {**first, "player_id": 9001, "ftm": 0, "fta": 2**63},
        {**first, "player_id": 9002, "ftm": 1_000_000, "fta": 1_000_000},
        {**first, "player_id": 9003, "ftm": 51, "fta": 51},
        {**first, "player_id": 2**63, "ftm": 1, "fta": 1},
    ]
    return body


async def test_impossible_box_score_lines_are_rejected_with_their_keys(
    replay: RunningReplay, metrics: Metrics
) -> None:
    """Rejected, counted and skipped, each naming its game and player for the features stage."""
    replay.faults.add("/v1/games/201400001/boxscore", Fault("mutate", mutate=_implausible_lines))
    with capture_logs() as logs:
        async with ScoreApiClient.open(replay.client_config(), metrics=metrics) as api:
            box = await api.box_score("201400001", season=2014)
    assert box is not None
    assert len(box.players) == len(replay.catalog.games_by_id["201400001"].lines)
    assert max(p.fta for p in box.players) <= 50
    assert api.rejected == Counter(
        {("boxscore_line", "implausible_fta"): 3, ("boxscore_line", "bad_value"): 1}
    )
    assert sample(metrics, kind="boxscore_line", reason="implausible_fta") == 3
    keys = [(e["reason"], e["key"]) for e in logs if e["event"] == "score_api.record_rejected"]
    assert keys == [
        ("implausible_fta", "201400001/9001"),
        ("implausible_fta", "201400001/9002"),
        ("implausible_fta", "201400001/9003"),
        ("bad_value", "201400001"),
    ]


async def test_impossible_season_totals_are_rejected(replay: RunningReplay) -> None:
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        first = body["data"][0]
        body["data"][0] = {**first, "ftm": 10**6, "fta": 10**6, "pts": 10**7}
        body["data"][1] = {**body["data"][1], "games": 10**9}
        return body

    replay.faults.add("/v1/seasons/2013/player-totals", Fault("mutate", mutate=mutate))
    async with ScoreApiClient.open(replay.client_config()) as api:
        totals = [row async for row in api.season_totals(2013)]
    assert len(totals) == 6
    assert api.rejected == Counter(
        {("player_total", "implausible_fta"): 1, ("player_total", "implausible_games"): 1}
    )
