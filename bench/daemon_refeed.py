"""Refeed: every player's latest feature row through the model again, per storage backend.

Scenario:

1. Synthetic players (:func:`synthetic_players`: unique ids, one season) are drawn from the
   real point-in-time training set's rows with jittered counts, and written as feature rows
   into local storage and into a throwaway Postgres (:mod:`scorebeater.testing.postgres`).
2. Per backend, a daemon in a **child process** (so the peak RSS is the daemon's own) runs
   three phases over the stored rows (:func:`refeed_worker`):
   a. its first prediction run after start: the reconcile finds every row unpredicted and
      scores it as a diff;
   b. a refeed with the cache cleared (``handoff.request_refeed(clear_cache=True)``, then one
      run of the refeed stage): every row through the model;
   c. a refeed without clearing: every row a cache hit.
   Players/s = rows / wall time of the phase's ``run_once``. Peak RSS is the child's ``VmHWM``
   during that run (reset before it); RSS growth is that peak minus the RSS when it started.
3. Ceiling: ``TFServingClient.predict`` of the same rows, same settings, same stand-in,
   measured in this process right before and right after the child (the better of the two).
   Ratio = players/s / pure predict rows/s.

Targets (cold refeed): at least :data:`TARGET_PLAYERS_S` players/s and a peak RSS under
:data:`TARGET_RSS_MB`.

The child is ``python -m bench.daemon_refeed --worker SPEC``: ``SPEC`` is JSON (backend, model
URL, storage root or schema, profile); a Postgres DSN travels in the environment
(:data:`PG_DSN_ENV`), never in argv. It prints its phases as one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prometheus_client import CollectorRegistry

from bench.daemon_setup import (
    SEASON,
    columns_of,
    daemon_config,
    local_storage,
    postgres_storage,
    rest_predict_seconds,
)
from bench.report import md_row, percent, profiled, reset_peak_rss, status_kb, verdict
from bench.standin import REPO
from scorebeater.config import ScoreApiConfig, StorageConfig
from scorebeater.daemon import open_daemon
from scorebeater.inputs import INPUT_NAMES
from scorebeater.logs import configure_logging
from scorebeater.metrics import Metrics
from scorebeater.storage import open_storage
from scorebeater.storage.base import FEATURES_SCHEMA, feature_hashes
from scorebeater.testing.postgres import run_postgres

TARGET_PLAYERS_S = 50_000.0
TARGET_RSS_MB = 1.5 * 1024
WORKER_FLAG = "--worker"
PG_DSN_ENV = "SCOREBEATER_BENCH_PG_DSN"
PHASES = {
    "startup": "first run after start (every row unpredicted, scored by the streaming reconcile)",
    "refeed_cold": "**refeed, cache cleared**",
    "refeed_warm": "refeed, cache warm (all hits)",
}
"""The child's phases, in order, and how the table names them."""

TEAMS = ("ATL", "BOS", "BRK", "CHA", "CHI", "CLE", "DAL", "DEN", "DET", "GSW", "HOU", "IND", "LAC", "LAL",
         "MEM", "MIA", "MIL", "MIN", "NOP", "NYK", "OKC", "ORL", "PHI", "PHO", "POR", "SAC", "SAS", "TOR",
         "UTA", "WAS")  # fmt: skip
PREVIOUS_COUNTS = ("prev_ftm", "prev_fta", "prev_minutes", "prev2_ftm")
CURRENT_COUNTS = ("ftm", "fta", "games_with_fta")


@dataclass
class RefeedResult:
    """One backend: its child's phases (``PHASES`` keys, plus ``child_peak_rss_mb``)."""

    backend: str
    players: int
    write_s: float
    ceiling_s: float
    phases: dict[str, Any]


@dataclass
class RefeedRun:
    """Every backend's result, and the untimed set-up: generating the rows, hashing them."""

    results: list[RefeedResult]
    generated_s: float
    hashing_s: float


def bench_refeed(
    players: int, backends: list[str], model_url: str, scratch: Path, *, profile: bool
) -> RefeedRun:
    """Steps 1-3 for ``players`` synthetic players on each of ``backends`` (local, postgres)."""
    started = time.perf_counter()
    table, hashing_s = synthetic_players(players)
    generated_s = time.perf_counter() - started
    results = [bench_refeed_backend(b, table, model_url, scratch, profile=profile) for b in backends]
    return RefeedRun(results, generated_s, hashing_s)


# --- 1. the players ------------------------------------------------------------------------------


