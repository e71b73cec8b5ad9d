"""Full season: a whole regular season through the running daemon, against a ceiling.

Scenario:

1. The replay clock is set an hour past the end of the 2014 regular season before the daemon
   starts, so every game (about 1,230) is final at once.
2. ``serve`` (scheduler, triggers, feature and prediction stages running concurrently) runs on
   local storage until the season's feature state is complete and every committed feature row
   has its prediction.
3. The figure is the time from just before the first feature run starts to the last prediction
   stored (the daemon's ``scorebeater_predictions_last_written_timestamp_seconds``). The stored
   feature rows and predictions are read back and their counts checked equal. Also reported:
   each stage's busy time (the sum of its runs; they overlap).
4. Ceiling, measured afterwards: every box score fetched through ``ScoreApiClient``
   (:data:`BOX_SCORE_CONCURRENCY` at a time, as the stage does) + one in-process call of the
   SavedModel's ``serving_default`` over the stored rows + one ``pyarrow.parquet.write_table``
   of the stored feature rows and one of the stored predictions. For context, the ceiling with
   one REST predict of the rows in place of the in-process call.

Target: under :data:`TARGET_SEASON_S` seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from bench.daemon_setup import SEASON, columns_of, daemon_config, local_storage, rest_predict_seconds
from bench.report import md_row, profiled, sample, times, verdict
from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.config import ScoreApiConfig
from scorebeater.daemon import open_daemon, serve
from scorebeater.inputs import OUTPUT_NAME
from scorebeater.metrics import Metrics
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import running_replay

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scorebeater.scoreapi.catalog import ReplayCatalog

TARGET_SEASON_S = 60.0
BOX_SCORE_CONCURRENCY = 8
"""As the feature stage fetches them (``stages.features.BOX_SCORE_CONCURRENCY``)."""
SEASON_TIMEOUT_S = 1800.0


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


def bench_season(
    catalog: ReplayCatalog, model: Path, model_url: str, scratch: Path, *, profile: bool
) -> SeasonResult:
    """Steps 1-4: the daemon's season, then the ceiling's parts over the rows it stored."""
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


async def season_through_daemon(
    catalog: ReplayCatalog, model_url: str, scratch: Path, *, profile: bool
) -> tuple[SeasonResult, pa.Table, pa.Table]:
    """Run ``serve`` until every feature row of the season has its prediction stored."""
    season = catalog.seasons[SEASON]
    assert season.last_regular_date is not None
    after_end = timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1)
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


async def _concat(stream: AsyncIterator[pa.Table]) -> pa.Table | None:
    tables = [t async for t in stream]
    return pa.concat_tables(tables) if tables else None


async def fetch_every_box_score(cfg: ScoreApiConfig) -> float:
    """Seconds to list the season's final games and fetch every regular-season box score."""
    sem = asyncio.Semaphore(BOX_SCORE_CONCURRENCY)
    async with ScoreApiClient.open(cfg) as api:

        async def fetch(game_id: str) -> None:
            async with sem:
                await api.box_score(game_id, season=SEASON)

        started = time.perf_counter()
        ids = [g.game_id async for g in api.games(SEASON, status="final") if g.season_type == "regular"]
        await asyncio.gather(*(fetch(i) for i in ids))
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


def season_table(r: SeasonResult) -> str:
    """The result as a Markdown table, with the ratio and the verdict on the target."""
    rest_ceiling = r.fetch_s + r.rest_s + r.write_s
    title = f"### Full season ({SEASON}, {r.games:,} games, {r.feature_rows:,} feature rows and predictions)"
    summary = (
        f"Daemon / ceiling: **{times(r.daemon_s / r.ceiling_s)}** "
        f"({times(r.daemon_s / rest_ceiling)} against the REST ceiling). "
        f"Target < {TARGET_SEASON_S:.0f} s: **{verdict(r.daemon_s < TARGET_SEASON_S)}** ({r.daemon_s:.1f} s)."
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
