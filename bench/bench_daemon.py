"""Daemon benchmark: a full season, incremental latency and a full refeed, each against a ceiling
measured in the same run.

Run: ``.venv/bin/python -m bench.bench_daemon [--quick] [--players N] [--days N] [--profile]``

Common set-up: the TF Serving stand-in runs in a **separate process** (``scorebeater
serve-model``, as TF Serving would) over the repository's ``model/score_beater/<highest>``, else
a small model with the production signature exported to a temp dir. The Score API is the real
replay app over the bundled 2014 season, in this process on loopback with a ``ManualClock``
(``tests.fakes.score_api.running_replay``): its serving cost shares the event loop with the
daemon and is counted in the daemon's figures and in the ceilings alike. The daemon's client
settings are ``config/scorebeater.toml``'s (columnar predict, batches of 1,024, 4 in flight).
Storage lives in temp dirs; nothing is written into the repository.

1. **Full season**: the replay clock is set past the end of the 2014 regular season before the
   daemon starts, so all ~1,230 games are final at once. ``daemon.serve`` (scheduler, triggers,
   stages running concurrently) runs on local storage; the figure is the time from just before
   the first feature run starts to the last prediction stored (the daemon's
   ``predictions_last_written`` gauge once every committed feature row has its prediction).
   Ceiling: every box score fetched through ``ScoreApiClient`` (8 at a time, as the stage
   does) + one in-process call of the SavedModel's signature over the same rows + one
   ``pyarrow.parquet.write_table`` of the stored feature rows and of the stored predictions.
2. **Incremental latency**: a fresh daemon; the replay clock moves to each game day's final
   time in turn; per day, ``features.run_once()`` + ``predictions.run_once()`` (from the start
   of the poll that sees the day's games to its players' predictions stored). A warm-up pass
   before the first game day loads the season state and pins the model, as a running daemon
   would have. The daemon's own ``scorebeater_prediction_update_latency_seconds`` histogram is
   read back as a cross-check (quantiles interpolated within buckets, as PromQL does). Ceiling
   per day: one REST predict of the day's feature rows + one ``write_table`` of them with their
   probabilities.
3. **Refeed**: synthetic players (unique ids, one season) drawn from the real training set's
   rows (``scorebeater.training.dataset``) with jittered counts, written as feature rows into
   local storage and into Postgres (``tests.services.postgres.run_postgres``). Each backend's
   daemon runs in a **child process** (so its peak RSS is its own): a first run after start
   (the reconcile finds every row unpredicted and scores it as a diff), then a refeed with the
   cache cleared (every row through the model), then a refeed without clearing (every row a
   cache hit). Peak RSS per phase is ``VmHWM`` after resetting it through
   ``/proc/self/clear_refs``. Ceiling: ``TFServingClient.predict`` of the same rows against the
   same stand-in, best of one run before and one after the child.

``--profile`` runs cProfile around the full-season run and the cold refeeds and prints the top
functions to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import gc
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from bench.standin import MODEL_NAME, REPO, model_dir, standin
from scorebeater.clients.score_api import ScoreApiClient
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
from scorebeater.daemon import open_daemon, serve
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME
from scorebeater.logs import configure_logging
from scorebeater.metrics import Metrics
from scorebeater.scoreapi import timeline
from scorebeater.storage import open_storage
from scorebeater.storage.base import FEATURES_SCHEMA, feature_hashes

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from scorebeater.scoreapi.catalog import ReplayCatalog

SEASON = 2014

TARGET_SEASON_S = 60.0
TARGET_P99_S = 0.5
TARGET_PLAYERS_S = 50_000.0
TARGET_RSS_MB = 1.5 * 1024

BOX_SCORE_CONCURRENCY = 8
"""As the feature stage fetches them (``stages.features.BOX_SCORE_CONCURRENCY``)."""
QUICK_DAYS = 20
QUICK_PLAYERS = 100_000
FULL_PLAYERS = 1_000_000
BATCH_ROWS = 50_000
SEASON_TIMEOUT_S = 1800.0
WORKER_FLAG = "--refeed-worker"
PG_DSN_ENV = "SCOREBEATER_BENCH_PG_DSN"


def tfserving_config(url: str) -> TFServingConfig:
    """The daemon's model client settings: those of ``config/scorebeater.toml``."""
    return TFServingConfig(base_url=url, format="columnar", max_batch_size=1024, max_concurrency=4)