def synthetic_players(n: int, seed: int = 11) -> tuple[pa.Table, float]:
    """``n`` players' latest feature rows (``FEATURES_SCHEMA``) and the seconds spent hashing.

    Rows are drawn from the real training set (every bundled season, as of each game day);
    counts get a multiplicative jitter per group (previous seasons, this season) so ratios
    such as FT% stay realistic, then are rounded and kept consistent (ftm <= fta,
    games_with_fta <= team_games). Player ids are unique, the season is 2014 for all.
    ``feature_hash`` comes from ``storage.base.feature_hashes`` (about 1.3 s per million rows).
    """
    from scorebeater.testing.score_api import bundled_history
    from scorebeater.training.dataset import build_training_set

    ts = build_training_set(bundled_history())
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ts), n)
    values = {name: ts.inputs[name][pick].astype(np.float64) for name in INPUT_NAMES}
    for group in (PREVIOUS_COUNTS, CURRENT_COUNTS):
        jitter = rng.uniform(0.85, 1.15, n)
        for name in group:
            values[name] = np.round(values[name] * jitter)
    values["fta"] = np.maximum(values["fta"], values["ftm"])
    values["prev_fta"] = np.maximum(values["prev_fta"], values["prev_ftm"])
    values["games_with_fta"] = np.minimum(values["games_with_fta"], values["team_games"])
    seq = np.maximum(values["team_games"], 1).astype(np.int32)
    as_of = np.datetime64("2013-10-29T01:30:00", "us") + (seq.astype(np.int64) * 2 * 86_400_000_000)
    ids = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "player_id": pa.array(90_000_000 + ids),
            "season": pa.array(np.full(n, SEASON, dtype=np.int32)),
            "as_of_seq": pa.array(seq),
            "as_of_game_id": pa.array([f"SYN{s:05d}" for s in seq.tolist()], pa.string()),
            "as_of_time": pa.array(as_of.astype("datetime64[us]"), FEATURES_SCHEMA.field("as_of_time").type),
            "player": pa.array([f"Synthetic Player {i}" for i in range(n)], pa.string()),
            "team": pa.array(np.asarray(TEAMS, dtype=object)[rng.integers(0, len(TEAMS), n)].tolist()),
            **{name: pa.array(values[name].astype(np.float32)) for name in INPUT_NAMES},
        }
    )
    started = time.perf_counter()
    hashes = feature_hashes(table)
    hashing_s = time.perf_counter() - started
    table = table.append_column(FEATURES_SCHEMA.field("feature_hash"), pa.array(hashes, pa.string()))
    return table.cast(FEATURES_SCHEMA), hashing_s


async def write_features(storage: StorageConfig, table: pa.Table) -> float:
    """Seconds of one ``write_features`` of ``table`` (opening the storage untimed)."""
    async with open_storage(storage) as st:
        started = time.perf_counter()
        await st.write_features(table)
        return time.perf_counter() - started


# --- 2 and 3. per backend: the child's phases between two ceilings --------------------------------


def bench_refeed_backend(
    backend: str, table: pa.Table, model_url: str, scratch: Path, *, profile: bool
) -> RefeedResult:
    """Write ``table`` into ``backend``, then the ceiling, the child's phases, the ceiling again."""
    columns = columns_of(table)
    with contextlib.ExitStack() as stack:
        env_extra: dict[str, str] = {}
        spec: dict[str, Any] = {"backend": backend, "url": model_url, "profile": profile}
        if backend == "postgres":
            dsn = stack.enter_context(run_postgres())
            spec["schema"] = "bench_refeed"
            storage = postgres_storage(dsn, spec["schema"])
            env_extra[PG_DSN_ENV] = dsn  # the environment, not argv: a DSN may hold a password
        else:
            spec["root"] = str(scratch / "refeed-local")
            storage = local_storage(Path(spec["root"]))
        write_s = asyncio.run(write_features(storage, table))
        print(f"  {backend}: {table.num_rows:,} feature rows written in {write_s:.1f} s", file=sys.stderr)
        before = asyncio.run(rest_predict_seconds(model_url, columns))
        phases = run_worker(spec, env_extra)
        after = asyncio.run(rest_predict_seconds(model_url, columns))
    return RefeedResult(backend, table.num_rows, write_s, min(before, after), phases)


