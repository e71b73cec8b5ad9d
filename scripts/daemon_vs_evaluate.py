"""Replay a real season through the daemon and compare /metrics with ``scorebeater evaluate``.

Usage (from the project root; ``scripts/daemon-vs-evaluate.sh`` runs this with the venv)::

    .venv/bin/python scripts/daemon_vs_evaluate.py [--season 2014] [--model-version V]
        [--model-base model/score_beater] [--workdir DIR] [--tolerance 0.005] [--json]

Steps, all in a temp dir (``--workdir`` keeps it):

1. the published model (``--model-version``, default the latest under ``--model-base``) is
   copied alone into ``model/score_beater/<V>``, so the daemon pins it, and served by the TF
   Serving stand-in on loopback;
2. the real replay Score API over the bundled data, its clock an hour past the end of the
   season's regular season (every game final at once); the daemon (``daemon.serve``: every
   stage on its own triggers, local storage, admin API) runs until validation has stored the
   final outcomes, then drains;
3. ``/metrics`` is scraped from the admin API: the realized metrics of each model version,
   overall and per progress bucket;
4. ``scorebeater evaluate --seasons S --json`` (the data files' training rows) and
   ``scorebeater evaluate --rows daemon --seasons S --json`` (the daemon's stored rows) run as
   child processes on the same storage and model;
5. a table compares them, bucket by bucket: ``/metrics`` against ``--rows daemon`` (the same
   rows: must agree within ``--tolerance``) and against the training rows (other rows, see
   ``scorebeater/training/daemon_rows.py``); then every model on both row sets.

Exit status 0 when ``/metrics`` and ``--rows daemon`` agree within the tolerance on every
metric and the row counts are equal, 1 otherwise.
"""

# ruff: noqa: INP001 - a script run by path, not a package module
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorebeater.testing.realized import scrape_realized

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("roc_auc", "brier", "log_loss", "ece", "accuracy")
BUCKETS = ("all", "0-25", "25-50", "50-75", "75-100")
SEASON_TIMEOUT_S = 1800.0

Table = dict[str, dict[str, dict[str, Any]]]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # noqa: T201 - progress on stderr


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--season", type=int, default=2014, help="season to replay (default: 2014)")
    parser.add_argument("--model-base", type=Path, default=ROOT / "model" / "score_beater")
    parser.add_argument("--model-version", type=int, default=None, help="default: the latest")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)"
    )
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")
    return parser.parse_args(argv)


async def replay_season(season: int, model_base: Path, store: Path) -> tuple[str, dict[str, Any]]:
    """Steps 2-3: the season through ``daemon.serve``; returns /metrics and what the daemon did."""
    import aiohttp  # noqa: PLC0415

    from scorebeater.config import (  # noqa: PLC0415
        AdminConfig,
        Config,
        LocalStorageConfig,
        ModelConfig,
        SchedulerConfig,
        StorageConfig,
        TFServingConfig,
    )
    from scorebeater.daemon import open_daemon, serve  # noqa: PLC0415
    from scorebeater.modelserver.app import serve_models  # noqa: PLC0415
    from scorebeater.scoreapi import timeline  # noqa: PLC0415
    from scorebeater.testing.score_api import bundled_catalog, running_replay  # noqa: PLC0415

    catalog = bundled_catalog()
    info = catalog.seasons[season]
    if info.last_regular_date is None:
        raise SystemExit(f"season {season} has no regular-season games in the bundled data")
    after_end = timeline.final_at(info.last_regular_date) + dt.timedelta(hours=1)
    async with (
        running_replay(catalog, after_end) as replay,
        serve_models(
            model_name="score_beater", base_path=model_base, host="127.0.0.1", port=0, poll_interval_s=60
        ) as server,
    ):
        cfg = Config(
            score_api=replay.client_config(timeout_s=30.0),
            model=ModelConfig(name="score_beater", base_path=model_base),
            tfserving=TFServingConfig(base_url=server.url, format="columnar", max_batch_size=1024),
            storage=StorageConfig(backend="local", local=LocalStorageConfig(root=store)),
            scheduler=SchedulerConfig(seasons=(season,), poll_interval_s=1.0, shutdown_grace_s=30.0),
            admin=AdminConfig(host="127.0.0.1", port=0),
        )
        async with open_daemon(cfg) as daemon:
            started = time.monotonic()
            stop = asyncio.Event()
            serving = asyncio.create_task(serve(daemon, stop), name="script:serve")
            try:
                while not _validated(daemon.validation.status(), season):
                    if serving.done():
                        serving.result()  # the daemon's own error, if it stopped with one
                        raise RuntimeError("the daemon stopped before validating the season")
                    if time.monotonic() - started > SEASON_TIMEOUT_S:
                        raise RuntimeError(f"no final outcomes within {SEASON_TIMEOUT_S:.0f} s")
                    await asyncio.sleep(0.5)
            finally:
                stop.set()
                await serving  # drains: the validation run that stored the outcomes completes
            seconds = time.monotonic() - started
            if daemon.admin_url is None:
                raise RuntimeError("the admin API did not start")
            async with aiohttp.ClientSession(base_url=daemon.admin_url) as http, http.get("/metrics") as resp:
                text = await resp.text()
            features = predictions = 0
            async for table in daemon.ctx.storage.read_feature_history(seasons=[season]):
                features += table.num_rows
            async for table in daemon.ctx.storage.read_predictions(season=season):
                predictions += table.num_rows
            facts = {
                "seconds": round(seconds, 1),
                "feature_rows": features,
                "predictions": predictions,
                "pinned_version": daemon.predictions.pinned_version,
                "status": daemon.features.status().get(str(season)),
            }
    return text, facts


