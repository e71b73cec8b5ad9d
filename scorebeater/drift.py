"""Input and output drift: the population stability index against a stored reference.

A **reference** summarises the rows a model was fitted on, so the daemon can compare the
rows it scores today with them without any training data: for each raw input of
:data:`~scorebeater.inputs.INPUT_NAMES` and for the model's predicted probability
(``"probability"``), the bin edges (deciles of the fitted rows) and the share of fitted rows
in each bin. It is written at export into ``<version>/assets.extra/reference.json``
(:data:`REFERENCE_FILE`, format :data:`REFERENCE_FORMAT` version :data:`REFERENCE_VERSION`).

Bins. ``edges`` are the *interior* cut points, strictly increasing; the outer edges are
``-inf`` and ``+inf`` (JSON has no infinity), so ``k`` edges make ``k + 1`` bins::

    (-inf, e[0]), [e[0], e[1]), ..., [e[k-1], +inf)

A value equal to an edge falls in the bin above it. The edges are the deciles of the
reference values with repeats removed, so a discrete column (``experience``, ``season_games``)
or a degenerate one (all 82) has fewer bins, never an empty-width one; a column whose every
value is the same has one edge (that value) and two bins.

Season progress. In-season counts (``ftm``, ``team_games``, ...) grow through a season, so the
daemon's latest rows ten games in are far from the distribution of every fitted row. The
reference therefore also holds **snapshots**: for each progress point ``x`` in
:data:`SNAPSHOT_POINTS` (share of the team's schedule played), every fitted season's players
as of the moment their team had played ``x`` of its schedule (each player's latest row with
``team_games / season_games <= x``), binned with the same edges. The daemon compares its
latest rows with the snapshot nearest its own season's progress (:func:`Reference.at_progress`).

PSI. ``sum((a - e) * ln(a / e))`` over the bins, with the actual and expected shares floored
at :data:`PSI_FLOOR` (an empty bin would otherwise make it infinite). Rule of thumb: below
0.1 stable, 0.1 to 0.2 moderate, above 0.2 a significant shift (the alert's threshold).
Schedule inputs (``team_games``, ``season_games``, ``prev_season_games``) are the same for every
player of a season: their PSI is large whenever a season's length differs from the reference's
(the 66-game 2012 season), which is a schedule fact the model takes as an input, not drift. They
are exported like the others; the alert rule leaves them out.

Pure numpy, so the daemon imports it without TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scorebeater.errors import ScorebeaterError
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME

REFERENCE_FILE = "reference.json"
"""The reference's file name inside ``<version>/assets.extra/``."""
REFERENCE_FORMAT = "scorebeater.drift.reference"
REFERENCE_VERSION = 1
SERIES: tuple[str, ...] = (*INPUT_NAMES, OUTPUT_NAME)
"""The drift series: every raw input and the predicted probability (``"probability"``)."""
BINS = 10
"""Quantile bins per series (fewer when the column has repeated quantiles)."""
SNAPSHOT_POINTS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(1, 11))
"""Season-progress points (share of the schedule played) of the reference snapshots."""
PSI_FLOOR = 1e-4
"""Bin shares are floored at this before the PSI (an empty bin is 0.01% of rows)."""
PSI_ALERT = 0.2
"""The conventional "significant shift" threshold, used by the alert rule."""


class ReferenceFileError(ScorebeaterError):
    """A reference file exists but is not a readable reference of a supported version."""


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The interior edges of ``bins`` quantile bins of ``values`` (non-finite ones ignored),
    repeats removed: strictly increasing, possibly fewer than ``bins - 1``; one edge (the
    value) for a constant column; none for an empty one.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.empty(0, np.float64)
    # "lower": every edge is an observed value, so a discrete column's edges are its values
    qs = np.quantile(v, np.arange(1, bins) / bins, method="lower")
    edges: np.ndarray = np.unique(qs)
    return edges


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The share of the finite ``values`` in each of the ``len(edges) + 1`` bins (sums to 1;
    all zero when there is no finite value)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    total = counts.sum()
    shares: np.ndarray = counts / total if total else np.zeros(len(edges) + 1)
    return shares