def run_worker(spec: dict[str, Any], env_extra: dict[str, str]) -> dict[str, Any]:
    """Run :func:`refeed_worker` in a child process; its phases.

    Raises:
        RuntimeError: the child failed.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    command = [sys.executable, "-m", "bench.daemon_refeed", WORKER_FLAG, json.dumps(spec)]
    proc = subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.PIPE, check=False, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"refeed worker for {spec['backend']} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


async def refeed_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: a daemon over the stored rows; startup run, cold refeed, warm refeed."""
    if spec["backend"] == "postgres":
        storage = postgres_storage(os.environ[PG_DSN_ENV], spec["schema"])
    else:
        storage = local_storage(Path(spec["root"]))
    # The daemon's Score API client is built but never called by the prediction stages.
    cfg = daemon_config(ScoreApiConfig(base_url="http://127.0.0.1:9"), spec["url"], storage)
    out: dict[str, Any] = {}
    async with open_daemon(cfg, metrics=Metrics(CollectorRegistry())) as daemon:
        # VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts from its parent's RSS at
        # fork, which here holds a million rows and TensorFlow.
        peaks = [status_kb("VmHWM") / 1024]
        for phase, refeed, clear in (
            ("startup", False, False),
            ("refeed_cold", True, True),
            ("refeed_warm", True, False),
        ):
            if refeed:
                daemon.handoff.request_refeed(clear_cache=clear)
            runner = daemon.runners["refeed" if refeed else "predictions"]
            gc.collect()
            reset_peak_rss()
            rss_start = status_kb("VmRSS")
            with profiled(spec["profile"] and phase == "refeed_cold", f"{spec['backend']} cold refeed"):
                started = time.perf_counter()
                result = await runner.run_once()
                seconds = time.perf_counter() - started
            diff_rows = result.get("diff_rows", 0) + result.get("recovered_rows", 0)
            out[phase] = {
                "seconds": seconds,
                "rows": result["rows"] if refeed else diff_rows,
                "diff_rows": diff_rows,
                "rss_start_mb": rss_start / 1024,
                "peak_rss_mb": status_kb("VmHWM") / 1024,
            }
            peaks.append(out[phase]["peak_rss_mb"])
    out["child_peak_rss_mb"] = max(peaks)
    return out


# --- the table -----------------------------------------------------------------------------------


def refeed_table(run: RefeedRun) -> str:
    """Every backend's phases as one Markdown table, with the verdicts on the targets."""
    results = run.results
    lines = [
        f"### Refeed of {results[0].players:,} synthetic players (REST stand-in)",
        "",
        md_row(
            "backend",
            "run",
            "players",
            "seconds",
            "players/s",
            "ceiling players/s",
            "ratio",
            "peak RSS MB",
            "RSS growth MB",
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for r in results:
        ceiling = r.players / r.ceiling_s
        for phase, label in PHASES.items():
            p = r.phases[phase]
            rate = p["rows"] / p["seconds"]
            growth = p["peak_rss_mb"] - p["rss_start_mb"]
            lines.append(
                md_row(
                    r.backend,
                    label,
                    f"{p['rows']:,}",
                    f"{p['seconds']:.1f}",
                    f"{rate:,.0f}",
                    f"{ceiling:,.0f}",
                    percent(rate / ceiling),
                    f"{p['peak_rss_mb']:,.0f}",
                    f"{growth:,.0f}",
                )
            )
        cold = r.phases["refeed_cold"]
        rate = cold["rows"] / cold["seconds"]
        verdicts.append(
            f"{r.backend}: {rate:,.0f} players/s ({verdict(rate >= TARGET_PLAYERS_S)}), peak RSS "
            f"{cold['peak_rss_mb']:,.0f} MB ({verdict(cold['peak_rss_mb'] < TARGET_RSS_MB)}; child's peak "
            f"over its life {r.phases['child_peak_rss_mb']:,.0f} MB)"
        )
    lines += [
        "",
        "Ceiling: `TFServingClient.predict` of the same rows against the same stand-in (best of one run "
        "before and one after the daemon's). Setup, untimed in the figures: rows generated in "
        f"{run.generated_s:.1f} s (of which `feature_hashes` {run.hashing_s:.1f} s); "
        + "; ".join(f"{r.backend} write_features {r.write_s:.1f} s" for r in results)
        + ".",
        "",
        f"Targets (cold refeed) >= {TARGET_PLAYERS_S:,.0f} players/s and peak RSS < {TARGET_RSS_MB:,.0f} MB: "
        + "; ".join(verdicts)
        + ".",
    ]
    return "\n".join(lines)


def worker_main(argv: list[str]) -> int:
    """``--worker SPEC``: run the child's phases and print them as one JSON line."""
    if len(argv) != 2 or argv[0] != WORKER_FLAG:
        print(
            f"usage: python -m bench.daemon_refeed {WORKER_FLAG} SPEC (run by bench.bench_daemon)",
            file=sys.stderr,
        )
        return 2
    configure_logging("console", "error")
    print(json.dumps(asyncio.run(refeed_worker(json.loads(argv[1])))))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
