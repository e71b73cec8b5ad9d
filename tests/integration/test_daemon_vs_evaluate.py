"""The daemon's realized metrics on /metrics equal `evaluate --rows daemon` on the same storage.

A small league (six teams, two of them idle each game day, a traded player, a rookie without a
previous season, a play-by-play name without an id) written as a data directory, replayed
through the real daemon (replay Score API, TF Serving stand-in, local storage, admin API).

Scenario:
1. the replay clock passes the end of the regular season; the feature, prediction and
   validation stages run: every stored feature row has a prediction and final outcomes are
   stored;
2. /metrics shows the realized metrics of version 1, overall and per progress bucket;
3. `scorebeater evaluate --rows daemon` on the daemon's storage scores the same rows with the
   same SavedModel: the same row count per bucket, and every metric (ROC AUC, Brier, log loss,
   ECE, accuracy) equal to float32 rounding (the daemon's probabilities came over REST);
4. `evaluate` on the training rows of the same season scores more rows (a row per game day,
   idle days included: see scorebeater.training.daemon_rows);
5. `--rows daemon` for a season the daemon has not validated fails with a clear message;
6. predictions by a second version of each player's latest row (as a refeed by it stores)
   leave the row set alone and are counted per version.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pyarrow as pa
import pytest

from scorebeater import cli
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import open_daemon
from scorebeater.data import load_history
from scorebeater.inputs import INPUT_NAMES
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.storage import open_storage
from scorebeater.storage.base import PREDICTIONS_SCHEMA
from scorebeater.testing.realized import scrape_realized
from scorebeater.testing.savedmodel import cached_models, publish
from scorebeater.testing.score_api import RunningReplay, running_replay
from scorebeater.training.daemon_rows import read_daemon_rows
from scorebeater.training.dataset import TrainingSet, build_training_set

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SEASON = 2014
TEAMS = ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF")
DAYS = 30
"""Game days per season; two games a day, so each team plays 20 and is idle 10."""
TRADED = 1003
"""Plays for AAA, then for BBB from :data:`TRADE_DAY` of SEASON."""
TRADE_DAY = 14
"""A day when AAA plays an earlier game than BBB's, and he shoots in BBB's."""
ROOKIE = 1099
"""Plays for CCC in SEASON only: no previous season, so no row anywhere."""
MODEL_CACHE = Path("/tmp/scorebeater-test-models")  # noqa: S108 - a per-machine cache of exports
GAME_COLUMNS = ["season", "season_type", "game_seq", "game_id", "date"]
TOTAL_COLUMNS = ["season", "player_id", "player", "age", "experience", "team", "g", "mp", "ft", "fta", "pts"]
TOLERANCE = 1e-6
"""Same rows, same SavedModel, same metric code: only float32 rounding of the REST path differs."""


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with gzip.open(path, "wt", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _schedule(day: int) -> list[tuple[str, str]]:
    """Two games (home, away) on ``day``: a different pair of teams is idle each day."""
    idle = {TEAMS[(2 * day) % 6], TEAMS[(2 * day + 1) % 6]}
    a, b, c, d = (t for t in TEAMS if t not in idle)
    return [(a, b), (c, d)] if (day // 3) % 2 else [(a, c), (b, d)]


def write_league(directory: Path) -> None:
    """Seasons 2013 and 2014 with games, 2012 with totals only; official totals differ from the
    play-by-play sums by a free throw now and then, as in the real data."""
    rng = np.random.default_rng(12)
    players = {1000 + 10 * t + k: TEAMS[t] for t in range(len(TEAMS)) for k in range(1, 5)}
    rate = {pid: float(rng.uniform(0.5, 6.0)) for pid in players}
    games: list[list[object]] = []
    lines: list[list[object]] = []
    totals: list[list[object]] = [
        [2012, pid, f"Player {pid}", 24, 2, team, 60, 1500, round(rate[pid] * 15), round(rate[pid] * 20), 900]
        for pid, team in players.items()
    ]
    seq = 0
    for season in (2013, 2014):
        made: dict[int, list[int]] = {}
        roster = dict(players)
        if season == SEASON:
            roster[ROOKIE] = "CCC"
        for day in range(DAYS):
            date = dt.date(season - 1, 11, 1) + dt.timedelta(days=day)
            if season == SEASON and day == TRADE_DAY:
                roster[TRADED] = "BBB"
            for home, away in _schedule(day):
                seq += 1
                game = [season, "regular", seq, str(seq), date.isoformat()]
                games.append([*game, 0, away, home, 90, 95])
                for pid, team in roster.items():
                    if team not in (home, away):
                        continue
                    fta = int(rng.poisson(rate.get(pid, 2.0) * (1.3 if season == SEASON else 1.0)))
                    if pid == TRADED and season == SEASON and day == TRADE_DAY:
                        fta = max(fta, 1)
                    if fta == 0:
                        continue  # no free throw, no row (as in the real play-by-play)
                    ftm = int(rng.binomial(fta, 0.75))
                    lines.append([*game, pid, f"Player {pid}", team, ftm, fta])
                    made.setdefault(pid, [0, 0])
                    made[pid][0] += ftm
                    made[pid][1] += fta
                if "AAA" in (home, away):
                    lines.append([*game, "", "No Id", "AAA", 1, 2])
        for pid, (ftm, fta) in sorted(made.items()):
            official = min(fta, max(0, ftm + int(rng.integers(-1, 2))))
            team = "TOT" if pid == TRADED and season == SEASON else roster[pid]
            totals.append([season, pid, f"Player {pid}", 25, 3, team, 20, 600, official, fta, 300])
    _write(directory / "season_totals.csv.gz", TOTAL_COLUMNS, totals)
    _write(
        directory / "games.csv.gz",
        [*GAME_COLUMNS, "date_estimated", "away", "home", "away_pts", "home_pts"],
        games,
    )
    _write(
        directory / "player_games.csv.gz", [*GAME_COLUMNS, "player_id", "player", "team", "ftm", "fta"], lines
    )


@pytest.fixture(name="data_dir")
def _data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    write_league(directory)
    return directory


@pytest.fixture(name="replay")
async def _replay(data_dir: Path) -> AsyncIterator[RunningReplay]:
    catalog = ReplayCatalog.build(load_history(data_dir))
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        yield replay


@pytest.fixture(name="model_base")
def _model_base(tmp_path: Path) -> Path:
    base = tmp_path / "model" / "score_beater"
    publish(cached_models(MODEL_CACHE).score(1), base, 1)
    return base


@pytest.fixture(name="model_url")
async def _model_url(model_base: Path) -> AsyncIterator[str]:
    async with serve_models(
        model_name="score_beater", base_path=model_base, host="127.0.0.1", port=0, poll_interval_s=60
    ) as server:
        yield server.url


def states(rows: TrainingSet, player: int | None = None) -> set[tuple[float, ...]]:
    """Each row's player and inputs, as a set (a repeated row counts once): of ``player``, else
    of everyone but the traded player.

    The day the traded player first plays for his new team, his old team plays an earlier game:
    the daemon also has a row as of that game (he is on the old team until the new team's box
    score says otherwise), with the old team's games; the training row of the day has the new
    team's.
    """
    keep = rows.player_id == player if player is not None else rows.player_id != TRADED
    columns = [rows.player_id[keep].astype(np.float64)]
    columns += [rows.inputs[name][keep].astype(np.float64) for name in INPUT_NAMES]
    return {tuple(row) for row in np.column_stack(columns).tolist()}


async def evaluate_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``scorebeater evaluate ... --json`` run as the command line runs it (its own event loop,
    so in a thread); returns the exit code, stdout and stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["evaluate", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, out, err


async def test_metrics_equal_evaluate_on_the_daemons_rows(
    replay: RunningReplay,
    model_url: str,
    model_base: Path,
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    cfg = Config(
        score_api=replay.client_config(),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url, max_batch_size=512),
        storage=storage,
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )
    season = replay.catalog.seasons[SEASON]
    assert season.last_regular_date is not None
    replay.clock.set(timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1))

    # 1. the whole season, then validation
    async with open_daemon(cfg) as daemon:
        features = await daemon.runners["features"].run_once()
        assert features["games"] == 2 * DAYS
        predictions = await daemon.runners["predictions"].run_once()
        assert predictions["diff_rows"] == features["rows"]
        validation = await daemon.runners["validation"].run_once()
        assert validation["final_outcomes"] > 0
        assert validation["labelled_versions"] == [1]

        # 2. /metrics, as Prometheus scrapes it
        assert daemon.admin_url is not None
        async with aiohttp.ClientSession(base_url=daemon.admin_url) as http, http.get("/metrics") as resp:
            exported = scrape_realized(await resp.text()).get("1", {})
    assert sorted(exported) == sorted(["all", "0-25", "25-50", "50-75", "75-100"])
    assert exported["all"]["n"] == features["rows"]

    # 3. evaluate on the daemon's rows
    config_file = tmp_path / "scorebeater.toml"
    config_file.write_text(
        f'[data]\ndir = "{data_dir}"\n[model]\nbase_path = "{model_base}"\n'
        f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{tmp_path / "store"}"\n'
        f'[training]\nreport_dir = "{tmp_path / "reports"}"\n'
    )
    common = ["--config", str(config_file), "--seasons", str(SEASON)]
    code, out, err = await evaluate_json(capsys, *common, "--rows", "daemon")
    assert code == 0, err
    daemon_table = json.loads(out)
    assert list(daemon_table) == ["mlp", "pace", "logistic", "gbt"]
    for bucket, figures in exported.items():
        scored = daemon_table["mlp"][bucket]
        assert scored["n"] == figures["n"], bucket
        for metric in ("roc_auc", "brier", "log_loss", "ece", "accuracy"):
            assert scored[metric] == pytest.approx(figures[metric], abs=TOLERANCE), (bucket, metric)

    # 4. the training rows of the same season: one per game day, idle days included
    code, out, err = await evaluate_json(capsys, *common, "--data", str(data_dir))
    assert code == 0, err
    training_table = json.loads(out)
    assert training_table["mlp"]["all"]["n"] > daemon_table["mlp"]["all"]["n"]
    # ... and holds each daemon row: the same inputs, repeated on the days his team is idle;
    # the traded player has one daemon row more (see states()).
    async with open_storage(storage) as store:
        stored = await read_daemon_rows(store, [SEASON])
    assert stored.predicted_by == {1: len(stored.rows)}
    training = build_training_set(load_history(data_dir), [SEASON])
    assert len(training) == training_table["mlp"]["all"]["n"]
    assert states(stored.rows) == states(training)
    assert states(training, TRADED) < states(stored.rows, TRADED)
    assert len(states(stored.rows, TRADED) - states(training, TRADED)) == 1
    assert ROOKIE not in set(training.player_id.tolist()) | set(stored.rows.player_id.tolist())

    # 5. a season the daemon never validated
    code, _, err = await evaluate_json(
        capsys, "--config", str(config_file), "--seasons", str(SEASON - 1), "--rows", "daemon"
    )
    assert code != 0
    assert f"final outcomes for season(s) [{SEASON - 1}]" in err

    # 6. another version's predictions of each player's latest row (what a refeed by version 2
    # stores): the rows stay the same, and the count of what each version predicted says that
    # /metrics for version 2 would cover only these
    async with open_storage(storage) as store:
        latest = pa.concat_tables([t async for t in store.read_predictions(season=SEASON, latest_only=True)])
        await store.write_predictions(
            latest.set_column(
                latest.schema.get_field_index("model_version"),
                PREDICTIONS_SCHEMA.field("model_version"),
                pa.array([2] * latest.num_rows, pa.int64()),
            )
        )
        mixed = await read_daemon_rows(store, [SEASON])
    assert len(mixed.rows) == len(stored.rows)
    assert mixed.predicted_by == {1: len(stored.rows), 2: latest.num_rows}
    assert "version 2 did not predict every row" in mixed.describe(2)
    assert "did not predict" not in mixed.describe(1)
