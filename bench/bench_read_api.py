"""The read API's season listing, page by page over HTTP, against a raw storage scan.

    .venv/bin/python -m bench.bench_read_api [--quick] [--players N] [--limit N] [--max-pages N]
                                             [--order player] [--batch-rows N] [--backends local,postgres]

Per backend (local storage; Postgres 15 in a throwaway cluster from
``scorebeater.testing.postgres``), writes ``--players`` synthetic players (1,000,000; 20,000
with ``--quick``) of one season: one latest feature row each (name, team, counts), one
prediction each, an outcome for every other one. Then:

* **ceiling**: this process streams the season's latest predictions once with
  ``storage.read_predictions(season=S, latest_only=True)``: rows/s of a raw storage scan;
* **listing**: the admin app (``create_app``, the read routes of ``scorebeater/admin/read_api.py``)
  serves the store from a **child process** (so its RSS is its own); this process fetches
  ``GET /v1/predictions?season=S&order=...&limit=...`` page after page, following the cursor,
  up to ``--max-pages`` pages (0, the default: every page), once as JSON (parsed with
  ``orjson``, cursor from ``next_cursor``) and once as CSV (``Accept: text/csv``, parsed with
  the ``csv`` module, cursor from ``Link: rel="next"``). Rows/s = rows received / wall time,
  the client's parse included; the child's RSS (``VmRSS``) is sampled after each page and its
  peak (``VmHWM``) read at the end;
* **transport floor**: what no storage can beat. The same client fetches, for as many pages,
  a page that costs the server nothing: a second child process (a bare ``aiohttp`` app)
  answers every ``GET /v1/predictions`` with the bytes and headers of the listing's first
  page of the same format, kept in memory. Its rate bounds the listing's from above on any
  backend: it is the HTTP round trip and the client's parse of a 1,000-row page alone. Where
  the floor is below 50% of the scan, no storage can meet the target through this API.

In player order a page costs O(limit) on every backend (Postgres: one statement of index
probes; local: the Parquet row groups of the page's id range), see ``read_api``'s module doc.
Target: >= 50% of the scan's rate, flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import numpy as np
import orjson
import pyarrow as pa
import yarl

from bench.report import load_average, load_note, md_row, percent, verdict
from scorebeater.config import (
    LocalStorageConfig,
    PostgresStorageConfig,
    S3StorageConfig,
    Secret,
    StorageConfig,
)
from scorebeater.inputs import INPUT_NAMES
from scorebeater.logs import configure_logging
from scorebeater.storage import open_storage
from scorebeater.storage.base import (
    FEATURES_SCHEMA,
    OUTCOMES_SCHEMA,
    PREDICTIONS_SCHEMA,
    feature_hashes,
)
from scorebeater.testing.admin import storage_only_state

SEASON = 2014
TEAMS = ("ATL", "BOS", "BKN", "CHA", "CHI", "CLE", "DAL", "DEN", "DET", "GSW")
MB = 1024 * 1024
TARGET = 0.5
"""The listing's rate as a share of the raw scan's (issue 14)."""


# --- data ------------------------------------------------------------------------------------------


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us, pa.timestamp("us", tz="UTC"))


def synthetic(players: int, seed: int = 14) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Feature rows, predictions and outcomes of ``players`` players of one season, as of game 60."""
    rng = np.random.default_rng(seed)
    pid = np.arange(1, players + 1, dtype=np.int64) * 3
    seq = np.full(players, 60, dtype=np.int32)
    at = np.full(players, np.datetime64("2014-02-20T03:00:00", "us").astype(np.int64))
    prev_ftm = rng.integers(0, 600, players).astype(np.float32)
    inputs = {name: np.ones(players, dtype=np.float32) for name in INPUT_NAMES}
    inputs |= {
        "prev_ftm": prev_ftm,
        "prev_fta": prev_ftm * 1.25,
        "ftm": (prev_ftm * rng.uniform(0.5, 0.9, players)).round().astype(np.float32),
        "team_games": np.full(players, 60, dtype=np.float32),
        "season_games": np.full(players, 82, dtype=np.float32),
        "experience": np.full(players, 5, dtype=np.float32),
        "age": np.full(players, 27, dtype=np.float32),
    }
    inputs["fta"] = inputs["ftm"] * 1.25
    features = pa.table(
        {
            "player_id": pid,
            "season": pa.array(np.full(players, SEASON, dtype=np.int32)),
            "as_of_seq": seq,
            "as_of_game_id": pa.array(np.full(players, "0021300900", dtype=object)),
            "as_of_time": _ts(at),
            "player": pa.array([f"Player {p} Smith" for p in pid.tolist()]),
            "team": pa.array(np.array(TEAMS, dtype=object)[pid % len(TEAMS)]),
            **{name: pa.array(inputs[name]) for name in INPUT_NAMES},
            "feature_hash": pa.array(np.full(players, "", dtype=object)),
        }
    ).cast(FEATURES_SCHEMA)
    hashes = pa.array(feature_hashes(features), pa.string())
    features = features.set_column(features.num_columns - 1, "feature_hash", hashes)
    predictions = pa.table(
        {
            "player_id": pid,
            "season": pa.array(np.full(players, SEASON, dtype=np.int32)),
            "as_of_seq": seq,
            "as_of_time": _ts(at),
            "model_version": np.ones(players, dtype=np.int64),
            "probability": rng.uniform(0, 1, players),
            "feature_hash": hashes,
            "progress": pa.array(np.full(players, 60 / 82, dtype=np.float32)),
            "predicted_at": _ts(at + 1_000_000),
            "role": pa.array(np.full(players, "champion", dtype=object)),
        }
    ).cast(PREDICTIONS_SCHEMA)
    half = pid[::2]
    outcomes = pa.table(
        {
            "player_id": half,
            "season": pa.array(np.full(len(half), SEASON, dtype=np.int32)),
            "beat": pa.array(rng.uniform(0, 1, len(half)) < 0.4),
            "resolution": pa.array(np.full(len(half), "early", dtype=object)),
            "resolved_seq": np.full(len(half), 55, dtype=np.int32),
            "resolved_at": _ts(at[: len(half)]),
            "ftm": np.full(len(half), 100, dtype=np.int32),
            "prev_ftm": np.full(len(half), 90, dtype=np.int32),
            "resolved_early_seq": np.full(len(half), 55, dtype=np.int32),
            "resolved_early_at": _ts(at[: len(half)]),
        }
    ).cast(OUTCOMES_SCHEMA)
    return features, predictions, outcomes


