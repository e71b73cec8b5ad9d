"""The set-up the daemon benchmarks share: the season, the daemon's config, the replay Score API.

The TF Serving stand-in runs in a child process (:mod:`bench.standin`), where TF Serving would
be. The Score API is the real replay app over the bundled 2014 season, in the benchmark's
process on loopback with a manual clock (:func:`scorebeater.testing.score_api.running_replay`):
its serving cost shares the event loop with the daemon and is counted in the daemon's figures
and in the ceilings alike. The daemon's model client uses ``config/scorebeater.toml``'s
settings (columnar predict, batches of 1,024, 4 in flight); storage ``batch_rows`` is 50,000.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.standin import MODEL_NAME
from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    PostgresStorageConfig,
    SchedulerConfig,
    ScoreApiConfig,
    Secret,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.inputs import INPUT_NAMES

SEASON = 2014
"""The season every daemon benchmark replays (the synthetic refeed players belong to it too)."""
BATCH_ROWS = 50_000


def tfserving_config(url: str) -> TFServingConfig:
    """The daemon's model client settings: those of ``config/scorebeater.toml``."""
    return TFServingConfig(base_url=url, format="columnar", max_batch_size=1024, max_concurrency=4)


def local_storage(root: Path) -> StorageConfig:
    """Local storage under ``root`` with the benchmarks' ``batch_rows``."""
    return StorageConfig(backend="local", batch_rows=BATCH_ROWS, local=LocalStorageConfig(root=root))


def postgres_storage(dsn: str, schema: str) -> StorageConfig:
    """Postgres storage in ``schema``; a long command timeout, since a million rows move at once."""
    postgres = PostgresStorageConfig(dsn=Secret(dsn), schema=schema, command_timeout_s=600)
    return StorageConfig(backend="postgres", batch_rows=BATCH_ROWS, postgres=postgres)


def daemon_config(score_api: ScoreApiConfig, model_url: str, storage: StorageConfig) -> Config:
    """A daemon following :data:`SEASON` only, polling every second, without its admin API."""
    return Config(
        score_api=score_api,
        model=ModelConfig(name=MODEL_NAME),
        tfserving=tfserving_config(model_url),
        storage=storage,
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=1.0, shutdown_grace_s=2.0),
        admin=AdminConfig(enabled=False),
    )


def columns_of(table: pa.Table) -> dict[str, np.ndarray]:
    """The model's inputs of ``table``'s rows, as the float32 columns a predict takes."""
    return {n: table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in INPUT_NAMES}


async def rest_predict_seconds(url: str, columns: dict[str, np.ndarray]) -> float:
    """Seconds of one ``TFServingClient.predict`` of ``columns`` with the daemon's settings.

    A one-row predict first (untimed) fetches the metadata and opens the keep-alive connection.
    """
    async with TFServingClient.open(tfserving_config(url), MODEL_NAME) as client:
        version = await client.pin_version(None)
        await client.predict({k: v[:1] for k, v in columns.items()}, version=version)
        started = time.perf_counter()
        await client.predict(columns, version=version)
        return time.perf_counter() - started