def psi(actual: np.ndarray, expected: np.ndarray, *, floor: float = PSI_FLOOR) -> float:
    """The population stability index of bin shares ``actual`` against ``expected``.

    Raises:
        ValueError: the two have different lengths.
    """
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    if a.shape != e.shape:
        raise ValueError(f"bin counts differ: {a.shape} vs {e.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def psi_of_values(actual: np.ndarray, reference: np.ndarray, bins: int = BINS) -> float:
    """PSI of raw values against raw reference values, binned on the reference's quantiles
    (the daemon's season-to-date against last season)."""
    edges = quantile_edges(reference, bins)
    return psi(bin_shares(actual, edges), bin_shares(reference, edges))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The reference rows as of one season-progress point: shares per series, same edges."""

    progress: float
    rows: int
    shares: Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Reference:
    """A model's reference distribution (see the module docstring); build it with
    :func:`build_reference`, store it with :func:`write_reference`."""

    edges: Mapping[str, np.ndarray]
    shares: Mapping[str, np.ndarray]
    """Every reference row's shares per bin, per series."""
    rows: int
    snapshots: tuple[Snapshot, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    """What the rows are (seasons, sources, model version, when added); written as-is."""

    def at_progress(self, progress: float) -> tuple[Mapping[str, np.ndarray], int]:
        """The shares to compare rows at season ``progress`` (0..1) with, and their row count:
        the snapshot nearest ``progress`` (the earlier one on a tie), else every reference row."""
        if not self.snapshots:
            return self.shares, self.rows
        nearest = min(self.snapshots, key=lambda s: (abs(s.progress - progress), s.progress))
        return nearest.shares, nearest.rows

    def compare(self, values: Mapping[str, np.ndarray], progress: float | None = None) -> dict[str, float]:
        """PSI of each series in ``values`` (raw values) that the reference has, against the
        snapshot at ``progress`` (every reference row when ``None``); a series without one
        finite value (an input these rows lack) is left out."""
        shares = self.shares if progress is None else self.at_progress(progress)[0]
        out: dict[str, float] = {}
        for name, v in values.items():
            if name in self.edges and name in shares and np.isfinite(v).any():
                out[name] = psi(bin_shares(v, self.edges[name]), shares[name])
        return out

    def as_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "format": REFERENCE_FORMAT,
            "format_version": REFERENCE_VERSION,
            "bins": "(-inf, edges[0]), [edges[0], edges[1]), ..., [edges[-1], +inf); "
            "a value equal to an edge is in the bin above it",
            **self.meta,
            "rows": self.rows,
            "series": {
                name: {"edges": _floats(self.edges[name]), "shares": _floats(self.shares[name])}
                for name in self.edges
            },
            "snapshots": [
                {
                    "progress": s.progress,
                    "rows": s.rows,
                    "shares": {name: _floats(v) for name, v in s.shares.items()},
                }
                for s in self.snapshots
            ],
        }


def _floats(values: np.ndarray) -> list[float]:
    return [round(float(x), 8) for x in values]


def latest_as_of(
    season: np.ndarray, player_id: np.ndarray, as_of_seq: np.ndarray, progress: np.ndarray, point: float
) -> np.ndarray:
    """Indices of each (season, player)'s latest row (highest ``as_of_seq``) among the rows
    whose ``progress`` is at most ``point``: the league as of that point of each season."""
    eligible = np.flatnonzero(np.asarray(progress) <= point + 1e-9)
    if eligible.size == 0:
        return eligible
    order = np.lexsort((as_of_seq[eligible], player_id[eligible], season[eligible]))
    idx = eligible[order]
    s, p = season[idx], player_id[idx]
    last = np.ones(idx.size, np.bool_)
    last[:-1] = (s[1:] != s[:-1]) | (p[1:] != p[:-1])
    result: np.ndarray = idx[last]
    return result


def progress_share(team_games: np.ndarray, season_games: np.ndarray) -> np.ndarray:
    """``team_games / season_games`` per row (0 where no schedule is known), clipped to 0..1."""
    tg = np.asarray(team_games, dtype=np.float64)
    sg = np.asarray(season_games, dtype=np.float64)
    share = np.divide(tg, sg, out=np.zeros_like(tg), where=sg > 0)
    clipped: np.ndarray = np.clip(share, 0.0, 1.0)
    return clipped


def build_reference(
    values: Mapping[str, np.ndarray],
    *,
    season: np.ndarray,
    player_id: np.ndarray,
    as_of_seq: np.ndarray,
    meta: Mapping[str, Any] | None = None,
    bins: int = BINS,
) -> Reference:
    """The reference of per-game rows: ``values`` maps each series name (inputs and
    ``probability``) to one value per row; ``team_games`` and ``season_games`` must be among
    them (the snapshots need the progress).

    Raises:
        ValueError: the arrays differ in length, or the progress inputs are missing.
    """
    n = len(season)
    for name, v in values.items():
        if len(v) != n:
            raise ValueError(f"series {name} has {len(v)} values for {n} rows")
    if "team_games" not in values or "season_games" not in values:
        raise ValueError("the reference needs team_games and season_games for its snapshots")
    edges = {name: quantile_edges(v, bins) for name, v in values.items()}
    shares = {name: bin_shares(v, edges[name]) for name, v in values.items()}
    share = progress_share(values["team_games"], values["season_games"])
    snapshots = []
    for point in SNAPSHOT_POINTS:
        idx = latest_as_of(season, player_id, as_of_seq, share, point)
        snapshots.append(
            Snapshot(
                progress=point,
                rows=int(idx.size),
                shares={name: bin_shares(v[idx], edges[name]) for name, v in values.items()},
            )
        )
    return Reference(edges=edges, shares=shares, rows=n, snapshots=tuple(snapshots), meta=dict(meta or {}))


def write_reference(path: Path, reference: Reference) -> None:
    """Write the reference as JSON at ``path`` (a temporary file renamed over it: atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(reference.as_json(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def parse_reference(data: Mapping[str, Any]) -> Reference:
    """A reference from its JSON object.

    Raises:
        ReferenceFileError: not a reference, an unsupported version, or malformed series.
    """
    if data.get("format") != REFERENCE_FORMAT:
        raise ReferenceFileError(f"not a drift reference (format {data.get('format')!r})")
    if data.get("format_version") != REFERENCE_VERSION:
        raise ReferenceFileError(f"unsupported reference format_version {data.get('format_version')!r}")
    try:
        edges: dict[str, np.ndarray] = {}
        shares: dict[str, np.ndarray] = {}
        for name, s in data["series"].items():
            edges[name] = np.asarray(s["edges"], np.float64)
            shares[name] = np.asarray(s["shares"], np.float64)
            if shares[name].shape != (edges[name].size + 1,):
                raise ReferenceFileError(
                    f"series {name}: {shares[name].size} shares for {edges[name].size} edges"
                )
        snapshots = tuple(
            Snapshot(
                progress=float(s["progress"]),
                rows=int(s["rows"]),
                shares={name: np.asarray(v, np.float64) for name, v in s["shares"].items()},
            )
            for s in data.get("snapshots", ())
        )
        rows = int(data["rows"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceFileError(f"malformed reference: {exc!r}") from exc
    skip = {"format", "format_version", "bins", "rows", "series", "snapshots"}
    meta = {k: v for k, v in data.items() if k not in skip}
    return Reference(edges=edges, shares=shares, rows=rows, snapshots=snapshots, meta=meta)


def read_reference(version_dir: Path) -> Reference | None:
    """The reference stored with a model version (``<version_dir>/assets.extra/reference.json``);
    ``None`` when the version has none (exported before references existed).

    Raises:
        ReferenceFileError: the file exists but is unreadable or malformed.
    """
    path = version_dir / "assets.extra" / REFERENCE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ReferenceFileError(f"{path}: unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise ReferenceFileError(f"{path}: not a JSON object")
    return parse_reference(data)
