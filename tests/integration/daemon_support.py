"""Shared pieces of the daemon's integration tests: the model to serve, storage per backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorebeater.config import StorageConfig
from scorebeater.testing.savedmodel import cached_models
from tests.services.storage import BACKENDS, config_for

ROOT = Path(__file__).resolve().parents[2]
REPO_MODEL = ROOT / "model" / "score_beater"

__all__ = ["BACKENDS", "model_base_path", "storage_config"]


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
