"""Fixtures for fast scenarios over a small synthetic league (four teams, six game days).

Import the ones a test module needs (pytest finds fixtures among a module's names):
``catalog`` (built once per module), ``replay`` (the real replay server on loopback, clock at
the day before season 2014, with a fault injector) and ``model_url`` (the TF Serving stand-in
over a small exported model, version 1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.savedmodel import cached_models, publish
from scorebeater.testing.score_api import RunningReplay, running_replay, synthetic_history

SEASON = 2014
MODEL_CACHE = Path("/tmp/scorebeater-test-models")  # noqa: S108 - a per-machine cache of exports


@pytest.fixture(name="catalog", scope="module")
def catalog_fixture() -> ReplayCatalog:
    return ReplayCatalog.build(synthetic_history())


@pytest.fixture(name="replay")
async def replay_fixture(catalog: ReplayCatalog) -> AsyncIterator[RunningReplay]:
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        yield replay


@pytest.fixture(name="model_url")
async def model_url_fixture(tmp_path: Path) -> AsyncIterator[str]:
    base = tmp_path / "model" / "score_beater"
    publish(cached_models(MODEL_CACHE).score(1), base, 1)
    async with serve_models(
        model_name="score_beater", base_path=base, host="127.0.0.1", port=0, poll_interval_s=60
    ) as server:
        yield server.url