def local_storage(root: Path) -> StorageConfig:
    return StorageConfig(backend="local", batch_rows=BATCH_ROWS, local=LocalStorageConfig(root=root))


def postgres_storage(dsn: str, schema: str) -> StorageConfig:
    postgres = PostgresStorageConfig(dsn=Secret(dsn), schema=schema, command_timeout_s=600)
    return StorageConfig(backend="postgres", batch_rows=BATCH_ROWS, postgres=postgres)


def daemon_config(score_api: ScoreApiConfig, model_url: str, storage: StorageConfig) -> Config:
    return Config(
        score_api=score_api,
        model=ModelConfig(name=MODEL_NAME),
        tfserving=tfserving_config(model_url),
        storage=storage,
        scheduler=SchedulerConfig(seasons=(SEASON,), poll_interval_s=1.0, shutdown_grace_s=2.0),
        admin=AdminConfig(enabled=False),
    )


# --- measuring -----------------------------------------------------------------------------------


def _status_kb(name: str) -> int:
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def _reset_peak_rss() -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux), so a phase's peak is its own.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return float(value) if value is not None else 0.0


def histogram_quantile(metrics: Metrics, name: str, q: float) -> float:
    """``histogram_quantile(q, name)`` as PromQL computes it (linear within the bucket)."""
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == f"{name}_bucket"
    )
    total = buckets[-1][1] if buckets else 0.0
    if total == 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


@contextlib.contextmanager
def profiled(enabled: bool, what: str) -> Iterator[None]:
    """cProfile the block when ``enabled``; print the top functions to stderr."""
    if not enabled:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        print(f"--- profile: {what} ---\n{out.getvalue()}", file=sys.stderr, flush=True)


def columns_of(table: pa.Table) -> dict[str, np.ndarray]:
    return {n: table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in INPUT_NAMES}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


# --- the stand-in ----------------------------------------------------------------------------------


# --- 1. full season ----------------------------------------------------------------------------


@dataclass
class SeasonResult:
    games: int = 0
    feature_rows: int = 0
    predictions: int = 0
    daemon_s: float = 0.0
    features_busy_s: float = 0.0
    predictions_busy_s: float = 0.0
    fetch_s: float = 0.0
    in_process_s: float = 0.0
    rest_s: float = 0.0
    write_s: float = 0.0

    @property
    def ceiling_s(self) -> float:
        return self.fetch_s + self.in_process_s + self.write_s


async def _concat(stream: AsyncIterator[pa.Table]) -> pa.Table | None:
    tables = [t async for t in stream]
    return pa.concat_tables(tables) if tables else None