DSN_ENV = "SCOREBEATER_BENCH_READ_API_DSN"
"""How the child server gets the throwaway cluster's DSN (not on its command line)."""


S3_ENV = "SCOREBEATER_BENCH_READ_API_S3"
"""How the child server gets moto's endpoint."""
S3_BUCKET = "scorebeater-bench"


def _config(backend: str, root: Path, batch_rows: int) -> StorageConfig:
    if backend == "postgres":
        postgres = PostgresStorageConfig(dsn=Secret(os.environ[DSN_ENV]), schema="bench_read_api")
        return StorageConfig(backend="postgres", postgres=postgres, batch_rows=batch_rows)
    if backend == "s3":
        s3 = S3StorageConfig(
            bucket=S3_BUCKET,
            prefix="bench_read_api",
            endpoint_url=os.environ[S3_ENV],
            addressing_style="path",
        )
        return StorageConfig(backend="s3", s3=s3, batch_rows=batch_rows)
    return StorageConfig(backend="local", local=LocalStorageConfig(root=root), batch_rows=batch_rows)


async def _create_bucket(endpoint: str) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=endpoint) as client:
        await client.create_bucket(Bucket=S3_BUCKET)


async def write(config: StorageConfig, players: int) -> None:
    features, predictions, outcomes = synthetic(players)
    async with open_storage(config) as storage:
        for start in range(0, players, 250_000):
            await storage.write_features(features.slice(start, 250_000))
            await storage.write_predictions(predictions.slice(start, 250_000))
        await storage.write_outcomes(outcomes)


async def raw_scan(config: StorageConfig) -> tuple[int, float]:
    """Rows and seconds of one stream of the season's latest predictions."""
    async with open_storage(config) as storage:
        start = time.perf_counter()
        rows = 0
        async for table in storage.read_predictions(season=SEASON, latest_only=True):
            rows += table.num_rows
        return rows, time.perf_counter() - start


# --- the server (child process) -------------------------------------------------------------------


async def serve(backend: str, root: Path, batch_rows: int) -> None:
    """The admin app over the store on a loopback port (written to ``<root>/../port``) until killed."""

    from scorebeater.admin.app import create_app

    async with open_storage(_config(backend, root, batch_rows)) as storage:
        await _serve_until_killed(create_app(storage_only_state(storage)), root.parent / "port")


def _proc_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/{pid}/status")


def _start_server(backend: str, root: Path, batch_rows: int) -> subprocess.Popen[str]:
    module = "bench.bench_read_api"
    command = [sys.executable, "-m", module, "--serve", str(root), "--batch-rows", str(batch_rows)]
    command += ["--backends", backend]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, text=True)


def _read_port(port_file: Path) -> int | None:
    return int(port_file.read_text()) if port_file.exists() else None


async def _port(port_file: Path, child: subprocess.Popen[str]) -> int:
    while (port := _read_port(port_file)) is None:
        if child.poll() is not None:
            raise RuntimeError(f"the server exited with {child.returncode}")
        await asyncio.sleep(0.05)
    return port


