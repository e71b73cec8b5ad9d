"""Run every benchmark in ``bench/`` in turn and print their Markdown tables.

    .venv/bin/python -m bench [--quick] [--only daemon,storage,tfserving]

Each ``bench/bench_*.py`` module is one benchmark (the other modules are their parts and what
they share) and runs in its own child process (``python -m bench.<module>``), so one
benchmark's memory (TensorFlow, a million rows) never shows in another's RSS figures and a
failing benchmark does not stop the others. Tables go to stdout, progress to stderr. The exit
status is 1 if any benchmark failed.

``--quick`` asks each module for a short run through the knob it has: ``bench_daemon
--quick`` (20 game days, 100,000 refeed players), ``bench_storage --rows 100000 --repeat 1``,
``bench_tfserving --seconds 0.5``; a module added later gets ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
QUICK_ARGS: dict[str, list[str]] = {
    "bench_storage": ["--rows", "100000", "--repeat", "1"],
    "bench_tfserving": ["--seconds", "0.5"],
}
"""How each module is asked for a short run; any other module gets ``--quick``."""


def modules() -> list[str]:
    """The benchmark modules, by name (``bench_daemon``, ...), sorted."""
    return sorted(p.stem for p in BENCH.glob("bench_*.py"))


def command(module: str, *, quick: bool) -> list[str]:
    args = (QUICK_ARGS.get(module, ["--quick"])) if quick else []
    return [sys.executable, "-m", f"bench.{module}", *args]


def main(argv: list[str] | None = None) -> int:
    available = modules()
    short = [m.removeprefix("bench_") for m in available]
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run of each benchmark")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(short)}")
    args = parser.parse_args(argv)
    chosen = available
    if args.only:
        wanted = [
            f"bench_{name.strip().removeprefix('bench_')}" for name in args.only.split(",") if name.strip()
        ]
        unknown = sorted(set(wanted) - set(available))
        if unknown:
            parser.error(f"unknown benchmarks {unknown}; have {short}")
        chosen = [m for m in available if m in wanted]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    failed: list[str] = []
    for module in chosen:
        argv_child = command(module, quick=args.quick)
        print(f"\n## {module}\n\n`{' '.join(['python', *argv_child[1:]])}`\n", flush=True)
        started = time.perf_counter()
        code = subprocess.run(argv_child, cwd=REPO, env=env, check=False).returncode
        elapsed = time.perf_counter() - started
        print(f"{module}: exit {code} after {elapsed:.0f} s", file=sys.stderr, flush=True)
        if code != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