async def season_through_daemon(
    catalog: ReplayCatalog, model_url: str, scratch: Path, *, profile: bool
) -> tuple[SeasonResult, pa.Table, pa.Table]:
    """Run ``serve`` until every feature row of the season has its prediction stored."""
    season = catalog.seasons[SEASON]
    assert season.last_regular_date is not None
    after_end = timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1)
    from tests.fakes.score_api import running_replay

    result = SeasonResult()
    async with running_replay(catalog, after_end) as replay:
        metrics = Metrics(CollectorRegistry())
        cfg = daemon_config(replay.client_config(), model_url, local_storage(scratch / "season"))
        async with open_daemon(cfg, metrics=metrics) as daemon:

            def finished() -> bool:
                state = daemon.features.seasons.get(SEASON)
                written = sample(metrics, "scorebeater_feature_rows_written_total")
                predicted = sample(metrics, "scorebeater_predictions_total", {"mode": "diff"})
                return state is not None and state.complete and 0 < written <= predicted

            async def wait_finished() -> None:
                runner = daemon.runners["predictions"]
                async with runner.completed:
                    await runner.completed.wait_for(finished)

            stop = asyncio.Event()
            with profiled(profile, "full season through daemon.serve"):
                started = time.time()
                serving = asyncio.create_task(serve(daemon, stop), name="bench:serve")
                waiting = asyncio.create_task(wait_finished(), name="bench:wait")
                try:
                    done, _ = await asyncio.wait(
                        {serving, waiting}, timeout=SEASON_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    if waiting not in done:
                        if serving in done:
                            serving.result()  # the daemon's own error, if it stopped with one
                        raise RuntimeError(f"the season did not finish within {SEASON_TIMEOUT_S:.0f} s")
                finally:
                    waiting.cancel()
                    stop.set()
                    await serving
            result.daemon_s = (
                sample(metrics, "scorebeater_predictions_last_written_timestamp_seconds") - started
            )
            result.games = round(sample(metrics, "scorebeater_games_processed_total"))
            for stage in ("features", "predictions"):
                busy = sample(metrics, "scorebeater_stage_duration_seconds_sum", {"stage": stage})
                setattr(result, f"{stage}_busy_s", busy)
            features = await _concat(daemon.ctx.storage.read_feature_history(seasons=[SEASON]))
            predictions = await _concat(daemon.ctx.storage.read_predictions(season=SEASON))
        assert features is not None
        assert predictions is not None
        result.feature_rows, result.predictions = features.num_rows, predictions.num_rows
        if result.predictions != result.feature_rows:
            raise RuntimeError(f"{result.feature_rows} feature rows but {result.predictions} predictions")
        result.fetch_s = await fetch_every_box_score(replay.client_config())
    return result, features, predictions


async def fetch_every_box_score(cfg: ScoreApiConfig) -> float:
    """Seconds to list the season's final games and fetch every regular-season box score."""
    sem = asyncio.Semaphore(BOX_SCORE_CONCURRENCY)
    async with ScoreApiClient(cfg) as api:

        async def fetch(game_id: str) -> None:
            async with sem:
                await api.box_score(game_id, season=SEASON)

        started = time.perf_counter()
        ids = [g.game_id async for g in api.games(SEASON, status="final") if g.season_type == "regular"]
        await asyncio.gather(*(fetch(i) for i in ids))
        return time.perf_counter() - started


async def rest_predict_seconds(url: str, columns: dict[str, np.ndarray]) -> float:
    async with TFServingClient(tfserving_config(url), MODEL_NAME) as client:
        version = await client.pin_version(None)
        await client.predict({k: v[:1] for k, v in columns.items()}, version=version)  # metadata, keep-alive
        started = time.perf_counter()
        await client.predict(columns, version=version)
        return time.perf_counter() - started


def in_process_seconds(model: Path, columns: dict[str, np.ndarray]) -> float:
    """One call of the SavedModel's ``serving_default`` over every row, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    fn = tf.saved_model.load(str(model)).signatures["serving_default"]
    fn(**{k: tf.constant(v[:1]) for k, v in columns.items()})  # trace and warm up, untimed
    feed = {k: tf.constant(v) for k, v in columns.items()}
    started = time.perf_counter()
    fn(**feed)[OUTPUT_NAME].numpy()
    return time.perf_counter() - started


def bench_season(
    catalog: ReplayCatalog, model: Path, model_url: str, scratch: Path, *, profile: bool
) -> SeasonResult:
    result, features, predictions = asyncio.run(
        season_through_daemon(catalog, model_url, scratch, profile=profile)
    )
    columns = columns_of(features)
    result.rest_s = asyncio.run(rest_predict_seconds(model_url, columns))
    started = time.perf_counter()
    pq.write_table(features, scratch / "season-features.parquet")
    pq.write_table(predictions, scratch / "season-predictions.parquet")
    result.write_s = time.perf_counter() - started
    result.in_process_s = in_process_seconds(model, columns)
    return result


def md_row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def season_table(r: SeasonResult) -> str:
    verdict = "met" if r.daemon_s < TARGET_SEASON_S else "NOT met"
    rest_ceiling = r.fetch_s + r.rest_s + r.write_s
    title = f"### Full season ({SEASON}, {r.games:,} games, {r.feature_rows:,} feature rows and predictions)"
    summary = (
        f"Daemon / ceiling: **{r.daemon_s / r.ceiling_s:.1f}x** "
        f"({r.daemon_s / rest_ceiling:.1f}x against the REST ceiling). "
        f"Target < {TARGET_SEASON_S:.0f} s: **{verdict}** ({r.daemon_s:.1f} s)."
    )
    return "\n".join(
        [
            title,
            "",
            md_row("figure", "seconds", "note"),
            "|---|---:|---|",
            md_row(
                "**daemon: first feature run -> last prediction stored**",
                f"**{r.daemon_s:.2f}**",
                "`daemon.serve`, local storage, REST stand-in",
            ),
            md_row("features stage busy", f"{r.features_busy_s:.2f}", "sum of its runs"),
            md_row("predictions stage busy", f"{r.predictions_busy_s:.2f}", "sum of its runs (overlapping)"),
            md_row(
                "ceiling: fetch every box score",
                f"{r.fetch_s:.2f}",
                f"ScoreApiClient, {BOX_SCORE_CONCURRENCY} at a time",
            ),
            md_row(
                "ceiling: one in-process SavedModel call", f"{r.in_process_s:.2f}", f"{r.feature_rows:,} rows"
            ),
            md_row("ceiling: pyarrow write_table", f"{r.write_s:.2f}", "feature rows + predictions"),
            md_row("**ceiling total**", f"**{r.ceiling_s:.2f}**", ""),
            md_row(
                "context: one REST predict of the rows",
                f"{r.rest_s:.2f}",
                f"in place of in-process: ceiling {rest_ceiling:.2f} s",
            ),
            "",
            summary,
        ]
    )


# --- 2. incremental latency ----------------------------------------------------------------------


@dataclass
class LatencyResult:
    latencies_s: list[float] = field(default_factory=list)
    ceilings_s: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    hist_p50_s: float = float("nan")
    hist_p99_s: float = float("nan")
    hist_count: int = 0


async def latency_by_day(
    catalog: ReplayCatalog, model_url: str, scratch: Path, max_days: int | None
) -> LatencyResult:
    from tests.fakes.score_api import running_replay

    season = catalog.seasons[SEASON]
    days = sorted({e.game.date for e in season.games if e.game.season_type == "regular"})
    if max_days is not None:
        days = days[:max_days]
    out = LatencyResult()
    committed: list[pa.Table] = []
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        metrics = Metrics(CollectorRegistry())
        cfg = daemon_config(replay.client_config(), model_url, local_storage(scratch / "latency"))
        async with (
            open_daemon(cfg, metrics=metrics) as daemon,
            TFServingClient(cfg.tfserving, MODEL_NAME) as client,
        ):
            daemon.features.on_commit(lambda batch: committed.append(batch.rows))
            features, predictions = daemon.runners["features"], daemon.runners["predictions"]
            # Warm-up before the first game is final: season state loaded, model pinned.
            await features.run_once()
            await predictions.run_once()
            version = daemon.predictions.pinned_version
            assert version is not None
            ceiling_path = scratch / "latency-ceiling.parquet"
            for day in days:
                replay.clock.set(timeline.final_at(day))
                committed.clear()
                started = time.perf_counter()
                await features.run_once()
                await predictions.run_once()
                out.latencies_s.append(time.perf_counter() - started)
                rows = pa.concat_tables(committed)
                out.rows.append(rows.num_rows)
                columns = columns_of(rows)
                started = time.perf_counter()
                probs = await client.predict(columns, version=version)
                pq.write_table(rows.append_column("probability", pa.array(probs)), ceiling_path)
                out.ceilings_s.append(time.perf_counter() - started)
    name = "scorebeater_prediction_update_latency_seconds"
    out.hist_p50_s = histogram_quantile(metrics, name, 0.5)
    out.hist_p99_s = histogram_quantile(metrics, name, 0.99)
    out.hist_count = round(sample(metrics, f"{name}_count"))
    return out


def latency_table(r: LatencyResult) -> str:
    lat, ceil, rows = (np.asarray(x, dtype=np.float64) for x in (r.latencies_s, r.ceilings_s, r.rows))
    p = {q: (float(np.percentile(lat, q)), float(np.percentile(ceil, q))) for q in (50, 99)}
    verdict = "met" if p[99][0] < TARGET_P99_S else "NOT met"
    ratio = lat / ceil
    title = (
        f"### Incremental latency ({len(lat)} game days of {SEASON}; feature rows a day: "
        f"median {int(np.median(rows))}, max {int(rows.max())})"
    )
    return "\n".join(
        [
            title,
            "",
            md_row("figure", "p50 ms", "p99 ms", "max ms"),
            "|---|---:|---:|---:|",
            md_row(
                "**daemon: features.run_once + predictions.run_once**",
                f"**{ms(p[50][0])}**",
                f"**{ms(p[99][0])}**",
                ms(float(lat.max())),
            ),
            md_row(
                f"cross-check: `scorebeater_prediction_update_latency_seconds` ({r.hist_count} batches, "
                "bucket-interpolated)",
                ms(r.hist_p50_s),
                ms(r.hist_p99_s),
                "",
            ),
            md_row(
                "ceiling: one REST predict + one write_table of the day's rows",
                ms(p[50][1]),
                ms(p[99][1]),
                ms(float(ceil.max())),
            ),
            md_row(
                "daemon / ceiling, per day",
                f"{np.percentile(ratio, 50):.1f}x",
                f"{np.percentile(ratio, 99):.1f}x",
                "",
            ),
            "",
            f"Target p99 < {TARGET_P99_S * 1000:.0f} ms: **{verdict}** ({ms(p[99][0])} ms).",
        ]
    )


# --- 3. refeed -----------------------------------------------------------------------------------

TEAMS = ("ATL", "BOS", "BRK", "CHA", "CHI", "CLE", "DAL", "DEN", "DET", "GSW", "HOU", "IND", "LAC", "LAL",
         "MEM", "MIA", "MIL", "MIN", "NOP", "NYK", "OKC", "ORL", "PHI", "PHO", "POR", "SAC", "SAS", "TOR",
         "UTA", "WAS")  # fmt: skip
PREVIOUS_COUNTS = ("prev_ftm", "prev_fta", "prev_minutes", "prev2_ftm")
CURRENT_COUNTS = ("ftm", "fta", "games_with_fta")


def synthetic_players(n: int, seed: int = 11) -> tuple[pa.Table, float]:
    """``n`` players' latest feature rows (``FEATURES_SCHEMA``) and the seconds spent hashing.

    Rows are drawn from the real training set (every bundled season, as of each game day);
    counts get a multiplicative jitter per group (previous seasons, this season) so ratios
    such as FT% stay realistic, then are rounded and kept consistent (ftm <= fta,
    games_with_fta <= team_games). Player ids are unique, the season is 2014 for all.
    """
    from scorebeater.training.dataset import build_training_set
    from tests.fakes.score_api import bundled_history

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
    async with open_storage(storage) as st:
        started = time.perf_counter()
        await st.write_features(table)
        return time.perf_counter() - started


@dataclass
class RefeedResult:
    backend: str
    players: int
    write_s: float
    ceiling_s: float
    phases: dict[str, dict[str, Any]]


def run_worker(spec: dict[str, Any], env_extra: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    command = [sys.executable, "-m", "bench.bench_daemon", WORKER_FLAG, json.dumps(spec)]
    proc = subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.PIPE, check=False, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"refeed worker for {spec['backend']} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


def bench_refeed_backend(
    backend: str, table: pa.Table, model_url: str, scratch: Path, *, profile: bool
) -> RefeedResult:
    columns = columns_of(table)
    with contextlib.ExitStack() as stack:
        env_extra: dict[str, str] = {}
        spec: dict[str, Any] = {"backend": backend, "url": model_url, "profile": profile}
        if backend == "postgres":
            from tests.services.postgres import run_postgres

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


async def refeed_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: a daemon over the stored rows; startup run, cold refeed, warm refeed."""
    if spec["backend"] == "postgres":
        storage = postgres_storage(os.environ[PG_DSN_ENV], spec["schema"])
    else:
        storage = local_storage(Path(spec["root"]))
    # The daemon's Score API client is built but never called by the prediction stage.
    cfg = daemon_config(ScoreApiConfig(base_url="http://127.0.0.1:9"), spec["url"], storage)
    out: dict[str, Any] = {}
    async with open_daemon(cfg, metrics=Metrics(CollectorRegistry())) as daemon:
        # VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts from its parent's RSS at
        # fork, which here holds a million rows and TensorFlow.
        peaks = [_status_kb("VmHWM") / 1024]
        runner = daemon.runners["predictions"]
        for phase, refeed, clear in (
            ("startup", False, False),
            ("refeed_cold", True, True),
            ("refeed_warm", True, False),
        ):
            if refeed:
                daemon.predictions.request_refeed(clear_cache=clear)
            gc.collect()
            _reset_peak_rss()
            rss_start = _status_kb("VmRSS")
            with profiled(spec["profile"] and phase == "refeed_cold", f"{spec['backend']} cold refeed"):
                started = time.perf_counter()
                result = await runner.run_once()
                seconds = time.perf_counter() - started
            refeed_summary = result.get("refeed")
            diff_rows = result.get("diff_rows", 0) + result.get("recovered_rows", 0)
            rows = refeed_summary["rows"] if isinstance(refeed_summary, dict) else diff_rows
            out[phase] = {
                "seconds": seconds,
                "rows": rows,
                "diff_rows": diff_rows,
                "rss_start_mb": rss_start / 1024,
                "peak_rss_mb": _status_kb("VmHWM") / 1024,
            }
            peaks.append(out[phase]["peak_rss_mb"])
    out["child_peak_rss_mb"] = max(peaks)
    return out


def refeed_table(results: list[RefeedResult], hashing_s: float, generated_s: float) -> str:
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
    labels = {
        "startup": "first run after start (every row unpredicted, scored by the streaming reconcile)",
        "refeed_cold": "**refeed, cache cleared**",
        "refeed_warm": "refeed, cache warm (all hits)",
    }
    for r in results:
        ceiling = r.players / r.ceiling_s
        for phase, label in labels.items():
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
                    f"{rate / ceiling:.0%}",
                    f"{p['peak_rss_mb']:,.0f}",
                    f"{growth:,.0f}",
                )
            )
        cold = r.phases["refeed_cold"]
        rate = cold["rows"] / cold["seconds"]
        ok_rate, ok_rss = rate >= TARGET_PLAYERS_S, cold["peak_rss_mb"] < TARGET_RSS_MB
        verdicts.append(
            f"{r.backend}: {rate:,.0f} players/s ({'met' if ok_rate else 'NOT met'}), peak RSS "
            f"{cold['peak_rss_mb']:,.0f} MB ({'met' if ok_rss else 'NOT met'}; child's peak over its life "
            f"{r.phases['child_peak_rss_mb']:,.0f} MB)"
        )
    lines += [
        "",
        "Ceiling: `TFServingClient.predict` of the same rows against the same stand-in (best of one run "
        "before and one after the daemon's). Setup, untimed in the figures: rows generated in "
        f"{generated_s:.1f} s (of which `feature_hashes` {hashing_s:.1f} s); "
        + "; ".join(f"{r.backend} write_features {r.write_s:.1f} s" for r in results)
        + ".",
        "",
        f"Targets (cold refeed) >= {TARGET_PLAYERS_S:,.0f} players/s and peak RSS < {TARGET_RSS_MB:,.0f} MB: "
        + "; ".join(verdicts)
        + ".",
    ]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG]:
        configure_logging("console", "error")
        print(json.dumps(asyncio.run(refeed_worker(json.loads(argv[1])))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.bench_daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DAYS} days, {QUICK_PLAYERS:,} players")
    parser.add_argument("--players", type=int, default=None, help=f"refeed players ({FULL_PLAYERS:,})")
    parser.add_argument("--days", type=int, default=None, help="latency: first N game days (all)")
    parser.add_argument(
        "--only", default="season,latency,refeed", help="comma-separated subset of season,latency,refeed"
    )
    parser.add_argument("--backends", default="local,postgres", help="refeed backends (local,postgres)")
    parser.add_argument("--profile", action="store_true", help="cProfile the season run and cold refeeds")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if only - {"season", "latency", "refeed"} or set(backends) - {"local", "postgres"}:
        parser.error(f"unknown --only {sorted(only)} or --backends {backends}")
    players = args.players or (QUICK_PLAYERS if args.quick else FULL_PLAYERS)
    days = args.days or (QUICK_DAYS if args.quick else None)
    if players <= 0 or (days is not None and days <= 0):
        parser.error("--players and --days must be > 0")
    configure_logging("console", "error")
    load = os.getloadavg()
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        scratch = Path(tmp)
        model = model_dir(scratch)
        from tests.fakes.score_api import bundled_catalog

        catalog = bundled_catalog()
        with standin(model, scratch) as served:
            url = served.url
            if "season" in only:
                print("full season ...", file=sys.stderr, flush=True)
                tables.append(season_table(bench_season(catalog, model, url, scratch, profile=args.profile)))
            if "latency" in only:
                print("incremental latency ...", file=sys.stderr, flush=True)
                tables.append(latency_table(asyncio.run(latency_by_day(catalog, url, scratch, days))))
            if "refeed" in only:
                print(f"refeed of {players:,} players ...", file=sys.stderr, flush=True)
                started = time.perf_counter()
                table, hashing_s = synthetic_players(players)
                generated_s = time.perf_counter() - started
                results = [
                    bench_refeed_backend(b, table, url, scratch, profile=args.profile) for b in backends
                ]
                del table
                tables.append(refeed_table(results, hashing_s, generated_s))
    after = os.getloadavg()
    print(
        f"## Daemon benchmark\n\nModel `{model}` served by the stand-in in a child process; "
        f"{os.cpu_count()} CPUs; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) "
        f"before the run, {after[0]:.1f} / {after[1]:.1f} / {after[2]:.1f} after: other work on the "
        "machine slows the daemon and the ceilings alike.\n"
    )
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
