"""Rows per second through TFServingClient + the stand-in, against the in-process signature call.

Run: ``.venv/bin/python -m bench.bench_tfserving [--model-dir DIR] [--seconds S] [--repeat N]
[--batches 1,32,1024,8192]``

* The model: ``--model-dir`` (a SavedModel version directory), else the highest version under
  ``model/score_beater``, else a small model with the production signature exported to a temp
  directory (``scorebeater/testing/savedmodel.py``).
* In-process: the SavedModel's ``serving_default`` concrete function called on float32 tensors
  in this process (the ceiling: no HTTP, no JSON).
* REST: the stand-in runs in a **separate process** (``scorebeater serve-model``, as TF Serving
  would), on loopback; this process runs the client with ``max_batch_size`` = the batch size and
  ``max_concurrency`` = 4, keep-alive, in the columnar and the row format.

Both are measured in the same run on the same machine (client and server share its cores), and
the table gives REST / in-process. Target: columnar REST >= 20% of in-process at batch 1,024.
On a shared machine other work skews every cell: ``--repeat N`` measures every cell N times
(the sweeps interleaved, so load swings hit all columns alike) and reports medians, with the
load average seen by each sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.standin import model_dir, standin
from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import TFServingConfig
from scorebeater.inputs import INPUT_NAMES
from scorebeater.logs import configure_logging

BATCHES = (1, 32, 1024, 8192)
CONCURRENCY = 4
TARGET_RATIO_AT_1024 = 0.20
REPO = Path(__file__).resolve().parents[1]


def _columns(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.integers(0, 400, size=n).astype(np.float32) for name in INPUT_NAMES}


def in_process_rate(model_dir: Path, batch: int, seconds: float) -> float:
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    feed = {k: tf.constant(v) for k, v in _columns(batch).items()}
    fn(**feed)  # warm-up
    rows, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        out = fn(**feed)
        next(iter(out.values())).numpy()
        rows += batch
    return rows / elapsed


async def rest_rate(url: str, version: int, batch: int, fmt: str, seconds: float) -> float:
    cfg = TFServingConfig(base_url=url, max_batch_size=batch, max_concurrency=CONCURRENCY, format=fmt)  # type: ignore[arg-type]
    # One predict() call spans CONCURRENCY x 4 requests so the pipeline stays full.
    columns = _columns(batch * CONCURRENCY * 4)
    async with TFServingClient.open(cfg, "score_beater") as client:
        await client.predict(columns, version=version)  # warm-up and metadata
        rows, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            await client.predict(columns, version=version)
            rows += len(columns["ftm"])
    return rows / elapsed


def _fmt(rate: float) -> str:
    return f"{rate:,.0f}"


def _table(rows: list[dict[str, Any]], model_dir: Path, repeat: int, loads: list[float]) -> str:
    runs = f"median of {repeat} runs" if repeat > 1 else "one run"
    lines = [
        (
            f"Model: `{model_dir}`; stand-in in a separate process; "
            f"client concurrency {CONCURRENCY}, keep-alive; {runs} per cell."
        ),
        "",
        (
            "| batch | in-process rows/s | REST columnar rows/s | columnar / in-process "
            "| REST row rows/s | row / in-process |"
        ),
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']:,} | {_fmt(r['in'])} | {_fmt(r['col'])} | {r['col'] / r['in']:.0%} "
        f"| {_fmt(r['row'])} | {r['row'] / r['in']:.0%} |"
        for r in rows
    ]
    at_1024 = next((r for r in rows if r["batch"] == 1024), None)
    if at_1024 is not None:
        ratio = at_1024["col"] / at_1024["in"]
        verdict = "met" if ratio >= TARGET_RATIO_AT_1024 else "NOT met"
        lines += [
            "",
            (
                f"Target (columnar REST >= {TARGET_RATIO_AT_1024:.0%} of in-process at batch 1,024): "
                f"{verdict} ({ratio:.0%})."
            ),
        ]
    shown = ", ".join(f"{load:.1f}" for load in loads)
    lines.append(f"Load average (1 min) at the start of each sweep: {shown} on {os.cpu_count()} CPUs.")
    return "\n".join(lines)


def _sweep(
    url: str, version: int, model_dir: Path, batches: list[int], seconds: float
) -> list[dict[str, Any]]:
    """One measurement of every cell: in-process, columnar and row, batch by batch."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        ceiling = in_process_rate(model_dir, batch, seconds)
        columnar = asyncio.run(rest_rate(url, version, batch, "columnar", seconds))
        row = asyncio.run(rest_rate(url, version, batch, "row", seconds))
        rows.append({"batch": batch, "in": ceiling, "col": columnar, "row": row})
        progress = f"batch {batch}: in-process {_fmt(ceiling)}, columnar {_fmt(columnar)}, row {_fmt(row)}"
        print(progress, file=sys.stderr)
    return rows


def _medians(sweeps: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each cell's median over the sweeps (each ratio is then a ratio of medians)."""
    return [
        {
            "batch": cells[0]["batch"],
            **{key: statistics.median(c[key] for c in cells) for key in ("in", "col", "row")},
        }
        for cells in zip(*sweeps, strict=True)
    ]


def _batches(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text}: not a comma-separated list of integers") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text}: batch sizes must be >= 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="SavedModel version directory to serve")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per cell (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="sweeps to take the median of (default 1)")
    parser.add_argument(
        "--batches",
        type=_batches,
        default=list(BATCHES),
        help="comma-separated batch sizes (default 1,32,1024,8192)",
    )
    args = parser.parse_args(argv)
    configure_logging("console", "error")  # the readiness poll's connection retries are expected
    loads: list[float] = []
    sweeps: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tfserving-") as tmp:
        scratch = Path(tmp)
        model = args.model_dir if args.model_dir is not None else model_dir(scratch)
        with standin(model, scratch, max_batch_size=max(args.batches)) as served:
            for _ in range(max(args.repeat, 1)):
                loads.append(os.getloadavg()[0])
                sweeps.append(_sweep(served.url, served.version, model, args.batches, args.seconds))
    print(_table(_medians(sweeps), model, len(sweeps), loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
