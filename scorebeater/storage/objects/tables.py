"""The logical tables of the object store: how each is partitioned, keyed and deduplicated.

A :class:`TableSpec` says where a table's rows go (``<name>/<partition>=<value>/``), which
columns make the upsert key, and which row wins when two share a key (a rank, then the later
row). The functions here are pure and vectorised: they pick winners, cut a write into
segments, and choose each segment's Parquet encoding and key bounds. CPU-bound callers run
them in a worker thread.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorebeater.storage.base import (
    CACHE_SCHEMA,
    FEATURE_KEY,
    FEATURES_SCHEMA,
    FEATURES_SCHEMA_VERSION,
    OUTCOME_KEY,
    OUTCOMES_SCHEMA,
    OUTCOMES_SCHEMA_VERSION,
    PREDICTION_KEY,
    PREDICTIONS_SCHEMA,
    PREDICTIONS_SCHEMA_VERSION,
    upgraded_features,
    upgraded_outcomes,
    upgraded_predictions,
)
from scorebeater.storage.quarantine import QUARANTINE_SCHEMA

SEGMENT_MAX_ROWS = 262_144
"""A partition larger than this is written as several segments (disjoint by key, one commit),
so a single large partition still encodes on every core and uploads in parallel."""
ROW_GROUP_ROWS = 8_192
"""Rows per Parquet row group: a reader holds one group at a time, and a streamed upload can
send a part as soon as enough groups are encoded. Small enough that a page of players (the
read API's 1,000) reads one or two groups of each table by their ``player_id`` statistics
(``scan.read_first_players``/``read_range``); measured 2026-11-28 on 262,144-row segments,
8,192 against 65,536 rows costs nothing on a full scan (1M latest predictions: 2.48M against
2.12M rows/s) or on writes (features: 2.1M against 1.8M rows/s), and cuts a footer-cached
one-group read from about 6 ms to 1 ms."""
_UNIQUE_STRINGS = frozenset({"feature_hash"})
"""String columns with (nearly) one value per row: a dictionary would only cost time."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one logical table is stored: schema, partition column, key and precedence."""

    name: str
    schema: pa.Schema
    partition: str
    key: tuple[str, ...]
    """The full upsert key (including the partition column)."""
    rank: Callable[[pa.Table], list[pa.Array]] | None = None
    """Values compared (descending) before commit order when two rows share a key."""
    rank_columns: tuple[str, ...] = ()
    max_segments: int = 32
    schema_version: int = 1
    """The version of ``schema`` new segments are written at (recorded in the manifest)."""
    upgrade: Callable[[pa.Table, int], pa.Table] | None = None
    """Turns rows of a segment written at an older schema version into ``schema`` rows."""
    added: tuple[tuple[str, int, Any], ...] = ()
    """Columns a key-only read may ask of an older segment that lacks them: ``(name, the
    schema version that added it, the value older rows read back with)`` (a constant)."""

    @property
    def local_key(self) -> tuple[str, ...]:
        """The key within one partition (the partition column is constant there)."""
        return tuple(k for k in self.key if k != self.partition)

    def partition_name(self, value: int) -> str:
        """The directory name of the partition holding ``value`` (``season=2024``)."""
        return f"{self.partition}={operator.index(value)}"

    def partition_value(self, name: str) -> int:
        """The value a partition directory name stands for (inverse of :meth:`partition_name`)."""
        return int(name.partition("=")[2])


def _final_first(table: pa.Table) -> list[pa.Array]:
    return [pc.cast(pc.equal(table.column("resolution"), "final"), pa.int8())]


def _champion_first(table: pa.Table) -> list[pa.Array]:
    if "role" not in table.column_names:  # rows of schema version 1: champions, all of them
        return [pa.array(np.ones(table.num_rows, dtype=np.int8))]
    return [pc.cast(pc.equal(table.column("role"), "champion"), pa.int8())]


def _latest_seq(table: pa.Table) -> list[pa.Array]:
    return [table.column("as_of_seq")]


FEATURES = TableSpec(
    name="features",
    schema=FEATURES_SCHEMA,
    partition="season",
    key=FEATURE_KEY,
    schema_version=FEATURES_SCHEMA_VERSION,
    upgrade=upgraded_features,
)
FEATURES_LATEST = TableSpec(
    name="features_latest",
    schema=FEATURES_SCHEMA,
    partition="season",
    key=("player_id", "season"),
    rank=_latest_seq,
    rank_columns=("as_of_seq",),
    max_segments=8,
    schema_version=FEATURES_SCHEMA_VERSION,
    upgrade=upgraded_features,
)
PREDICTIONS = TableSpec(
    name="predictions",
    schema=PREDICTIONS_SCHEMA,
    partition="season",
    key=PREDICTION_KEY,
    # A version's champion row is history (what the daemon served then): its later shadow as
    # challenger never replaces it, whichever was committed last.
    rank=_champion_first,
    rank_columns=("role",),
    schema_version=PREDICTIONS_SCHEMA_VERSION,
    upgrade=upgraded_predictions,
    added=(("role", 2, "champion"),),  # the rank and a role filter read it in the key pass
)
OUTCOMES = TableSpec(
    name="outcomes",
    schema=OUTCOMES_SCHEMA,
    partition="season",
    key=OUTCOME_KEY,
    rank=_final_first,
    rank_columns=("resolution",),
    max_segments=8,
    schema_version=OUTCOMES_SCHEMA_VERSION,
    upgrade=upgraded_outcomes,
)
CACHE = TableSpec(
    name="cache",
    schema=CACHE_SCHEMA,
    partition="model_version",
    key=("feature_hash", "model_version"),
    max_segments=16,
)
QUARANTINE = TableSpec(
    name="quarantine",
    schema=QUARANTINE_SCHEMA,
    partition="season",
    key=("season", "id"),
    max_segments=8,
)
"""The dead-letter table (:mod:`scorebeater.storage.quarantine`): its ``id`` stands for the
entry's ``(kind, key)``; a rewritten entry wins by commit order."""
TABLES = (FEATURES, FEATURES_LATEST, PREDICTIONS, OUTCOMES, CACHE, QUARANTINE)


def winner_indices(
    keys: pa.Table, key_columns: Sequence[str], rank: Sequence[pa.Array] = (), *, key_order: bool = False
) -> np.ndarray:
    """Row indices of the row that wins for each distinct key: ascending, or with
    ``key_order`` in ascending order of the key columns (compared in the order given).

    Highest ``rank`` values (compared in order) win; ties go to the later row. Vectorised:
    one Arrow sort, then a comparison of neighbours.
    """
    n = keys.num_rows
    if n == 0:
        return np.empty(0, dtype=np.int64)
    columns = {f"k{i}": keys.column(k) for i, k in enumerate(key_columns)}
    columns |= {f"r{i}": r for i, r in enumerate(rank)}
    columns["ord"] = pa.array(np.arange(n, dtype=np.int64))
    table = pa.table(columns)
    order = [(f"k{i}", "ascending") for i in range(len(key_columns))]
    order += [(f"r{i}", "descending") for i in range(len(rank))] + [("ord", "descending")]
    idx = pc.sort_indices(table, sort_keys=order)
    first = np.zeros(n, dtype=bool)
    first[0] = True
    for i in range(len(key_columns)):
        col = table.column(f"k{i}").take(idx)
        first[1:] |= pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    winners: np.ndarray = idx.to_numpy()[first]
    return winners if key_order else np.sort(winners)


def _presorted_winners(columns: Sequence[pa.ChunkedArray | pa.Array], n_key: int) -> np.ndarray | None:
    """Winners of rows already in non-decreasing order of ``columns`` (the ``n_key`` key
    columns, then the ranks), or ``None`` if they are not (or a column is not an integer).

    Rows usually arrive grouped and sorted (a stage writes player by player, game by game):
    a comparison of neighbours then replaces the sort. In such an order the last row of each
    key wins: it has the highest rank, and among equal ranks it is the later row.
    """
    if not all(pa.types.is_integer(c.type) for c in columns):
        return None
    arrays = [np.asarray(c.to_numpy()) for c in columns]
    n = len(arrays[0])
    undecided = np.ones(max(n - 1, 0), dtype=bool)
    key_equal = undecided
    for i, values in enumerate(arrays):
        before, after = values[:-1], values[1:]
        if (undecided & (after < before)).any():
            return None
        undecided = undecided & (after == before)
        if i == n_key - 1:
            key_equal = undecided
    return np.flatnonzero(np.append(~key_equal, True)) if n else np.empty(0, dtype=np.int64)


def ordered_winners(table: pa.Table, spec: TableSpec) -> pa.Table:
    """``table`` with one row per key of ``spec`` (the winner), ordered by partition, then key.

    CPU: runs in a worker thread. Already ordered input (the usual case) costs one pass.
    """
    keys = [spec.partition, *spec.local_key]
    rank = spec.rank(table) if spec.rank else []
    winners = _presorted_winners([*(table.column(k) for k in keys), *rank], len(keys))
    if winners is None:
        winners = winner_indices(table, keys, rank, key_order=True)
    elif len(winners) == table.num_rows:
        return table  # ordered, and no key twice
    return table.take(pa.array(winners))


def split_segments(spec: TableSpec, rows: pa.Table, max_rows: int) -> list[tuple[int, pa.Table]]:
    """Deduplicate ``rows`` and cut them into ``(partition value, slice)`` segments of at most
    ``max_rows`` rows: zero-copy slices of one ordered table, disjoint by key."""
    rows = ordered_winners(rows, spec)
    values = np.asarray(rows.column(spec.partition).to_numpy())
    edges = [0, *(np.flatnonzero(values[1:] != values[:-1]) + 1).tolist(), len(values)]
    segments = []
    for start, end in itertools.pairwise(edges):
        step = -(-(end - start) // -(-(end - start) // max_rows))  # fewest pieces, even sizes
        segments += [
            (int(values[start]), rows.slice(offset, min(step, end - offset)))
            for offset in range(start, end, step)
        ]
    return segments


def parquet_options(spec: TableSpec) -> dict[str, Any]:
    """Writer options for ``spec``'s segments.

    Dictionaries only for repeated strings (names, ids; not hashes), byte-stream-split floats
    (they compress better and faster than with dictionaries), LZ4, and statistics only for
    the key columns (what readers prune on; the engine keeps its own key bounds).
    """
    schema = spec.schema
    strings = [f.name for f in schema if pa.types.is_string(f.type) and f.name not in _UNIQUE_STRINGS]
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    return {
        "use_dictionary": strings,
        "use_byte_stream_split": floats or False,
        "compression": "lz4",
        "write_statistics": list(spec.key),
    }


def key_bounds(table: pa.Table, columns: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Min and max of each column (empty for an empty table)."""
    if not table.num_rows:
        return {}
    bounds = {}
    for name in columns:
        extremes = pc.min_max(table.column(name))
        bounds[name] = (extremes["min"].as_py(), extremes["max"].as_py())
    return bounds


def merge_bounds(
    a: Mapping[str, tuple[Any, Any]], b: Mapping[str, tuple[Any, Any]]
) -> dict[str, tuple[Any, Any]]:
    """The bounds of two row sets together (either may be empty)."""
    if not a or not b:
        return dict(a or b)
    return {n: (min(a[n][0], b[n][0]), max(a[n][1], b[n][1])) for n in a}