def _validated(status: dict[str, object], season: int) -> bool:
    """Whether the validation stage's status says ``season``'s final outcomes are stored."""
    state = status.get(str(season))
    return isinstance(state, dict) and bool(state.get("final_outcomes_stored"))


def evaluate(config: Path, season: int, version: int, *extra: str) -> Table:
    """Step 4: ``scorebeater evaluate ... --json`` as a child process; its JSON table."""
    argv = [
        sys.executable,
        "-m",
        "scorebeater",
        "--log-level",
        "warning",
        "evaluate",
        "--config",
        str(config),
        "--seasons",
        str(season),
        "--model-version",
        str(version),
        "--json",
        *extra,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    table: Table = json.loads(done.stdout)
    return table


def _num(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _delta(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return b - a


def compare(
    exported: dict[str, dict[str, float]], daemon_rows: Table, training_rows: Table
) -> list[dict[str, Any]]:
    """One record per bucket and metric: /metrics, both evaluate figures, the differences."""
    records = []
    for bucket in BUCKETS:
        gauges = exported.get(bucket, {})
        for metric in (*METRICS, "n"):
            on_metrics = gauges.get(metric)
            on_daemon = daemon_rows["mlp"][bucket][metric]
            on_training = training_rows["mlp"][bucket][metric]
            records.append(
                {
                    "bucket": bucket,
                    "metric": metric,
                    "metrics_endpoint": on_metrics,
                    "evaluate_rows_daemon": on_daemon,
                    "diff_rows_daemon": _delta(on_metrics, on_daemon),
                    "evaluate_training_rows": on_training,
                    "diff_training_rows": _delta(on_metrics, on_training),
                }
            )
    return records


def print_tables(records: list[dict[str, Any]], daemon_rows: Table, training_rows: Table, title: str) -> None:
    out = sys.stdout.write
    out(f"\n### {title}\n\n")
    out("| bucket | metric | /metrics | evaluate --rows daemon | diff | evaluate (training rows) | diff |\n")
    out("|---|---|---:|---:|---:|---:|---:|\n")
    for r in records:
        if r["metric"] == "n":
            cells = [f"{int(v):,}" if v is not None else "n/a" for v in (r["metrics_endpoint"],)]
            cells += [f"{r['evaluate_rows_daemon']:,}", _signed_int(r["diff_rows_daemon"])]
            cells += [f"{r['evaluate_training_rows']:,}", _signed_int(r["diff_training_rows"])]
        else:
            cells = [
                _num(r["metrics_endpoint"]),
                _num(r["evaluate_rows_daemon"]),
                _signed(r["diff_rows_daemon"]),
            ]
            cells += [_num(r["evaluate_training_rows"]), _signed(r["diff_training_rows"])]
        out(f"| {r['bucket']} | {r['metric']} | " + " | ".join(cells) + " |\n")
    out("\nEvery model on both row sets (ROC AUC / Brier / ECE, all rows):\n\n")
    out("| model | AUC daemon rows | AUC training rows | Brier daemon | Brier training ")
    out("| ECE daemon | ECE training |\n")
    out("|---|---:|---:|---:|---:|---:|---:|\n")
    for model in daemon_rows:
        d, t = daemon_rows[model]["all"], training_rows[model]["all"]
        cells = [_num(d["roc_auc"]), _num(t["roc_auc"]), _num(d["brier"]), _num(t["brier"])]
        cells += [_num(d["ece"]), _num(t["ece"])]
        out(f"| {model} | " + " | ".join(cells) + " |\n")


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.6f}"


def _signed_int(value: float | None) -> str:
    return "n/a" if value is None else f"{int(value):+,}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from scorebeater.logs import configure_logging  # noqa: PLC0415
    from scorebeater.training import export  # noqa: PLC0415

    version = args.model_version if args.model_version is not None else export.latest_version(args.model_base)
    if version is None:
        raise SystemExit(f"no published model under {args.model_base}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="daemon-vs-evaluate-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_base = work / "model" / "score_beater"
        shutil.rmtree(model_base, ignore_errors=True)
        shutil.copytree(args.model_base / str(version), model_base / str(version))
        store = work / "store"
        shutil.rmtree(store, ignore_errors=True)
        configure_logging("console", "warning")
        _say(
            f"load average {os.getloadavg()[0]:.2f}; replaying {args.season} with model v{version} in {work}"
        )
        text, facts = asyncio.run(replay_season(args.season, model_base, store))
        _say(f"daemon: {facts}")
        exported = scrape_realized(text)
        config = work / "scorebeater.toml"
        config.write_text(
            f'[model]\nbase_path = "{model_base}"\n'
            f'[storage]\nbackend = "local"\n[storage.local]\nroot = "{store}"\n'
            f'[training]\nreport_dir = "{work / "reports-training"}"\n',
            encoding="utf-8",
        )
        started = time.monotonic()
        training_rows = evaluate(config, args.season, version)
        _say(f"evaluate (training rows): {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        daemon_rows = evaluate(
            config, args.season, version, "--rows", "daemon", "--report-dir", str(work / "reports-daemon")
        )
        _say(f"evaluate --rows daemon: {time.monotonic() - started:.0f} s")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    series = exported.get(str(version), {})
    records = compare(series, daemon_rows, training_rows)
    worst = max(
        (
            abs(r["diff_rows_daemon"])
            for r in records
            if r["metric"] != "n" and r["diff_rows_daemon"] is not None
        ),
        default=math.inf,
    )
    rows_equal = all(r["diff_rows_daemon"] == 0 for r in records if r["metric"] == "n")
    all_predicted = facts["feature_rows"] == facts["predictions"]
    ok = bool(series) and rows_equal and all_predicted and worst <= args.tolerance
    summary = {
        "season": args.season,
        "model_version": version,
        "versions_on_metrics": sorted(exported),
        "daemon": facts,
        "max_abs_diff_metrics_vs_rows_daemon": worst,
        "row_counts_equal": rows_equal,
        "tolerance": args.tolerance,
        "ok": ok,
    }
    if args.json:
        json.dump(
            {**summary, "records": records, "daemon_rows": daemon_rows, "training_rows": training_rows},
            sys.stdout,
            indent=1,
        )
        sys.stdout.write("\n")
    else:
        title = f"Season {args.season}, model v{version}: /metrics against `evaluate` (mlp)"
        print_tables(records, daemon_rows, training_rows, title)
        sys.stdout.write(
            f"\nmax |/metrics - evaluate --rows daemon| = {worst:.2e} (tolerance {args.tolerance}); "
            f"row counts equal: {rows_equal}; versions on /metrics: {sorted(exported)}: "
            f"**{'OK' if ok else 'FAIL'}**\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
