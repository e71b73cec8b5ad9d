"""Fuzz the admin API against ``scorebeater/admin/openapi.yaml``.

The admin API is that of a real daemon (``open_daemon``: local storage, the replay Score API,
the TF Serving stand-in) whose stages are opened but never served, marked started so that
``/readyz`` runs its real checks. Storage holds a few predictions for the edge ids and seasons
the fuzzer tries first (1, 2 and int64's max; seasons 1947, 1948, 2014, 2099, 2100), with their
feature rows (names, teams, counts) and a few outcomes, so successful answers (the read API's
lists and player view among them) are checked against the document too. Every request carries
the admin token, so the POSTs get past auth (schemathesis also sends them without it and with
broken values, which must be 401s); with no stage running, an accepted refeed or stage run is
only recorded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import schemathesis

from scorebeater.bounds import PLAYER_ID
from scorebeater.bounds import SEASON as BOUND
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
from scorebeater.daemon import open_daemon
from scorebeater.inputs import INPUT_NAMES
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.storage import open_storage
from scorebeater.storage.base import PREDICTIONS_SCHEMA, conform_features
from scorebeater.testing.score_api import running_replay, synthetic_history
from scorebeater.testing.threads import serving_in_thread
from tests.fuzz.conftest import fuzz_config, still_healthy

ADMIN_TOKEN = "fuzz-admin-t0ken"
SCORE_TOKEN = "fuzz-score-t0ken"
SEASON = 2014
SPEC = Path(str(resources.files("scorebeater.admin").joinpath("openapi.yaml")))

PLAYERS = (PLAYER_ID.lo, PLAYER_ID.lo + 1, PLAYER_ID.hi)
SEASONS = (BOUND.lo, BOUND.lo + 1, SEASON, BOUND.hi - 1, BOUND.hi)

schema = schemathesis.openapi.from_path(SPEC, config=fuzz_config())


def _predictions() -> pa.Table:
    t0 = dt.datetime(2013, 11, 1, tzinfo=dt.UTC)
    keys = list(itertools.product(PLAYERS, SEASONS, (1, 2, 3)))
    return pa.table(
        {
            "player_id": [k[0] for k in keys],
            "season": [k[1] for k in keys],
            "as_of_seq": [k[2] for k in keys],
            "as_of_time": [t0 + dt.timedelta(days=k[2]) for k in keys],
            "model_version": [1] * len(keys),
            "probability": [0.1 * k[2] for k in keys],
            "feature_hash": [f"{k[0]:x}-{k[1]}-{k[2]}" for k in keys],
            "progress": [k[2] / 82 for k in keys],
            "predicted_at": [t0 + dt.timedelta(days=k[2], hours=1) for k in keys],
            "role": ["champion"] * len(keys),
        },
        schema=PREDICTIONS_SCHEMA,
    )


def _features() -> pa.Table:
    """Each edge player's latest feature row (name, team, counts) per edge season, so the read
    API's lists and player view answer with items too."""
    t0 = dt.datetime(2013, 11, 1, tzinfo=dt.UTC)
    keys = list(itertools.product(PLAYERS, SEASONS))
    rows = pa.table(
        {
            "player_id": [k[0] for k in keys],
            "season": [k[1] for k in keys],
            "as_of_seq": [3] * len(keys),
            "as_of_game_id": ["0021300003"] * len(keys),
            "as_of_time": [t0 + dt.timedelta(days=3)] * len(keys),
            "player": [f"Fuzz <b>Player</b> {k[0]}" for k in keys],
            "team": ["BOS"] * len(keys),
            **{name: [1.0] * len(keys) for name in INPUT_NAMES},
            "feature_hash": [f"{k[0]:x}-{k[1]}" for k in keys],
        }
    )
    return conform_features(rows)


def _outcomes() -> pa.Table:
    t0 = dt.datetime(2014, 4, 16, tzinfo=dt.UTC)
    keys = list(itertools.product(PLAYERS[:2], SEASONS))
    return pa.table(
        {
            "player_id": [k[0] for k in keys],
            "season": pa.array([k[1] for k in keys], pa.int32()),
            "beat": [k[0] % 2 == 0 for k in keys],
            "resolution": ["final"] * len(keys),
            "resolved_seq": pa.array([82] * len(keys), pa.int32()),
            "resolved_at": pa.array([t0] * len(keys), pa.timestamp("us", tz="UTC")),
            "ftm": pa.array([1] * len(keys), pa.int32()),
            "prev_ftm": pa.array([1] * len(keys), pa.int32()),
            "resolved_early_seq": pa.array([None] * len(keys), pa.int32()),
            "resolved_early_at": pa.array([None] * len(keys), pa.timestamp("us", tz="UTC")),
        }
    )


@contextlib.asynccontextmanager
async def _admin(store: Path, standin_url: str) -> AsyncIterator[str]:
    catalog = ReplayCatalog.build(synthetic_history())
    async with running_replay(catalog, catalog.default_start(SEASON), token=SCORE_TOKEN) as replay:
        cfg = Config(
            score_api=replay.client_config(token=Secret(SCORE_TOKEN), max_attempts=1, retry_budget_s=2.0),
            model=ModelConfig(name="score_beater"),
            tfserving=TFServingConfig(base_url=standin_url, max_attempts=1, retry_budget_s=2.0),
            storage=StorageConfig(backend="local", local=LocalStorageConfig(root=store)),
            scheduler=SchedulerConfig(seasons=(SEASON,)),
            admin=AdminConfig(host="127.0.0.1", port=0, token=Secret(ADMIN_TOKEN)),
        )
        async with open_storage(cfg.storage) as storage:
            await storage.write_predictions(_predictions())
            await storage.write_features(_features())
            await storage.write_outcomes(_outcomes())
        async with open_daemon(cfg) as daemon:
            daemon.started.set()  # /readyz checks for real; the stages never run
            assert daemon.admin_url is not None
            yield daemon.admin_url


@pytest.fixture(name="admin_url", scope="module")
def _admin_url(standin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("fuzz-admin-store")
    with serving_in_thread(lambda: _admin(store, standin_url), name="fuzz-admin") as url:
        yield url
        still_healthy(f"{url}/healthz")
        still_healthy(f"{url}/v1/status")


@schema.parametrize()
def test_admin_api(case: schemathesis.Case[Any], admin_url: str) -> None:
    case.call_and_validate(base_url=admin_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
