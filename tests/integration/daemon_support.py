"""Shared pieces of the daemon's integration tests: the model to serve, storage per backend,
and a season's services (replay + model server) with the uninterrupted run to compare with."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scorebeater.config import LocalStorageConfig, StorageConfig
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.daemon_process import Snapshot, uninterrupted_run
from scorebeater.testing.savedmodel import cached_models
from scorebeater.testing.score_api import RunningReplay, bundled_catalog, running_replay
from tests.services.storage import BACKENDS, config_for

ROOT = Path(__file__).resolve().parents[2]
REPO_MODEL = ROOT / "model" / "score_beater"

__all__ = [
    "BACKENDS",
    "SEASON",
    "Services",
    "model_base_path",
    "reference",
    "season_services",
    "storage_config",
]

SEASON = 2014


def model_base_path() -> Path:
    """The repository's published model (highest version), else a small stand-in export.

    The published model makes realized metrics meaningful; the stand-in keeps the tests
    runnable on a checkout that has not trained one.
    """
    versions = sorted(int(p.name) for p in REPO_MODEL.glob("*") if p.name.isdigit())
    if versions:
        return REPO_MODEL / str(versions[-1])
    return cached_models(Path("/tmp/scorebeater-test-models")).score(1)  # noqa: S108 - a per-machine cache


def storage_config(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageConfig:
    return config_for(backend, request, tmp_path, monkeypatch, batch_rows=5_000, name="e2e")


@dataclass
class Services:
    replay: RunningReplay
    model_url: str
    mid_season: dt.datetime
    season_end: dt.datetime


@pytest.fixture(name="services")
async def season_services(tmp_path: Path) -> AsyncIterator[Services]:
    """The 2014 replay (clock at the season's start) and a model server of the published model."""
    catalog = bundled_catalog()
    season = catalog.seasons[SEASON]
    assert season.last_regular_date is not None
    start = catalog.default_start(SEASON)
    base = tmp_path / "model" / "score_beater"
    shutil.copytree(model_base_path(), base / "1")
    async with (
        running_replay(catalog, start) as replay,
        serve_models(model_name="score_beater", base_path=base, host="127.0.0.1", port=0) as models,
    ):
        yield Services(
            replay=replay,
            model_url=models.url,
            mid_season=start + dt.timedelta(days=45),
            season_end=timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1),
        )


_reference: dict[str, Snapshot] = {}


async def reference(services: Services, root: Path) -> Snapshot:
    """What an uninterrupted daemon stores for the whole regular season (computed once per
    session, shared by every test that compares with it)."""
    if "snapshot" not in _reference:
        storage = StorageConfig(backend="local", local=LocalStorageConfig(root=root / "reference"))
        # A replay of its own: the test's replay clock must stay free to start mid-season.
        async with running_replay(services.replay.catalog, services.season_end) as replay:
            _reference["snapshot"] = await uninterrupted_run(
                replay.client_config(), services.model_url, storage, SEASON
            )
    return _reference["snapshot"]
