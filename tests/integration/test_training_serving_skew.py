"""No training/serving skew: the daemon's stored features equal the training set's rows.

The training set is built from the data files (one row per player after every game day); the
daemon builds its rows from the Score API, game by game. For every training row (player, day),
the daemon's latest row as of that day's games must hold exactly the same model inputs, and
the daemon's stored training export (features joined with final outcomes) must carry the same
labels. One real season, end to end: replay server, stand-in, daemon, local storage; twice:
2014; 2013, after the 66-game 2012 season (the schedule inputs are not constant there); and
2007, the first season with games, whose previous season the Score API knows only
from its player totals (no ``scheduled_games_per_team``: the daemon and the training set both
read its schedule from the totals, :func:`scorebeater.schedule.scheduled_games_from_totals`).
The inputs compared include the previous season's schedule, the games missed in it and the
three-seasons-back counts.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

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
from scorebeater.inputs import INPUT_NAMES
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import bundled_catalog, bundled_history, running_replay
from scorebeater.training.dataset import build_training_set
from scorebeater.training.pipeline import _with_file_history, training_set_from_storage
from tests.integration.daemon_support import model_base_path

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "year", [2014, 2013, 2007], ids=["2014", "2013-after-66-games", "2007-previous-from-totals"]
)
async def test_daemon_features_equal_training_rows(tmp_path: Path, year: int) -> None:
    history = bundled_history()
    catalog = bundled_catalog()
    season = catalog.seasons[year]
    previous = catalog.seasons[year - 1]
    # 2007's previous season has no games, so no schedule from the Score API; 2014's has one.
    assert (previous.scheduled_games_per_team is None) == (year == 2007)
    assert season.last_regular_date is not None
    end = timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1)
    base = tmp_path / "model" / "score_beater"
    shutil.copytree(model_base_path(), base / "1")

    async with (
        running_replay(catalog, end) as replay,
        serve_models(model_name="score_beater", base_path=base, host="127.0.0.1", port=0) as models,
    ):
        cfg = Config(
            score_api=replay.client_config(),
            model=ModelConfig(name="score_beater"),
            tfserving=TFServingConfig(base_url=models.url),
            storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
            scheduler=SchedulerConfig(seasons=(year,)),
            admin=AdminConfig(enabled=False),
        )
        async with open_daemon(cfg) as daemon:
            await daemon.runners["features"].run_once()
            await daemon.runners["predictions"].run_once()
            await daemon.runners["validation"].run_once()
            served: dict[int, list[tuple[dt.datetime, tuple[float, ...]]]] = defaultdict(list)
            async for table in daemon.ctx.storage.read_feature_history(seasons=[year]):
                for row in table.to_pylist():
                    served[row["player_id"]].append(
                        (row["as_of_time"], tuple(row[name] for name in INPUT_NAMES))
                    )
            exported = await training_set_from_storage(daemon.ctx.storage)

    trained = build_training_set(history, seasons=[year])
    day_of_seq = {
        g.game_seq: g.date for g in history.games if g.season == year and g.season_type == "regular"
    }
    for rows in served.values():
        rows.sort()
    mismatched = []
    for i in range(len(trained)):
        pid = int(trained.player_id[i])
        when = timeline.final_at(day_of_seq[int(trained.as_of_seq[i])])
        rows = served.get(pid, [])
        k = bisect.bisect_right([t for t, _ in rows], when) - 1
        expected = tuple(float(trained.inputs[name][i]) for name in INPUT_NAMES)
        # Exactly equal: every input is a whole-number count, exact in float32 (no arithmetic).
        if k < 0 or rows[k][1] != expected:
            mismatched.append((pid, when, expected, rows[k][1] if k >= 0 else None))
    assert len(trained) > 50_000
    assert not mismatched, f"{len(mismatched)} of {len(trained)} rows differ, e.g. {mismatched[:3]}"
    # The added inputs are really exercised: the previous season's schedule (66 games before
    # 2013), players who missed games in it, and players with a season three back.
    assert set(trained.inputs["prev_season_games"].tolist()) == {66.0 if year == 2013 else 82.0}
    assert (trained.inputs["prev_games_missed"] > 0).mean() > 0.5
    assert (trained.inputs["prev3_games"] > 0).mean() > 0.5

    # The stored training export labels every stored row of the season with its final outcome.
    label_of = {int(p): bool(y) for p, y in zip(trained.player_id, trained.label, strict=True)}
    assert len(exported) == sum(len(rows) for pid, rows in served.items() if pid in label_of)
    for pid, label in zip(exported.player_id, exported.label, strict=True):
        assert label_of[int(pid)] == bool(label)

    # `train --from-storage`: the stored season plus the files' rows for every other season.
    combined, source = _with_file_history(exported, argparse.Namespace(data=None), cfg)
    assert source == "storage:local+bundled"
    assert combined.seasons() == list(range(2007, 2015))
    assert len(combined.for_seasons([year])) == len(exported)
