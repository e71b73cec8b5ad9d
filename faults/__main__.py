"""``python -m faults``: run the fault suite and print its table.

    python -m faults                       # every fault, on every backend it applies to, 3 runs each
    python -m faults --quick               # every fault once, SIGKILL on every backend
    python -m faults --faults sigkill --backends postgres --runs 10

Exit status 1 when any run did not store exactly what an uninterrupted run stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict

from faults.harness import BACKENDS, Outcome, run_once, world
from faults.scenarios import FAULTS, QUICK
from scorebeater.logs import configure_logging

NEEDS_ROOT = frozenset({"disk-full", "read-only"})
"""These mount a tmpfs."""


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(fault, backend, seed) for every run asked for."""
    if args.quick:
        pairs = list(QUICK)
    else:
        pairs = [
            (name, backend)
            for name, (_, backends) in FAULTS.items()
            if not args.faults or name in args.faults
            for backend in backends
            if backend in args.backends
        ]
    if os.geteuid() != 0:
        skipped = sorted({name for name, _ in pairs if name in NEEDS_ROOT})
        if skipped:
            print(f"faults: not root, skipping {', '.join(skipped)} (they mount a tmpfs)", file=sys.stderr)
        pairs = [(name, backend) for name, backend in pairs if name not in NEEDS_ROOT]
    runs = 1 if args.quick else args.runs
    return [(name, backend, seed) for name, backend in pairs for seed in range(1, runs + 1)]


async def run_all(runs: list[tuple[str, str, int]]) -> list[Outcome]:
    # The table is the output: the harness's own logs go to stderr, warnings and worse only.
    configure_logging("console", "warning")
    backends = tuple(sorted({backend for _, backend, _ in runs}))
    outcomes: list[Outcome] = []
    async with world(backends) as w:
        for name, backend, seed in runs:
            started = time.monotonic()
            outcome = await run_once(w, name, FAULTS[name][0], backend, seed)
            outcomes.append(outcome)
            verdict = "identical" if outcome.identical else f"DIFFERENT\n{outcome.error}"
            print(
                f"faults: {name} on {backend} (seed {seed}): {verdict} in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """One Markdown row per (fault, backend)."""
    groups: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.fault, o.backend].append(o)
    header = ("fault", "backend", "runs", "identical to an uninterrupted run", "lost rows", "duplicated rows")
    lines = ["| " + " | ".join((*header, "recovery s (median, max)")) + " |", "|---" * 7 + "|"]
    for (fault, backend), group in groups.items():
        done = [o for o in group if o.recovery_s is not None]
        recovery = [o.recovery_s for o in done if o.recovery_s is not None]
        lost = sum(o.lost for o in done)
        duplicated = sum(o.duplicated for o in done)
        stalled = len(group) - len(done)
        identical = sum(o.identical for o in group)
        rec = f"{statistics.median(recovery):.1f}, {max(recovery):.1f}" if recovery else "n/a"
        note = f" ({stalled} did not finish)" if stalled else ""
        cells = (fault, backend, len(group), f"{identical}/{len(group)}{note}", lost, duplicated, rec)
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every fault once, SIGKILL on every backend")
    parser.add_argument("--runs", type=int, default=3, help="runs per fault and backend (default 3)")
    parser.add_argument("--faults", nargs="+", choices=sorted(FAULTS), default=None, metavar="FAULT")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--json", action="store_true", help="print every run as JSON instead of the table")
    args = parser.parse_args(argv)
    outcomes = asyncio.run(run_all(plan(args)))
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2))
    else:
        print(table(outcomes))
    return 0 if outcomes and all(o.identical for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
