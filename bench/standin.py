"""The model to benchmark and the TF Serving stand-in in a child process, shared by benchmarks.

The stand-in runs in its own process, where TF Serving would be, so the client's and the
server's CPU costs are both counted, and the benchmark's process keeps its GIL to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import TFServingConfig
from scorebeater.errors import ModelUnavailable

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "score_beater"


def model_dir(scratch: Path) -> Path:
    """The repository's highest published version, else a freshly exported stand-in model."""
    base = REPO / "model" / MODEL_NAME
    versions = sorted(
        (int(p.name), p) for p in base.glob("*") if p.name.isdigit() and (p / "saved_model.pb").exists()
    )
    if versions:
        return versions[-1][1]
    from scorebeater.testing.savedmodel import export_score_model

    return export_score_model(scratch / "exported" / "1", seed=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> int:
    """Poll until the stand-in serves a version (returned); fail if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    cfg = TFServingConfig(base_url=url, max_attempts=1)
    async with TFServingClient.open(cfg, MODEL_NAME) as client:
        while True:
            try:
                return await client.pin_version(None)
            except ModelUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)


@dataclass(frozen=True, slots=True)
class StandIn:
    url: str
    version: int


@contextlib.contextmanager
def standin(model: Path, scratch: Path, *, max_batch_size: int = 8192) -> Iterator[StandIn]:
    """Run ``scorebeater serve-model`` over ``model`` (as version 1) in a child process."""
    base = scratch / "served"
    base.mkdir()
    (base / "1").symlink_to(model.resolve(), target_is_directory=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "scorebeater", "--log-level", "warning", "serve-model",
        "--model-base-path", str(base), "--port", str(port), "--max-batch-size", str(max_batch_size),
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        version = asyncio.run(wait_ready(url, proc))
        yield StandIn(url=url, version=version)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
