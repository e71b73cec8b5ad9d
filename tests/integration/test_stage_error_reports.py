"""A stage's failure is reported by its real cause in ``GET /v1/status``, not by its wrapper.

The prediction stage writes predictions and cache entries concurrently (a TaskGroup): when
storage turns read-only both fail, and the status used to read ``ExceptionGroup: unhandled
errors in a TaskGroup`` while the cause was only in the log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pytest

from scorebeater import daemon as daemon_module
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
from scorebeater.errors import StorageUnavailable
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.storage import open_storage
from scorebeater.storage.base import PredictionCache, Storage
from scorebeater.testing.score_api import RunningReplay
from tests.integration.league import catalog_fixture, model_url_fixture, replay_fixture  # noqa: F401 - fixtures

SEASON = 2014


def _erofs(key: str) -> StorageUnavailable:
    """What the local backend raises when its file system is remounted read-only."""
    return StorageUnavailable(f"local store: EROFS on {key!r}: Read-only file system")


class ReadOnlySwitch:
    """Storage whose prediction and cache writes fail while ``read_only`` is set."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.read_only = False
        self.cache = ReadOnlyCache(inner.cache, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def write_predictions(self, rows: pa.Table, **kwargs: Any) -> None:
        if self.read_only:
            raise _erofs("predictions/part-0.parquet")
        await self._inner.write_predictions(rows, **kwargs)


class ReadOnlyCache:
    def __init__(self, inner: PredictionCache, switch: ReadOnlySwitch) -> None:
        self._inner = inner
        self._switch = switch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def put(self, model_version: int, entries: Mapping[str, float]) -> None:
        if self._switch.read_only:
            raise _erofs("cache/part-0.parquet")
        await self._inner.put(model_version, entries)


@pytest.fixture(name="switch")
def _switch(monkeypatch: pytest.MonkeyPatch) -> list[ReadOnlySwitch]:
    """The daemon's storage, wrapped at the Storage protocol: the opened switch is appended."""
    opened: list[ReadOnlySwitch] = []

    @contextlib.asynccontextmanager
    async def open_switchable(cfg: StorageConfig) -> AsyncIterator[ReadOnlySwitch]:
        async with open_storage(cfg) as storage:
            opened.append(ReadOnlySwitch(storage))
            yield opened[-1]

    monkeypatch.setattr(daemon_module, "open_storage", open_switchable)
    return opened


async def test_a_read_only_store_during_a_prediction_run_shows_its_cause_in_the_status(
    replay: RunningReplay,
    catalog: ReplayCatalog,
    model_url: str,
    tmp_path: Path,
    switch: list[ReadOnlySwitch],
) -> None:
    """1. the feature stage commits two game days of rows;
    2. storage turns read-only: the prediction run fails (both of its concurrent writes fail);
    3. /v1/status names the cause, StorageUnavailable with EROFS, not an exception group;
    4. storage is writable again: the next run stores the rows the failed run put back.
    """
    cfg = Config(
        score_api=replay.client_config(max_attempts=1, retry_budget_s=2.0),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store")),
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=0.5, shutdown_grace_s=5.0),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )
    days = sorted({e.game.date for e in catalog.seasons[SEASON].games if e.game.season_type == "regular"})
    async with open_daemon(cfg) as daemon:
        (storage,) = switch
        replay.clock.set(timeline.final_at(days[1]) + dt.timedelta(minutes=1))
        features = await daemon.runners["features"].run_once()
        assert features["rows"] > 0

        storage.read_only = True
        with pytest.raises(StorageUnavailable):
            await daemon.runners["predictions"].run_once()
        async with aiohttp.ClientSession() as http, http.get(f"{daemon.admin_url}/v1/status") as resp:
            assert resp.status == 200
            status = (await resp.json())["stages"]["predictions"]
        assert status["state"] == "backing_off"
        assert status["last_error"].startswith("StorageUnavailable: local store: EROFS on "), status
        assert "Read-only file system" in status["last_error"]
        assert status["watermark"]["pending_rows"] == features["rows"]

        storage.read_only = False
        result = await daemon.runners["predictions"].run_once()
        assert result["diff_rows"] == features["rows"]
