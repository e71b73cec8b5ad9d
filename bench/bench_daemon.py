"""Daemon benchmark: a full season, incremental latency and a full refeed, each against a ceiling
measured in the same run.

Run: ``.venv/bin/python -m bench.bench_daemon [--quick] [--players N] [--days N]
[--only season,latency,refeed] [--backends local,postgres] [--profile]``

Each benchmark is a module that reads as its scenario: :mod:`bench.daemon_season`,
:mod:`bench.daemon_latency`, :mod:`bench.daemon_refeed`. What they share is in
:mod:`bench.daemon_setup` (the season, the daemon's config, the replay Score API),
:mod:`bench.standin` (the TF Serving stand-in in a child process, over the repository's
``model/score_beater/<highest>``, else a small model with the production signature exported
to a temp dir) and :mod:`bench.report` (Markdown, ratios, load average, RSS). This module
parses the command line, starts the stand-in once, runs the chosen benchmarks in turn and
prints their tables after a note on the machine's load. Storage lives in temp dirs; nothing
is written into the repository.

``--profile`` runs cProfile around the full-season run and the cold refeeds and prints the top
functions to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from bench.daemon_latency import latency_by_day, latency_table
from bench.daemon_refeed import bench_refeed, refeed_table
from bench.daemon_season import bench_season, season_table
from bench.report import load_average, load_note
from bench.standin import model_dir, standin
from scorebeater.logs import configure_logging
from scorebeater.testing.score_api import bundled_catalog

BENCHMARKS = ("season", "latency", "refeed")
BACKENDS = ("local", "postgres")
QUICK_DAYS = 20
QUICK_PLAYERS = 100_000
FULL_PLAYERS = 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DAYS} days, {QUICK_PLAYERS:,} players")
    parser.add_argument("--players", type=int, default=None, help=f"refeed players ({FULL_PLAYERS:,})")
    parser.add_argument("--days", type=int, default=None, help="latency: first N game days (all)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"refeed backends ({','.join(BACKENDS)})"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the season run and cold refeeds")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if only - set(BENCHMARKS) or set(backends) - set(BACKENDS):
        parser.error(f"unknown --only {sorted(only)} or --backends {backends}")
    players = args.players or (QUICK_PLAYERS if args.quick else FULL_PLAYERS)
    days = args.days or (QUICK_DAYS if args.quick else None)
    if players <= 0 or (days is not None and days <= 0):
        parser.error("--players and --days must be > 0")
    configure_logging("console", "error")
    before = load_average()
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        scratch = Path(tmp)
        model = model_dir(scratch)
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
                run = bench_refeed(players, backends, url, scratch, profile=args.profile)
                tables.append(refeed_table(run))
    note = load_note(before, load_average())
    print(f"## Daemon benchmark\n\nModel `{model}` served by the stand-in in a child process; {note}\n")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
