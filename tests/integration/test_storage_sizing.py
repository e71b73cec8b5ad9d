"""``backend = "auto"`` sized by measurement, against the replay Score API and real stores.

The replay serves the synthetic league (four teams, two matched players each, six games per
team a season; ``scorebeater.testing.score_api.synthetic_history``): a followed season
projects 8 players (the previous season's totals) x 6 games = 48 feature rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from scorebeater.config import Config, LocalStorageConfig, S3StorageConfig, SchedulerConfig, StorageConfig
from scorebeater.errors import FatalError, ScoreApiError
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.storage import open_storage
from scorebeater.storage.sizing import SeasonLike, SizeEstimate, measure, sized_config
from scorebeater.testing.score_api import RunningReplay, running_replay, synthetic_history
from tests.contract.test_storage import features, grid
from tests.services.storage import config_for

pytestmark = pytest.mark.services

SEASON = 2015
PROJECTED = 8 * 6


@pytest.fixture(name="replay")
async def _replay() -> AsyncIterator[RunningReplay]:
    catalog = ReplayCatalog.build(synthetic_history())
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        yield replay


def _auto(storage: StorageConfig, replay: RunningReplay, **overrides: object) -> Config:
    return Config(
        score_api=replay.client_config(),
        storage=dataclasses.replace(storage, backend="auto", **overrides),  # type: ignore[arg-type]
        scheduler=SchedulerConfig(seasons=(SEASON,)),
    )


def _event(logs: list[MutableMapping[str, Any]], name: str) -> MutableMapping[str, Any]:
    found = [e for e in logs if e["event"] == name]
    assert len(found) == 1, logs
    return found[0]


async def test_a_fresh_deployment_is_sized_from_the_score_api(
    replay: RunningReplay, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = config_for("s3", request, tmp_path, monkeypatch, name="sizing")
    pg = config_for("postgres", request, tmp_path, monkeypatch, name="sizing")
    storage = dataclasses.replace(s3, postgres=pg.postgres, local=LocalStorageConfig(root=tmp_path / "none"))

    with capture_logs() as logs:
        big = await sized_config(_auto(storage, replay, auto_threshold_rows=PROJECTED))
    assert (big.storage.backend, big.storage.expected_rows) == ("s3", PROJECTED)
    event = _event(logs, "storage.auto_sized")
    assert event["reason"] == "estimate"
    assert event["projected"] == {SEASON: {"players": 8, "games_per_team": 6, "from": "totals"}}

    small = await sized_config(_auto(storage, replay, auto_threshold_rows=PROJECTED + 1))
    assert small.storage.backend == "postgres"
    no_dsn = dataclasses.replace(storage, postgres=dataclasses.replace(pg.postgres, dsn=None))
    assert (await sized_config(_auto(no_dsn, replay, auto_threshold_rows=10**6))).storage.backend == "local"

    # Measuring created nothing: no local root, no Postgres schema.
    assert not (tmp_path / "none").exists()
    assert pg.postgres.dsn is not None
    conn = await asyncpg.connect(pg.postgres.dsn.get())
    try:
        assert await conn.fetchval("SELECT to_regnamespace($1)", pg.postgres.schema) is None
    finally:
        await conn.close()


async def test_an_existing_store_is_counted_and_kept(
    replay: RunningReplay, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = config_for("s3", request, tmp_path, monkeypatch, name="sizing")
    local = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    async with open_storage(local) as storage:
        await storage.write_features(features(grid(range(1, 41), [2013], range(1, 6))))  # 200 rows
    cfg = _auto(dataclasses.replace(s3, local=local.local), replay, auto_threshold_rows=100)

    estimate = await measure(cfg)
    assert estimate.stored == {"local": {2013: 200}}
    assert estimate.rows == 200 + PROJECTED
    with capture_logs() as logs:
        sized = await sized_config(cfg)
    # Over the threshold, but the history is on local files: kept there, and a warning says so.
    assert sized.storage.backend == "local"
    assert _event(logs, "storage.auto_sized")["reason"] == "existing_store"
    assert _event(logs, "storage.auto_outgrown")["suggested"] == "s3"


class _DownFeed:
    """A Score API that cannot be reached (after the client's retries)."""

    async def seasons(self) -> list[SeasonLike]:
        raise ScoreApiError("score_api", "connection refused", transient=True)

    def season_totals(self, season: int) -> AsyncIterator[object]:
        raise ScoreApiError("score_api", f"connection refused ({season})", transient=True)


async def test_expected_rows_overrides_and_a_down_score_api_is_not_fatal(tmp_path: Path) -> None:
    local = StorageConfig(backend="auto", local=LocalStorageConfig(root=tmp_path / "store"))
    override = Config(storage=dataclasses.replace(local, expected_rows=10**9))
    with capture_logs() as logs:
        sized = await sized_config(override, feed=_DownFeed())  # never asked
    assert (sized.storage.backend, sized.storage.expected_rows) == ("local", 10**9)  # no bucket, no DSN
    assert _event(logs, "storage.auto_sized")["reason"] == "expected_rows"

    with capture_logs() as logs:
        sized = await sized_config(Config(storage=local), feed=_DownFeed())
    assert sized.storage.backend == "local"
    _event(logs, "storage.auto.projection_failed")
    assert SizeEstimate().rows == 0

    # With a bucket the estimate decides between S3 and the others: on 0 rows, replicas
    # starting together could choose different stores. A new store is not sized blind.
    bucketed = dataclasses.replace(local, s3=S3StorageConfig(bucket="scorebeater"))
    with pytest.raises(FatalError, match="cannot size a new store"):
        await sized_config(Config(storage=bucketed), feed=_DownFeed())