@dataclass
class Listing:
    """One listing run: rows received, pages, seconds, per-page seconds, the server's RSS (KiB)
    after each page, and its first page (body, ``Content-Type``, ``Link`` or ``""``)."""

    rows: int
    pages: int
    seconds: float
    page_s: list[float]
    rss_kb: list[int]
    first: tuple[bytes, str, str]

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


async def serve_floor(directory: Path) -> None:
    """The transport floor's server (child process): every ``GET /v1/predictions`` answered with
    the first page the real listing sent in that format (``Accept: text/csv``: the CSV one),
    from memory; the port is written to ``<directory>/port``."""
    from aiohttp import web

    pages = {
        fmt: (
            (directory / f"{fmt}.body").read_bytes(),
            orjson.loads((directory / f"{fmt}.headers").read_bytes()),
        )
        for fmt in ("json", "csv")
    }

    async def page(request: web.Request) -> web.Response:
        body, headers = pages["csv" if request.headers.get("Accept") == "text/csv" else "json"]
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/predictions", page)
    await _serve_until_killed(app, directory / "port")


async def _serve_until_killed(app: Any, port_file: Path) -> None:
    """Serve ``app`` on a loopback port, written to ``port_file`` (whole, never half-written)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = cast("Any", site._server)  # noqa: SLF001 - the bound port
    port_file.with_suffix(".tmp").write_text(str(server.sockets[0].getsockname()[1]))
    port_file.with_suffix(".tmp").rename(port_file)
    await asyncio.Event().wait()


async def list_pages(port: int, pid: int, order: str, limit: int, max_pages: int, *, fmt: str) -> Listing:
    """Page through ``GET /v1/predictions`` until the last page or ``max_pages`` (0: no cap).

    ``fmt`` ``json``: each body parsed with ``orjson`` (the client's parse is part of the
    time; ``orjson`` so that the client's parser costs less than the server's work), the
    cursor from ``next_cursor``; ``csv`` (``Accept: text/csv``): each body parsed with the
    ``csv`` module, the cursor from the ``Link: rel="next"`` header.
    """
    rows = pages = 0
    page_s: list[float] = []
    rss: list[int] = []
    first: tuple[bytes, str, str] | None = None
    cursor: str | None = None
    start = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None)
    headers = {"Accept": "text/csv" if fmt == "csv" else "application/json"}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while True:
            params = {"season": str(SEASON), "order": order, "limit": str(limit)}
            if cursor:
                params["cursor"] = cursor
            t0 = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{port}/v1/predictions", params=params) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"page {pages + 1}: {resp.status} {raw[:500]!r}")
                if first is None:
                    first = (raw, resp.headers["Content-Type"], resp.headers.get("Link", ""))
                if fmt == "csv":
                    received = sum(1 for _ in csv.reader(io.StringIO(raw.decode()))) - 1  # the header
                    link = resp.links.get("next")
                    cursor = None if link is None else yarl.URL(str(link["url"])).query.get("cursor")
                else:
                    body = orjson.loads(raw)
                    received = len(body["items"])
                    cursor = body["next_cursor"]
            page_s.append(time.perf_counter() - t0)
            rss.append(_proc_kb(pid, "VmRSS"))
            rows += received
            pages += 1
            if pages % 100 == 0 or cursor is None:
                note = f"{received} rows, {page_s[-1]:.3f} s, server RSS {rss[-1] / 1024:.0f} MB"
                print(f"{fmt} page {pages}: {note}", file=sys.stderr, flush=True)
            if cursor is None or (max_pages and pages >= max_pages):
                assert first is not None  # the loop ran once
                return Listing(rows, pages, time.perf_counter() - start, page_s, rss, first)


async def bench_backend(backend: str, args: argparse.Namespace, root: Path) -> str:
    """One backend's table row."""
    config = _config(backend, root, args.batch_rows)
    t0 = time.perf_counter()
    await write(config, args.players)
    if backend == "postgres":
        # A live database has statistics (autovacuum); right after a bulk load it has none yet.
        import asyncpg

        conn = await asyncpg.connect(os.environ[DSN_ENV])
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
    print(f"{backend}: wrote {args.players:,} players in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    scan_rows, scan_s = await raw_scan(config)
    child = _start_server(backend, root, args.batch_rows)
    try:
        port = await _port(root.parent / "port", child)
        idle_kb = _proc_kb(child.pid, "VmRSS")
        listed = {
            fmt: await list_pages(port, child.pid, args.order, args.limit, args.max_pages, fmt=fmt)
            for fmt in ("json", "csv")
        }
        peak_kb = _proc_kb(child.pid, "VmHWM")
    finally:
        child.terminate()
        child.wait(timeout=30)
    floor = await transport_floor(root.parent / "floor", listed, args)
    scan_rate = scan_rows / scan_s

    def listing(fmt: str) -> list[str]:
        run = listed[fmt]
        which = "all" if run.pages * args.limit >= args.players else f"first {run.pages}"
        return [
            f"{run.rate:,.0f} ({run.rows:,} rows, {which} pages, {run.seconds:.1f} s)",
            f"{percent(run.rate / scan_rate)}: {verdict(run.rate / scan_rate >= TARGET)}",
            f"{floor[fmt].rate:,.0f} ({percent(floor[fmt].rate / scan_rate)})",
        ]

    json_run = listed["json"]
    return md_row(
        backend,
        f"{scan_rate:,.0f} ({scan_s:.2f} s)",
        *listing("json"),
        *listing("csv"),
        f"{float(np.median(json_run.page_s)) * 1000:,.1f} / {max(json_run.page_s) * 1000:,.0f}",
        f"{idle_kb / 1024:,.0f} / {json_run.rss_kb[0] / 1024:,.0f} / {json_run.rss_kb[-1] / 1024:,.0f}"
        f" / {peak_kb / 1024:,.0f}",
    )


def _start_floor(directory: Path, listed: dict[str, Listing]) -> subprocess.Popen[str]:
    directory.mkdir()
    for fmt, run in listed.items():
        body, content_type, link = run.first
        (directory / f"{fmt}.body").write_bytes(body)
        headers = {"Content-Type": content_type} | ({"Link": link} if link else {})
        (directory / f"{fmt}.headers").write_bytes(orjson.dumps(headers))
    command = [sys.executable, "-m", "bench.bench_read_api", "--serve-floor", str(directory)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, text=True)


async def transport_floor(
    directory: Path, listed: dict[str, Listing], args: argparse.Namespace
) -> dict[str, Listing]:
    """Per format, the same client's rate over as many pages (at most 1,000) of the listing's
    first page served from memory by a bare ``aiohttp`` app in a child process."""
    child = _start_floor(directory, listed)
    try:
        port = await _port(directory / "port", child)
        return {
            fmt: await list_pages(port, child.pid, args.order, args.limit, min(run.pages, 1000), fmt=fmt)
            for fmt, run in listed.items()
        }
    finally:
        child.terminate()
        child.wait(timeout=30)


async def run(args: argparse.Namespace) -> list[str]:
    out = [
        (
            f"{args.players:,} players, one season; `order={args.order}`, `limit={args.limit}`; "
            f"storage batch_rows {args.batch_rows:,}."
        ),
        "",
        md_row(
            "backend",
            "raw scan (`read_predictions(latest_only=True)`), rows/s",
            "JSON listing through the API, rows/s",
            "JSON listing / scan (target >= 50%)",
            "JSON transport floor, rows/s (/ scan)",
            "CSV listing, rows/s",
            "CSV listing / scan",
            "CSV transport floor, rows/s (/ scan)",
            "JSON page ms p50 / max",
            "server RSS MB: idle / after JSON page 1 / after the last JSON page / peak (JSON + CSV)",
        ),
        md_row(*["---"] * 10),
    ]
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bench-read-api-") as tmp:
            root = Path(tmp) / "store"
            if backend == "postgres":
                from scorebeater.testing.postgres import run_postgres

                with run_postgres() as dsn:
                    os.environ[DSN_ENV] = dsn
                    out.append(await bench_backend(backend, args, root))
            elif backend == "s3":
                from scorebeater.testing.s3 import run_moto

                # moto accepts any credentials; the client (and the child server) needs some.
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    os.environ.setdefault(name, "bench")
                with run_moto() as endpoint:
                    os.environ[S3_ENV] = endpoint
                    await _create_bucket(endpoint)
                    out.append(await bench_backend(backend, args, root))
            else:
                out.append(await bench_backend(backend, args, root))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_read_api", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--players", type=int, default=1_000_000, help="synthetic players (1,000,000)")
    parser.add_argument("--quick", action="store_true", help="20,000 players")
    parser.add_argument("--limit", type=int, default=1000, help="rows per page (1,000)")
    parser.add_argument("--max-pages", type=int, default=0, help="stop after this many pages (0: every page)")
    parser.add_argument("--order", default="player", help="order= of the listing (player)")
    parser.add_argument("--batch-rows", type=int, default=50_000, help="storage.batch_rows (50,000)")
    parser.add_argument(
        "--backends",
        default="local,postgres",
        help="comma-separated: local,postgres,s3 (moto, in this process)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging("console", "warning")  # stderr: stdout carries only the Markdown tables
    if args.serve_floor is not None:
        asyncio.run(serve_floor(args.serve_floor))
        return 0
    if args.serve is not None:
        asyncio.run(serve(args.backends, args.serve, args.batch_rows))
        return 0
    if args.quick:
        args.players = 20_000
    before = load_average()
    lines = asyncio.run(run(args))
    print("\n".join(lines))
    print()
    print(load_note(before, load_average()))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
