"""Fixtures of the storage contract suite: one fresh, empty, ready backend per test.

``storage`` is parametrised over every backend. Each test gets its own place: a ``tmp_path``
directory (local), a unique prefix in the session bucket on the moto server (S3), a unique
schema in the session Postgres cluster (postgres); see ``tests/services/storage.py``.
``object_storage`` covers only the object-store backends, for the cases that inject faults
into their ``ObjectStore``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from scorebeater.storage import open_storage
from scorebeater.storage.objects import ObjectTableStorage
from tests.services.storage import BACKENDS, config_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from scorebeater.config import StorageConfig
    from scorebeater.storage.base import Storage

BATCH_ROWS = 64
"""Small, so that a few hundred rows already stream in several batches."""


@pytest.fixture(name="backend_config", params=BACKENDS)
def _backend_config(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageConfig:
    return config_for(request.param, request, tmp_path, monkeypatch, batch_rows=BATCH_ROWS, name="contract")


@pytest.fixture(name="storage")
async def _storage(backend_config: StorageConfig) -> AsyncIterator[Storage]:
    async with open_storage(backend_config) as storage:
        yield storage


@pytest.fixture(name="object_config", params=["local", "s3"])
def _object_config(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageConfig:
    return config_for(request.param, request, tmp_path, monkeypatch, batch_rows=BATCH_ROWS, name="contract")


@pytest.fixture(name="object_storage")
async def _object_storage(object_config: StorageConfig) -> AsyncIterator[ObjectTableStorage]:
    async with open_storage(object_config) as storage:
        assert isinstance(storage, ObjectTableStorage)
        yield storage
