"""A new version directory dropped in is served within the poll interval, with no failed request.

Scenario:
1. The stand-in serves score_beater v1 (policy latest 2, poll every 0.2 s).
2. A client keeps scoring: pin the latest version, predict 200 rows with it, repeat.
3. Version 2 is published atomically (copied to .tmp-2, renamed to 2).
4. The client sees version 2 within the poll interval plus the load time; every request of the
   run succeeded, and each version's probabilities are that SavedModel's own outputs (to float32
   rounding: the client sends batches of 64, the reference is one batch of 200).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import TFServingConfig
from scorebeater.errors import ModelUnavailable
from scorebeater.modelserver.app import serve_models
from scorebeater.testing.savedmodel import ModelCache, cached_models, in_process, publish, random_columns

POLL_S = 0.2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(name="model_cache", scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return cached_models(tmp_path_factory.getbasetemp() / "savedmodels")


async def test_new_version_is_served_without_a_failed_request(
    model_cache: ModelCache, tmp_path: Path
) -> None:
    base = tmp_path / "score_beater"
    publish(model_cache.score(1), base, 1)
    source_v2 = model_cache.score(2)
    config = tmp_path / "models.config"
    config.write_text(
        "model_config_list { config { name: 'score_beater' base_path: '/models/score_beater' "
        "model_version_policy { latest { num_versions: 2 } } } }"
    )
    columns = random_columns(200, seed=9)
    want = {1: in_process(model_cache.score(1), columns)[:, 0], 2: in_process(source_v2, columns)[:, 0]}
    async with (
        serve_models(base_path=base, port=0, poll_interval_s=POLL_S, models_config=config) as server,
        TFServingClient.open(
            TFServingConfig(base_url=server.url, max_batch_size=64), "score_beater"
        ) as client,
    ):
        results: list[tuple[float, int, np.ndarray]] = []
        published = asyncio.Event()

        async def keep_scoring() -> None:
            while True:
                version = await client.pin_version(None)
                probs = await client.predict(columns, version=version)
                results.append((time.monotonic(), version, probs))
                if version == 2:
                    return
                if len(results) >= 3:
                    published.set()

        scorer = asyncio.create_task(keep_scoring())
        await asyncio.wait_for(published.wait(), timeout=30)
        started = time.monotonic()
        await asyncio.to_thread(publish, source_v2, base, 2)
        await asyncio.wait_for(scorer, timeout=30)  # any failed request fails the test here
        first_v2 = next(t for t, v, _ in results if v == 2)
        # Pickup is bounded by one poll interval plus the load; leave room for a loaded CI box.
        assert first_v2 - started < POLL_S + 5.0
        # Batches of 64 against one of 200: TensorFlow's CPU kernels may round the rows of a
        # partial batch differently (1 ulp on AVX2-only machines), so not bit for bit. Versions 1
        # and 2 differ far more than this tolerance.
        for _, version, probs in results:
            np.testing.assert_allclose(probs, want[version], rtol=1e-6, atol=1e-7)
        assert {v for _, v, _ in results} == {1, 2}
        assert [(s.version, s.state) for s in await client.status()] == [(2, "AVAILABLE"), (1, "AVAILABLE")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_serve_model_command_serves_until_sigterm(model_cache: ModelCache, tmp_path: Path) -> None:
    """`scorebeater serve-model` loads model/score_beater-style directories and exits 0 on SIGTERM."""
    base = tmp_path / "score_beater"
    publish(model_cache.score(1), base, 3)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable, "-m", "scorebeater", "--log-format", "json", "serve-model",
        "--model-base-path", str(base), "--port", str(port),
        "--model-config-file", str(REPO / "tfserving" / "models.config"),
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with TFServingClient.open(
            TFServingConfig(base_url=f"http://127.0.0.1:{port}"), "score_beater"
        ) as client:
            deadline = time.monotonic() + 90
            while True:
                try:
                    assert await client.pin_version(None) == 3
                    break
                except ModelUnavailable:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    await asyncio.sleep(0.2)  # polling a subprocess that imports TensorFlow
            probs = await client.predict(random_columns(5), version=3)
            assert probs.shape == (5,)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert b"modelserver.label_pending" in stderr  # the repo's `stable` label names version 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
