"""Poison records, failing games and shutdowns: no bad record stops the season (issue 11).

Real parts, as in ``test_stage_handoffs.py``: the replay Score API over a synthetic four-team
league (12 regular-season games in 2014) with its fault injector, the TF Serving stand-in,
local storage, the admin API; each test drives the stages one run at a time through their
runners. Scenarios:

1. a box score whose ``players`` is an object is quarantined at once; the other games are
   processed; the season completes once an operator skips it (admin API), outcomes stored;
2. a box score of the wrong game (``unknown_game``) is fetched and counted once, not on every
   poll; an operator's retry (CLI) fetches it again, resolves it, and the season completes;
3. a game whose fetch keeps failing is quarantined once its retry budget is spent;
4. with half of the box-score requests failing, every run commits progress, and the store ends
   as a clean run's;
5. a run cancelled at shutdown keeps the games it fetched; a restart stores the rest, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson
import pyarrow as pa
import pytest

from scorebeater.cli import main
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    Secret,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, open_daemon, serve
from scorebeater.errors import ScoreApiError
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.stages.season_state import RETRY_BUDGET_S
from scorebeater.storage.quarantine import quarantine_id
from scorebeater.testing.clock import FakeClock
from scorebeater.testing.score_api import Fault, RunningReplay
from tests.integration.league import catalog_fixture, model_url_fixture, replay_fixture  # noqa: F401 - fixtures

SEASON = 2014
TOKEN = "quarantine-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="cfg")
def _cfg(replay: RunningReplay, model_url: str, tmp_path: Path) -> Config:
    return Config(
        score_api=replay.client_config(max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(host="127.0.0.1", port=0, token=Secret(TOKEN)),
    )


def _games(catalog: ReplayCatalog) -> list[str]:
    """The season's regular-season game ids, in the order they turn final."""
    games = [e.game for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"]
    return [g.game_id for g in sorted(games, key=lambda g: (g.date, g.game_seq))]


def _season_over(catalog: ReplayCatalog) -> dt.datetime:
    last = catalog.seasons[SEASON].last_regular_date
    assert last is not None
    return timeline.final_at(last) + dt.timedelta(hours=1)


def _boxscore(game_id: str) -> str:
    return f"/v1/games/{game_id}/boxscore"


def _requests(replay: RunningReplay, game_id: str) -> int:
    return sum(1 for path, _ in replay.faults.hits if path == _boxscore(game_id))


async def _rows(daemon: Daemon) -> list[dict[str, Any]]:
    tables = [t async for t in daemon.ctx.storage.read_feature_history()]
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    return sorted(rows, key=lambda r: (r["as_of_seq"], r["player_id"]))


async def _checkpoint(daemon: Daemon) -> dict[str, Any]:
    raw = await daemon.ctx.storage.get_checkpoint(f"features.{SEASON}")
    assert raw is not None
    value: dict[str, Any] = orjson.loads(raw)
    return value


def _sample(daemon: Daemon, name: str, **labels: str) -> float:
    value = daemon.ctx.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _season_status(daemon: Daemon) -> dict[str, Any]:
    return cast("dict[str, Any]", daemon.features.status()[str(SEASON)])


async def _predict_and_validate(daemon: Daemon) -> int:
    await daemon.runners["predictions"].run_once()
    result = await daemon.runners["validation"].run_once()
    return int(result["final_outcomes"])


async def test_a_box_score_whose_players_is_an_object_is_quarantined_and_skipped_by_an_operator(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    games = _games(catalog)
    poison = games[2]
    replay.clock.set(_season_over(catalog))
    replay.faults.add(_boxscore(poison), *[Fault("mutate", mutate=lambda b: {**b, "players": {"x": 1}})] * 20)
    async with open_daemon(cfg) as daemon, aiohttp.ClientSession(daemon.admin_url) as http:
        # 1. the run processes every other game and sets the poison one aside
        result = await daemon.runners["features"].run_once()
        assert (result["games"], result["quarantined"], result["held_back"]) == (len(games) - 1, 1, 0)
        rows = await _rows(daemon)
        assert poison not in {r["as_of_game_id"] for r in rows}
        assert [r["as_of_seq"] for r in rows] == sorted(r["as_of_seq"] for r in rows)
        assert (await _checkpoint(daemon))["quarantined"] == [poison]
        assert _season_status(daemon)["games_quarantined"]["open"] == 1
        assert _season_status(daemon)["regular_season_complete"] is False
        assert _sample(daemon, "scorebeater_quarantined_records", kind="box_score", state="open") == 1
        # 2. later runs neither fetch it again nor count it again; the season waits
        assert (await daemon.runners["features"].run_once())["games"] == 0
        assert _requests(replay, poison) == 1
        assert _sample(daemon, "scorebeater_records_rejected_total", kind="boxscore", reason="bad_type") == 1
        assert await _predict_and_validate(daemon) == 0

        # 3. the operator sees it (with what was served) and skips it
        async with http.get("/v1/quarantine", params={"season": str(SEASON), "state": "open"}) as resp:
            assert resp.status == 200
            (entry,) = (await resp.json())["entries"]
        assert (entry["key"], entry["reason"], entry["attempts"]) == (poison, "bad_type", 1)
        assert json.loads(entry["payload"])["players"] == {"x": 1}
        async with http.get("/v1/status") as resp:
            watermark = (await resp.json())["stages"]["features"]["watermark"][str(SEASON)]
        assert watermark["games_quarantined"]["open"] == 1
        async with http.post(f"/v1/quarantine/{entry['id']}:skip") as resp:
            assert resp.status == 401  # no token
        async with http.post(f"/v1/quarantine/{entry['id']}:skip", headers=AUTH) as resp:
            assert resp.status == 202
            assert (await resp.json())["entry"]["state"] == "skipped"

        # 4. the season completes without it, and its outcomes are stored
        await daemon.runners["features"].run_once()
        assert _season_status(daemon)["regular_season_complete"] is True
        assert _sample(daemon, "scorebeater_quarantined_records", kind="box_score", state="skipped") == 1
        assert await _predict_and_validate(daemon) > 0


async def test_an_unknown_game_box_score_is_counted_once_then_retried_from_the_cli_and_resolved(
    cfg: Config,
    replay: RunningReplay,
    catalog: ReplayCatalog,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    games = _games(catalog)
    poison = games[4]
    replay.clock.set(_season_over(catalog))
    # Only the first answer is another game's: a retry gets the right one.
    replay.faults.add(_boxscore(poison), Fault("mutate", mutate=lambda b: {**b, "game_id": games[0]}))
    config = tmp_path / "cli.toml"
    config.write_text(f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{cfg.storage.local.root}"\n')
    async with open_daemon(cfg) as daemon:
        for _ in range(5):
            await daemon.runners["features"].run_once()
        assert _requests(replay, poison) == 1
        assert (
            _sample(daemon, "scorebeater_records_rejected_total", kind="boxscore", reason="unknown_game") == 1
        )
        assert _season_status(daemon)["regular_season_complete"] is False

        # The operator lists it and asks for a retry, from the command line.
        argv = ["--log-level", "warning", "quarantine", "--config", str(config)]
        capsys.readouterr()  # the daemon's log so far
        assert await asyncio.to_thread(main, [*argv, "list", "--json", "--state", "open"]) == 0
        (entry,) = json.loads(capsys.readouterr().out)
        assert (entry["key"], entry["reason"]) == (poison, "unknown_game")
        assert entry["id"] == quarantine_id("box_score", poison)
        assert await asyncio.to_thread(main, [*argv, "retry", str(entry["id"])]) == 0
        assert "marked for retry" in capsys.readouterr().out

        # The next run fetches it again, processes it last, and resolves it.
        result = await daemon.runners["features"].run_once()
        assert (result["games"], result["quarantined"]) == (1, 0)
        assert _requests(replay, poison) == 2
        rows = await _rows(daemon)
        late = [r for r in rows if r["as_of_game_id"] == poison]
        assert late
        assert {r["as_of_seq"] for r in late} == {len(games)}
        assert max(r["as_of_time"] for r in rows) == late[0]["as_of_time"]
        assert (await _checkpoint(daemon))["quarantined"] == []
        assert _season_status(daemon)["regular_season_complete"] is True
        assert await _predict_and_validate(daemon) > 0
    assert await asyncio.to_thread(main, [*argv, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["id", "season", "kind", "key", "state", "attempts", "reason", "last_seen"]
    assert listing[1].split()[3:5] == [poison, "resolved"]
    # A resolved entry is neither retried nor skipped.
    assert await asyncio.to_thread(main, [*argv, "skip", str(entry["id"])]) == 1
    assert "is resolved" in capsys.readouterr().err


async def test_a_game_that_keeps_failing_is_quarantined_once_its_retry_budget_is_spent(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog
) -> None:
    games = _games(catalog)
    failing = games[3]
    replay.clock.set(_season_over(catalog))
    replay.faults.add(_boxscore(failing), *[Fault("status", status=503)] * 50)
    clock = FakeClock()
    async with open_daemon(cfg, clock=clock) as daemon, aiohttp.ClientSession(daemon.admin_url) as http:
        # 1. the games before it are committed; it and the later ones are held back
        first = await daemon.runners["features"].run_once()
        assert (first["games"], first["held_back"]) == (3, len(games) - 3)
        assert failing in _season_status(daemon)["held_back"]
        # 2. a run that cannot move at all fails (and is backed off), charging the game again
        await clock.advance(RETRY_BUDGET_S / 2)
        with pytest.raises(ScoreApiError):
            await daemon.runners["features"].run_once()
        assert (await _checkpoint(daemon))["failures"][failing]["runs"] == 2
        # 3. three failed runs over ten minutes: it is set aside and the season moves on
        await clock.advance(RETRY_BUDGET_S / 2)
        third = await daemon.runners["features"].run_once()
        assert (third["games"], third["quarantined"]) == (0, 1)
        rest = await daemon.runners["features"].run_once()
        assert rest["games"] == len(games) - 4
        (entry,) = await daemon.ctx.storage.quarantine.entries()
        assert (entry.key, entry.reason, entry.attempts, entry.state) == (
            failing,
            "retry_budget_exhausted",
            3,
            "open",
        )
        assert "HTTP 503" in entry.detail
        assert _sample(daemon, "scorebeater_records_rejected_total", kind="boxscore", reason="bad_type") == 0
        async with http.post(f"/v1/quarantine/{entry.entry_id}:skip", headers=AUTH) as resp:
            assert resp.status == 202
        await daemon.runners["features"].run_once()
        assert _season_status(daemon)["regular_season_complete"] is True
        assert await _predict_and_validate(daemon) > 0


async def test_every_run_makes_progress_while_half_the_box_score_requests_fail(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    games = _games(catalog)
    replay.clock.set(_season_over(catalog))
    # The reference: a clean run on a store of its own.
    clean = dataclasses.replace(
        cfg, storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "clean"))
    )
    async with open_daemon(clean) as daemon:
        await daemon.runners["features"].run_once()
        want = await _rows(daemon)
    for game_id in games[1::2]:
        replay.faults.add(_boxscore(game_id), Fault("status", status=503))
    async with open_daemon(cfg) as daemon:
        runs = [await daemon.runners["features"].run_once()]  # never raises: progress every run
        while not _season_status(daemon)["regular_season_complete"]:
            assert len(runs) < len(games)
            runs.append(await daemon.runners["features"].run_once())
        assert all(run["games"] > 0 for run in runs)
        assert len(runs) > 1
        assert replay.faults.pending() == 0
        assert await _rows(daemon) == want
        assert await daemon.ctx.storage.quarantine.entries() == []


async def test_a_run_cancelled_at_shutdown_keeps_the_games_it_fetched(
    cfg: Config, replay: RunningReplay, catalog: ReplayCatalog, tmp_path: Path
) -> None:
    """1. a box score hangs; 2. the daemon stops and the run is cancelled after the grace
    period; 3. the games before the hung one are stored; 4. a restart stores the rest, once."""
    games = _games(catalog)
    replay.clock.set(_season_over(catalog))
    clean = dataclasses.replace(
        cfg, storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "clean"))
    )
    async with open_daemon(clean) as daemon:
        await daemon.runners["features"].run_once()
        want = await _rows(daemon)
    hung = games[5]
    replay.faults.add(_boxscore(hung), Fault("delay", delay_s=60.0))
    cfg = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, shutdown_grace_s=0.5))
    stop = asyncio.Event()
    async with open_daemon(cfg) as daemon:
        task = asyncio.create_task(serve(daemon, stop))
        answered = {"endpoint": "boxscore", "code": "200"}
        for _ in range(400):  # every box score but the hung one answered (bounded wait)
            if _sample(daemon, "scorebeater_score_api_requests_total", **answered) == len(games) - 1:
                break
            await asyncio.sleep(0.025)
        assert _sample(daemon, "scorebeater_score_api_requests_total", **answered) == len(games) - 1
        stop.set()
        await asyncio.wait_for(task, 10)
        kept = await _checkpoint(daemon)
        assert sorted(kept["processed"]) == sorted(games[:5])
        assert {r["as_of_game_id"] for r in await _rows(daemon)} == set(games[:5])
    replay.faults.release.set()
    async with open_daemon(cfg) as daemon:
        await daemon.runners["features"].run_once()
        assert await _rows(daemon) == want
