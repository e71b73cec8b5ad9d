"""Gzip bombs cost the TF Serving stand-in CPU, not memory.

Scenario: ``scorebeater serve-model`` runs in its own process over a small model; after a
plain and a gzip predict its resident set (``VmRSS``) is the baseline. Twenty requests each
send a ~600 KB gzip body that inflates past the 512 MiB body limit; each gets TF Serving's
``{"error": ...}`` with 413, the process's RSS stays within 100 MB of the baseline (the
inflated bytes are counted while they stream, never held), and it still predicts afterwards.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import unused_port

from scorebeater.inputs import INPUT_NAMES
from scorebeater.modelserver.app import MAX_BODY_BYTES
from scorebeater.testing.savedmodel import cached_models, publish

BOMBS = 20
RSS_MARGIN_BYTES = 100 * 1000**2
PREDICT = "/v1/models/score_beater:predict"
STARTUP_TIMEOUT_S = 90.0


def _bomb() -> bytes:
    """One gzip stream of zeros that inflates 64 MiB past the stand-in's body limit (~600 KB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1024**2)
    parts = [compressor.compress(zeros) for _ in range(MAX_BODY_BYTES // len(zeros) + 64)]
    parts.append(compressor.flush())
    return b"".join(parts)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(name="standin")
def _standin(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    model = cached_models(Path("/tmp/scorebeater-test-models")).score(1)  # noqa: S108 - a per-machine cache
    base = tmp_path / "model" / "score_beater"
    publish(model, base, 1)
    port = unused_port()
    log = (tmp_path / "serve-model.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scorebeater",
            "serve-model",
            "--model-base-path",
            str(base),
            "--port",
            str(port),
            "--file-system-poll-wait-seconds",
            "60",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def _wait_until_serving(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "serve-model exited during start-up"
        try:
            async with session.get(f"{url}/v1/models/score_beater") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.25)  # a separate process: polling is the only way to see it listen
    pytest.fail(f"serve-model did not serve within {STARTUP_TIMEOUT_S} s")


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_rss_stays_flat_across_twenty_gzip_bombs(standin: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, process = standin
    bomb = await asyncio.to_thread(_bomb)
    assert len(bomb) < 700 * 1024
    rows = orjson.dumps({"instances": [dict.fromkeys(INPUT_NAMES, 10.0)] * 8})
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await _wait_until_serving(session, url, process)
        # 1. warm up (TensorFlow's first call allocates), then take the baseline
        for body, headers in ((rows, {}), (gzip.compress(rows), {"Content-Encoding": "gzip"})):
            async with session.post(url + PREDICT, data=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
        baseline = _rss_bytes(process.pid)
        # 2. the bombs: each a 413 in TF Serving's error shape
        peak = baseline
        for _ in range(BOMBS):
            async with session.post(url + PREDICT, data=bomb, headers={"Content-Encoding": "gzip"}) as resp:
                assert resp.status == 413, await resp.text()
                assert resp.content_type == "application/json"
                assert "larger than" in (await resp.json())["error"]
            peak = max(peak, _rss_bytes(process.pid))
        # 3. memory stayed flat, and the server still predicts
        after = _rss_bytes(process.pid)
        mib = 1024**2
        assert peak - baseline <= RSS_MARGIN_BYTES, (baseline // mib, peak // mib, after // mib)
        async with session.post(url + PREDICT, data=rows) as resp:
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["predictions"]) == 8
