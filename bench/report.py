"""What every benchmark shares to measure and to report: Markdown rows, ratios, verdicts, load
average, resident memory, Prometheus samples and profiles.

Formatting lives here so that the same figure reads the same in every table: milliseconds
without decimals, ratios as ``2.4x`` (daemon / ceiling) or ``53%`` (rate / ceiling rate).

Resident memory is read from ``/proc/self/status`` (Linux): ``VmRSS`` is the current resident
size, ``VmHWM`` its high-water mark, which :func:`reset_peak_rss` resets to the current RSS so
that a phase's peak is its own.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from scorebeater.metrics import Metrics


# --- Markdown ------------------------------------------------------------------------------------


def md_row(*cells: object) -> str:
    """One Markdown table row: ``| a | b | c |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ms(seconds: float) -> str:
    """Seconds as whole milliseconds with thousands separators (``0.2291`` -> ``229``)."""
    return f"{seconds * 1000:,.0f}"


def times(ratio: float) -> str:
    """A cost ratio, figure / ceiling (``2.43`` -> ``2.4x``)."""
    return f"{ratio:.1f}x"


def percent(ratio: float) -> str:
    """A rate ratio, rate / ceiling rate (``0.53`` -> ``53%``)."""
    return f"{ratio:.0%}"


def verdict(met: bool) -> str:
    """How a table says whether a target is met."""
    return "met" if met else "NOT met"


# --- the machine ---------------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()


def load_note(before: tuple[float, float, float], after: tuple[float, float, float]) -> str:
    """The machine and its load around a run: absolute figures move with it, ratios much less."""
    return (
        f"{os.cpu_count()} CPUs; load average {before[0]:.1f} / {before[1]:.1f} / {before[2]:.1f} "
        f"(1/5/15 min) before the run, {after[0]:.1f} / {after[1]:.1f} / {after[2]:.1f} after: other "
        "work on the machine slows the daemon and the ceilings alike."
    )


# --- resident memory -----------------------------------------------------------------------------


def status_kb(name: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``).

    Raises:
        RuntimeError: the field is not there.
    """
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS, so the next phase's peak is its own.

    Writing 5 to ``/proc/self/clear_refs`` does it on Linux; elsewhere nothing happens, and a
    peak then counts from an earlier one.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


# --- Prometheus ----------------------------------------------------------------------------------


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of the daemon's registry; 0 when it has not been recorded."""
    value = metrics.registry.get_sample_value(name, labels or {})
    return float(value) if value is not None else 0.0


def histogram_quantile(metrics: Metrics, name: str, q: float) -> float:
    """``histogram_quantile(q, name)`` as PromQL computes it (linear within the bucket); NaN if empty."""
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


# --- profiles ------------------------------------------------------------------------------------


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
