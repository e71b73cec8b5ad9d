"""The storage interface the stages use, and the fixed schemas of what it stores.

Batches are Apache Arrow tables with the schemas below: columnar, so a million-row refeed or
export streams without building a Python object per row, and the same batch goes to a
Parquet file, an S3 object or a Postgres ``COPY`` unchanged. :func:`conform` checks a table
against its schema (names, types, no nulls in key columns) and its values against their
plausibility bounds (:data:`COLUMN_BOUNDS`, from :mod:`scorebeater.bounds`) before any backend
writes it: the last line of defence, after the data loader and the Score API client, against
an impossible count reaching the model's training data.

Feature rows carry a schema version (:data:`FEATURES_SCHEMA_VERSION`): each version may add
model inputs (:data:`ADDED_INPUTS`). Rows stored before an input existed read back with it
null (the object store records each segment's version; Postgres adds the columns nullable);
rows written now must have every input (:func:`conform_features`). Their ``feature_hash``
covers every input they have (:func:`feature_hashes`).

Predictions and outcomes carry a schema version too (:data:`PREDICTIONS_SCHEMA_VERSION`,
:data:`OUTCOMES_SCHEMA_VERSION`): version 2 added a prediction's ``role`` (rows stored before
read back as ``"champion"``) and an outcome's ``resolved_early_seq``/``resolved_early_at``
(an ``early`` row stored before reads back with them equal to its ``resolved_*``, a ``final``
one with them null: that time was not kept then). See :func:`upgraded_predictions` and
:func:`upgraded_outcomes`.

Keys (all idempotent: writing the same key again replaces the row, never duplicates it):

- features: ``(player_id, season, as_of_seq)``: a player's raw model inputs as of the end of
  the season's game number ``as_of_seq`` (the games feed's ``game_seq``);
- predictions: ``(player_id, season, as_of_seq, model_version)``; each row has a ``role``
  (:data:`PREDICTION_ROLES`: the served ``champion`` or the shadow ``challenger``), which is
  not part of the key (one version scores a row in one role at a time);
- prediction cache: ``(feature_hash, model_version)`` -> probability;
- outcomes: ``(player_id, season)``; a ``final`` resolution replaces an ``early`` one, never
  the reverse. When a player beat his mark before the season ended, the time is kept: an
  ``early`` row's ``resolved_early_seq``/``resolved_early_at`` equal its ``resolved_*``, and a
  row replacing a stored one keeps the stored row's non-null ``resolved_early_*`` where its own
  are null (``COALESCE(new, old)``), so the ``final`` row that replaces an ``early`` one still
  says when the player was known to have beaten his mark; null on a ``final`` row: never
  resolved early (or resolved before that time was stored);
- checkpoints: a name (``[a-z0-9_.-]{1,64}``) -> opaque bytes.

Every write that takes ``checkpoint=(name, value)`` commits the rows and the checkpoint
together: a reader sees both or neither, so a stage's watermark never runs ahead of its data.

The contract's input checks (schemas, value bounds, outcome resolutions, cache entries and
model versions, checkpoint and Postgres schema names) are written here once; backends call
them and only translate to their medium. This module imports nothing of the package but
``errors``, ``inputs`` and ``bounds``, so the config can check names with the same functions.
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorebeater import bounds
from scorebeater.bounds import Bound
from scorebeater.errors import StorageError
from scorebeater.inputs import INPUT_NAMES
from scorebeater.storage.inflight import DRAIN_TIMEOUT_S

if TYPE_CHECKING:
    from scorebeater.storage.quarantine import Quarantine

UTC_TS = pa.timestamp("us", tz="UTC")

FEATURES_SCHEMA_VERSION = 2
"""The feature rows' schema version: 1 had 13 model inputs, 2 has 17 (:data:`ADDED_INPUTS`)."""
ADDED_INPUTS: Mapping[int, tuple[str, ...]] = {
    2: ("prev_season_games", "prev_games_missed", "prev3_ftm", "prev3_games"),
}
"""The model inputs each feature schema version added. A row stored at an earlier version has
them null (nullable columns); a row written now must have them."""
LATE_INPUTS = frozenset(chain.from_iterable(ADDED_INPUTS.values()))
"""Inputs that a stored row may lack (those added after version 1)."""


def inputs_of_version(version: int) -> tuple[str, ...]:
    """The model inputs a feature row of schema ``version`` has, in ``INPUT_NAMES`` order."""
    later = {name for v, names in ADDED_INPUTS.items() if v > version for name in names}
    return tuple(name for name in INPUT_NAMES if name not in later)


FEATURE_KEY = ("player_id", "season", "as_of_seq")
FEATURES_SCHEMA = pa.schema(
    [
        pa.field("player_id", pa.int64(), nullable=False),
        pa.field("season", pa.int32(), nullable=False),
        pa.field("as_of_seq", pa.int32(), nullable=False),
        pa.field("as_of_game_id", pa.string(), nullable=False),
        pa.field("as_of_time", UTC_TS, nullable=False),
        pa.field("player", pa.string(), nullable=False),
        pa.field("team", pa.string(), nullable=False),
        *(pa.field(name, pa.float32(), nullable=name in LATE_INPUTS) for name in INPUT_NAMES),
        pa.field("feature_hash", pa.string(), nullable=False),
    ]
)

PREDICTION_ROLES = ("champion", "challenger")
"""A stored prediction's role: ``champion``, the version the daemon serves (pinned by
``[tfserving] version_label``, else the latest AVAILABLE), or ``challenger``, the version of
``[tfserving] challenger_label`` scored in its shadow and never served unless asked for."""
PREDICTIONS_SCHEMA_VERSION = 2
"""The prediction rows' schema version: 2 added ``role`` (rows of version 1 are champions)."""
OUTCOMES_SCHEMA_VERSION = 2
"""The outcome rows' schema version: 2 added ``resolved_early_seq``/``resolved_early_at``."""

PREDICTION_KEY = ("player_id", "season", "as_of_seq", "model_version")
PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("player_id", pa.int64(), nullable=False),
        pa.field("season", pa.int32(), nullable=False),
        pa.field("as_of_seq", pa.int32(), nullable=False),
        pa.field("as_of_time", UTC_TS, nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("feature_hash", pa.string(), nullable=False),
        pa.field("progress", pa.float32(), nullable=False),
        pa.field("predicted_at", UTC_TS, nullable=False),
        pa.field("role", pa.string(), nullable=False),  # one of PREDICTION_ROLES
    ]
)

CACHE_SCHEMA = pa.schema(
    [
        pa.field("feature_hash", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
    ]
)

OUTCOME_KEY = ("player_id", "season")
OUTCOMES_SCHEMA = pa.schema(
    [
        pa.field("player_id", pa.int64(), nullable=False),
        pa.field("season", pa.int32(), nullable=False),
        pa.field("beat", pa.bool_(), nullable=False),
        pa.field("resolution", pa.string(), nullable=False),  # "early" | "final"
        pa.field("resolved_seq", pa.int32(), nullable=False),
        pa.field("resolved_at", UTC_TS, nullable=False),
        pa.field("ftm", pa.int32(), nullable=False),
        pa.field("prev_ftm", pa.int32(), nullable=False),
        # When the player was known to have beaten his mark (an early resolution), kept when
        # a final row replaces the early one; null if he never was (or it predates version 2).
        pa.field("resolved_early_seq", pa.int32(), nullable=True),
        pa.field("resolved_early_at", UTC_TS, nullable=True),
    ]
)
EARLY_COLUMNS = ("resolved_early_seq", "resolved_early_at")
"""The outcome columns a replacing row takes from the stored one when its own are null."""

TRAINING_SCHEMA = pa.schema(
    [
        *FEATURES_SCHEMA,
        pa.field("beat", pa.bool_(), nullable=False),
        pa.field("resolution", pa.string(), nullable=False),
        pa.field("resolved_early_seq", pa.int32(), nullable=True),
        pa.field("resolved_early_at", UTC_TS, nullable=True),
    ]
)
"""Feature history rows joined with their player-season's outcome (inner join): its ``beat``,
``resolution`` and the time of an early resolution (null if none was stored). A row stored
before feature schema :data:`FEATURES_SCHEMA_VERSION` has its :data:`LATE_INPUTS` null."""

RESOLUTIONS = ("early", "final")

COLUMN_BOUNDS: dict[str, Bound] = {
    "player_id": bounds.PLAYER_ID,
    "season": bounds.SEASON,
    "as_of_seq": bounds.GAME_SEQ,
    "resolved_seq": bounds.GAME_SEQ,
    "resolved_early_seq": bounds.GAME_SEQ,
    # Model inputs (features) and outcomes: season counts, by the same names in both.
    "prev_ftm": bounds.SEASON_FTM,
    "prev_fta": bounds.SEASON_FTA,
    "prev_games": bounds.SEASON_GAMES,
    "prev_season_games": bounds.SCHEDULED_GAMES,
    "prev_games_missed": bounds.SEASON_GAMES,
    "prev_minutes": bounds.SEASON_MINUTES,
    "prev2_ftm": bounds.SEASON_FTM,
    "prev2_games": bounds.SEASON_GAMES,
    "prev3_ftm": bounds.SEASON_FTM,
    "prev3_games": bounds.SEASON_GAMES,
    "experience": bounds.EXPERIENCE.widened(1),  # last season's + 1
    "age": bounds.AGE.widened(1),  # last season's + 1; 0 where unknown
    "ftm": bounds.SEASON_FTM,
    "fta": bounds.SEASON_FTA,
    "games_with_fta": bounds.SEASON_GAMES,
    "team_games": bounds.SEASON_GAMES,
    "season_games": bounds.SEASON_GAMES,
}
"""The plausible range of every stored column that has one, by column name, in every schema
that has the column (``ftm`` is a season's FTM so far in features, the final one in outcomes).
Every model input has one (a test checks), and a float one must also be finite."""

ORDERED_COLUMNS = (("ftm", "fta"), ("prev_ftm", "prev_fta"))
"""``(made, attempted)`` column pairs: no row makes more than it attempted."""
CheckpointWrite = tuple[str, bytes]
STORED_TABLES = ("features", "features_latest", "predictions", "outcomes", "cache", "quarantine")
"""The tables :meth:`Storage.stored_rows` counts (``features_latest``: each player-season's
latest feature row, kept by every backend beside the history)."""

_CHECKPOINT_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_checkpoint_name(name: str) -> str:
    """Return ``name`` if it is a valid checkpoint name, else raise ``StorageError``.

    Names become object keys and file names, so only ``[a-z0-9_.-]`` (not ``.``/``..``) pass.
    """
    if not _CHECKPOINT_NAME.fullmatch(name) or name in {".", ".."}:
        raise StorageError(f"invalid checkpoint name {name!r}: use [a-z0-9_.-], 1-64 characters")
    return name


def check_checkpoint(name: str, value: bytes) -> CheckpointWrite:
    """Return ``(name, value)`` if the name is valid and the value is ``bytes``.

    Raises:
        StorageError: naming the checkpoint and what is wrong.
    """
    check_checkpoint_name(name)
    if not isinstance(value, bytes):
        raise StorageError(f"checkpoint {name!r}: value must be bytes, got {type(value).__name__}")
    return name, value


def is_schema_name(name: str) -> bool:
    """Whether ``name`` is safe as an unquoted-looking Postgres schema name.

    Lower-case ASCII letters, digits and ``_``, not starting with a digit, at most 63
    characters (Postgres's limit), and not ``pg_*`` (reserved for the system).
    """
    return _SCHEMA_NAME.fullmatch(name) is not None and not name.startswith("pg_")


def check_schema_name(name: str) -> str:
    """Return ``name`` if :func:`is_schema_name`, else raise.

    Raises:
        StorageError: naming the bad value.
    """
    if not is_schema_name(name):
        raise StorageError(
            f"invalid Postgres schema name {name!r}: use [a-z_][a-z0-9_]*, at most 63 characters, not pg_*"
        )
    return name


def check_model_version(model_version: int) -> int:
    """Return the prediction cache's ``model_version`` as an ``int``.

    Any integer passes (numpy's too); a ``bool`` does not, though Python counts it as one.

    Raises:
        StorageError: not an integer, or a bool.
    """
    if isinstance(model_version, bool | np.bool_):
        raise StorageError(f"cache: model_version must be an int, got {model_version!r}")
    try:
        return operator.index(model_version)
    except TypeError as exc:
        raise StorageError(f"cache: model_version must be an int, got {model_version!r}") from exc


def cache_rows(model_version: int, entries: Mapping[str, float]) -> pa.Table:
    """Cache entries (hash -> probability) under ``model_version`` as ``CACHE_SCHEMA`` rows.

    Raises:
        StorageError: a bad model version (:func:`check_model_version`), or entries that are
            not str hashes to float probabilities.
    """
    version = check_model_version(model_version)
    try:
        rows = pa.table(
            {
                "feature_hash": pa.array(list(entries.keys()), pa.string()),
                "model_version": pa.array(np.full(len(entries), version, dtype=np.int64)),
                "probability": pa.array(list(entries.values()), pa.float64()),
            }
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StorageError(f"cache: entries must map str hashes to float probabilities: {exc}") from exc
    return conform(rows, CACHE_SCHEMA, "cache")


def conform_outcomes(rows: pa.Table) -> pa.Table:
    """:func:`conform` to ``OUTCOMES_SCHEMA``, with every resolution one of ``RESOLUTIONS``,
    and the time of an early resolution filled in.

    An ``early`` row's ``resolved_early_seq``/``resolved_early_at`` are its ``resolved_*``
    (filled in when null). Rows of one key in the batch share their early time: a row whose
    own are null takes those of the batch's last row of the key that has them, so a batch
    holding a player's ``early`` and ``final`` rows stores the ``final`` one with the early time,
    as two writes would.

    Raises:
        StorageError: a schema mismatch, other resolutions (up to five named), or an ``early``
            row whose ``resolved_early_*`` differ from its ``resolved_*``.
    """
    rows = conform(rows, OUTCOMES_SCHEMA, "outcomes")
    bad = pc.invert(pc.is_in(rows.column("resolution"), value_set=pa.array(RESOLUTIONS)))
    if pc.any(bad).as_py():
        examples = pc.unique(pc.filter(rows.column("resolution"), bad)).to_pylist()[:5]
        raise StorageError(f"outcomes: column resolution must be one of {list(RESOLUTIONS)}, got {examples}")
    early = pc.equal(rows.column("resolution"), "early")
    for column, source in zip(EARLY_COLUMNS, ("resolved_seq", "resolved_at"), strict=True):
        own = rows.column(column)
        differs = pc.and_(early, pc.and_(own.is_valid(), pc.not_equal(own, rows.column(source))))
        if pc.any(differs).as_py():
            raise StorageError(
                f"outcomes: column {column} of an early row must equal its {source} "
                f"({pc.sum(differs).as_py()} row(s) differ)"
            )
        filled = pc.if_else(early, rows.column(source), own)
        rows = rows.set_column(rows.schema.get_field_index(column), OUTCOMES_SCHEMA.field(column), filled)
    return _share_early_time(rows)


def _share_early_time(rows: pa.Table) -> pa.Table:
    """Rows of a key repeated in the batch (rare) take the early time one of them has."""
    keys = rows.select(list(OUTCOME_KEY)).group_by(list(OUTCOME_KEY)).aggregate([([], "count_all")])
    if keys.num_rows == rows.num_rows or rows.column("resolved_early_seq").null_count == 0:
        return rows
    known: dict[tuple[int, int], tuple[object, object]] = {}
    columns = [rows.column(c).to_pylist() for c in (*OUTCOME_KEY, *EARLY_COLUMNS)]
    for player, season, seq, at in zip(*columns, strict=True):
        if seq is not None:
            known[player, season] = (seq, at)
    for i, column in enumerate(EARLY_COLUMNS):
        values = [
            own if own is not None else known.get((player, season), (None, None))[i]
            for player, season, own in zip(columns[0], columns[1], columns[2 + i], strict=True)
        ]
        field = OUTCOMES_SCHEMA.field(column)
        rows = rows.set_column(rows.schema.get_field_index(column), field, pa.array(values, field.type))
    return rows


def conform_predictions(rows: pa.Table) -> pa.Table:
    """:func:`conform` to ``PREDICTIONS_SCHEMA``, with every role one of :data:`PREDICTION_ROLES`.

    Raises:
        StorageError: a schema mismatch, or other roles (up to five named).
    """
    rows = conform(rows, PREDICTIONS_SCHEMA, "predictions")
    bad = pc.invert(pc.is_in(rows.column("role"), value_set=pa.array(PREDICTION_ROLES)))
    if pc.any(bad).as_py():
        examples = pc.unique(pc.filter(rows.column("role"), bad)).to_pylist()[:5]
        raise StorageError(
            f"predictions: column role must be one of {list(PREDICTION_ROLES)}, got {examples}"
        )
    return rows


def check_role(role: str | None) -> str | None:
    """Return a ``read_predictions`` role filter if valid (a role, or ``None`` for all).

    Raises:
        StorageError: naming the bad value.
    """
    if role is not None and role not in PREDICTION_ROLES:
        raise StorageError(f"predictions: role must be one of {list(PREDICTION_ROLES)} or None, got {role!r}")
    return role


PAGE_PLAYER_COLUMNS = ("player", "team", "ftm", "prev_ftm", "team_games", "season_games")
"""The columns of a player's latest feature row of the season a page row carries."""
PAGE_SCHEMA = pa.schema(
    [
        *PREDICTIONS_SCHEMA,
        pa.field("previous_probability", pa.float64(), nullable=True),
        *(FEATURES_SCHEMA.field(name).with_nullable(nullable=True) for name in PAGE_PLAYER_COLUMNS),
        pa.field("outcome_beat", pa.bool_(), nullable=True),
        pa.field("outcome_resolution", pa.string(), nullable=True),
    ]
)
"""A page of latest predictions (:meth:`Storage.read_latest_predictions_page`): each row's
``previous_probability`` is that of the player's latest prediction of the same role and season
before the row's ``as_of_seq`` (null if none); :data:`PAGE_PLAYER_COLUMNS` are those of the
feature row the prediction was made from (his row at its ``as_of_seq``, else his latest before
it, as :meth:`Storage.read_features_at`; null if none), so a row's counts and probability are of
one point even while a newer game's features wait for their prediction;
``outcome_beat``/``outcome_resolution`` his
outcome of the season (null if none)."""
MAX_PAGE_ROWS = 10_000
"""The most rows one :meth:`Storage.read_latest_predictions_page` call returns."""


def check_page(*, limit: int, role: str, after_player_id: int | None) -> tuple[int, str, int | None]:
    """Return a page read's arguments if valid: ``limit`` in 1..:data:`MAX_PAGE_ROWS`, ``role``
    one of :data:`PREDICTION_ROLES` (not ``None``), ``after_player_id`` an int or ``None``.

    Raises:
        StorageError: naming the bad value.
    """
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE_ROWS:  # a bool is no limit
        raise StorageError(f"predictions page: limit must be an int in 1..{MAX_PAGE_ROWS}, got {limit!r}")
    if role not in PREDICTION_ROLES:
        raise StorageError(f"predictions page: role must be one of {list(PREDICTION_ROLES)}, got {role!r}")
    after = after_player_id
    if after is not None and type(after) is not int:
        raise StorageError(f"predictions page: after_player_id must be an int, got {after_player_id!r}")
    return limit, role, after_player_id


def _check_version(what: str, version: int, current: int) -> None:
    if version > current:
        raise StorageError(
            f"{what}: rows of schema version {version}, newer than this scorebeater's "
            f"({current}): upgrade scorebeater"
        )


def _cast_columns(table: pa.Table, schema: pa.Schema, added: Mapping[str, pa.Array], what: str) -> pa.Table:
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col if col.type.equals(f.type) else col.cast(f.type))
        elif f.name in added:
            columns.append(added[f.name])
        else:
            raise StorageError(f"{what}: stored rows lack column {f.name}")
    return pa.Table.from_arrays(columns, schema=schema)


def upgraded_predictions(table: pa.Table, version: int) -> pa.Table:
    """Prediction rows stored at schema ``version`` as ``PREDICTIONS_SCHEMA`` rows: rows of
    version 1 (before roles) are the champion's. Columns are taken by name.

    Raises:
        StorageError: a column of ``version`` is missing, or ``version`` is newer than this code's.
    """
    _check_version("predictions", version, PREDICTIONS_SCHEMA_VERSION)
    added = {"role": pa.repeat(pa.scalar("champion"), table.num_rows)} if version < 2 else {}  # noqa: PLR2004
    return _cast_columns(table, PREDICTIONS_SCHEMA, added, "predictions")


def upgraded_outcomes(table: pa.Table, version: int) -> pa.Table:
    """Outcome rows stored at schema ``version`` as ``OUTCOMES_SCHEMA`` rows. Rows of version 1
    (before the early time was kept): an ``early`` row's ``resolved_early_*`` are its
    ``resolved_*``; a ``final`` row's are null (a final row then overwrote the early one).

    Raises:
        StorageError: a column of ``version`` is missing, or ``version`` is newer than this code's.
    """
    _check_version("outcomes", version, OUTCOMES_SCHEMA_VERSION)
    added = {}
    if version < 2:  # noqa: PLR2004 - the version that added them
        early = pc.equal(table.column("resolution"), "early")
        for column, source in zip(EARLY_COLUMNS, ("resolved_seq", "resolved_at"), strict=True):
            field = OUTCOMES_SCHEMA.field(column)
            nulls = pa.nulls(table.num_rows, field.type)
            added[column] = pc.if_else(early, table.column(source).cast(field.type), nulls)
    return _cast_columns(table, OUTCOMES_SCHEMA, added, "outcomes")


def feature_hashes(table: pa.Table) -> list[str]:
    """Hash each row's model inputs (float32 bytes, in ``INPUT_NAMES`` order).

    Two rows hash alike exactly when they hold the same inputs, which is what the prediction
    cache keys on (with the model version). 16 hex characters (64 bits of BLAKE2b).

    A row lacking inputs (null: stored before they existed) hashes the inputs it has, so an
    old row's hash is the one it was stored with (13 inputs), and a row holding all 17 never
    shares a hash with it: a row rewritten with the inputs added (the feature stage's
    backfill) is a new hash, a changed row to every backend's upsert, and a cache miss.
    """
    columns = [table.column(name) for name in INPUT_NAMES]
    matrix = np.ascontiguousarray(
        np.column_stack([c.to_numpy(zero_copy_only=False).astype(np.float32) for c in columns])
    )
    if not any(c.null_count for c in columns):
        return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in matrix]
    present = np.column_stack([c.is_valid().to_numpy(zero_copy_only=False) for c in columns])
    return [
        hashlib.blake2b((row if ok.all() else row[ok]).tobytes(), digest_size=8).hexdigest()
        for row, ok in zip(matrix, present, strict=True)
    ]


def conform_features(rows: pa.Table, *, allow_missing_inputs: bool = False) -> pa.Table:
    """:func:`conform` to ``FEATURES_SCHEMA``, with every model input present in every row.

    The :data:`LATE_INPUTS` columns are nullable only so that rows stored before them read
    back; a row written now has them all. ``allow_missing_inputs`` lets rows that lack them
    (null) through as they are: only for copying stored rows (``storage migrate``).

    Raises:
        StorageError: a schema mismatch, or a null input (naming the column).
    """
    rows = conform(rows, FEATURES_SCHEMA, "features")
    for name in () if allow_missing_inputs else INPUT_NAMES:
        nulls = rows.column(name).null_count
        if nulls:
            raise StorageError(
                f"features: column {name} has {nulls} null value(s): a feature row written now must "
                f"have every model input (schema version {FEATURES_SCHEMA_VERSION})"
            )
    return rows


def upgraded_features(table: pa.Table, version: int) -> pa.Table:
    """Feature rows stored at schema ``version`` as ``FEATURES_SCHEMA`` rows: the inputs added
    since (:data:`ADDED_INPUTS`) are null. Columns are taken by name.

    Raises:
        StorageError: a column of ``version`` is missing, or ``version`` is newer than this code's.
    """
    if version > FEATURES_SCHEMA_VERSION:
        raise StorageError(
            f"features: rows of schema version {version}, newer than this scorebeater's "
            f"({FEATURES_SCHEMA_VERSION}): upgrade scorebeater"
        )
    have = set(inputs_of_version(version))
    columns = []
    for f in FEATURES_SCHEMA:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col if col.type.equals(f.type) else col.cast(f.type))
        elif f.name in LATE_INPUTS and f.name not in have:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            raise StorageError(f"features: schema version {version} rows lack column {f.name}")
    return pa.Table.from_arrays(columns, schema=FEATURES_SCHEMA)


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, order and types.

    Columns are selected by name (extra columns are an error, so a typo is not lost), cast
    safely (an int that does not fit, or a float passed as an int, fails), and checked for
    nulls in non-nullable fields.

    Raises:
        StorageError: naming ``what`` and the offending column.
    """
    extra = [n for n in table.column_names if schema.get_field_index(n) < 0]
    missing = [f.name for f in schema if f.name not in table.column_names]
    if extra or missing:
        raise StorageError(f"{what}: columns do not match the schema (missing {missing}, unexpected {extra})")
    columns = []
    for f in schema:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise StorageError(f"{what}: column {f.name} cannot be {f.type}: {exc}") from exc
        if not f.nullable and col.null_count:
            raise StorageError(f"{what}: column {f.name} has {col.null_count} null value(s)")
        columns.append(col)
    table = pa.Table.from_arrays(columns, schema=schema)
    check_bounds(table, what)
    return table


def check_bounds(table: pa.Table, what: str) -> None:
    """Check every column of :data:`COLUMN_BOUNDS` in ``table``, and :data:`ORDERED_COLUMNS`.

    Raises:
        StorageError: naming ``what``, the column, the bound and an offending value.
    """
    if not table.num_rows:
        return
    for name in table.column_names:
        bound = COLUMN_BOUNDS.get(name)
        if bound is None:
            continue
        col = table.column(name)
        if col.null_count == len(col):
            continue  # nulls are checked by the schema (conform), not by the bounds
        if pa.types.is_floating(col.type) and not pc.all(pc.is_finite(col)).as_py():
            bad = pc.invert(pc.is_finite(col))
            raise StorageError(
                f"{what}: column {name} has {pc.sum(bad).as_py()} value(s) that are not finite"
                f" (bound {bound}), e.g. {pc.filter(col, bad)[0].as_py()}"
            )
        extremes = pc.min_max(col)
        if extremes["min"].as_py() >= bound.lo and extremes["max"].as_py() <= bound.hi:
            continue
        bad = pc.or_(pc.less(col, bound.lo), pc.greater(col, bound.hi))
        why = bound.reason if bound.implausible else "out of range"
        raise StorageError(
            f"{what}: column {name} has {pc.sum(bad).as_py()} value(s) outside {bound} ({why}),"
            f" e.g. {pc.filter(col, bad)[0].as_py()}"
        )
    for made, attempted in ORDERED_COLUMNS:
        if made in table.column_names and attempted in table.column_names:
            bad = pc.greater(table.column(made), table.column(attempted))
            if pc.any(bad).as_py():
                raise StorageError(
                    f"{what}: column {made} exceeds {attempted} in {pc.sum(bad).as_py()} row(s)"
                )


@runtime_checkable
class PredictionCache(Protocol):
    """Probabilities already computed, keyed by ``(feature_hash, model_version)``.

    A refeed takes unchanged (feature vector, model version) pairs from here instead of the
    model. Errors: ``StorageError`` for bad input (a model version that is not an int, or is a
    bool; entries that are not str -> float), ``StorageUnavailable`` when the backend cannot be
    reached.
    """

    async def get(self, model_version: int, feature_hashes: Sequence[str]) -> dict[str, float]:
        """Cached probabilities for these feature hashes under ``model_version``.

        Returns only the hits, keyed by hash (a miss is simply absent).
        """
        ...

    async def put(self, model_version: int, entries: Mapping[str, float]) -> None:
        """Add or replace cache entries (hash -> probability) for ``model_version``.

        Idempotent: putting the same entries again changes nothing.
        """
        ...

    async def clear(self) -> int:
        """Drop the whole prediction cache; returns how many entries were dropped."""
        ...

    def read_entries(self, *, model_version: int | None = None) -> AsyncGenerator[pa.Table, None]:
        """Every cache entry (``CACHE_SCHEMA``), or only ``model_version``'s, streamed in
        tables of at most ``batch_rows`` rows in no fixed order (``scorebeater storage
        migrate`` copies them). Read-only; an empty cache yields nothing.

        Raises:
            StorageError: a bad model version (:func:`check_model_version`).
        """
        ...


@runtime_checkable
class Storage(Protocol):
    """What the stages store and read. Every backend implements every method.

    Reads stream: each ``read_*``/``export_*`` method is an async generator of Arrow tables of
    at most the configured ``batch_rows`` rows, so no call loads a whole table into memory. A
    caller that may stop early wraps it in ``contextlib.aclosing`` so the backend releases its
    connection or files at once, not at garbage collection.
    A read on an empty store yields nothing (never raises ``StorageNotFound``).

    Every write is atomic: it commits wholly or, on an exception, leaves the store exactly as
    it was. A cancelled caller stops waiting at once, but a commit already begun (Postgres:
    the write's transaction; object stores: the manifest generation, after the segments'
    upload) runs to its end, landed, fenced or failed, and is logged
    (``storage.commit_after_cancel``); closing the storage waits for it
    (:mod:`scorebeater.storage.inflight`). A cancellation before that leaves nothing.

    Errors: ``StorageError`` for bad input (schema, names), ``StorageUnavailable`` when the
    backend cannot be reached. The prediction cache (:attr:`cache`) follows the same rules.
    """

    async def ping(self) -> None:
        """Check the backend is reachable and writable; raise ``StorageUnavailable`` if not."""
        ...

    async def write_features(
        self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None, allow_missing_inputs: bool = False
    ) -> None:
        """Upsert feature rows (``FEATURES_SCHEMA``) by ``(player_id, season, as_of_seq)``.

        Every row must have every model input (:func:`conform_features`); rows stored before
        feature schema :data:`FEATURES_SCHEMA_VERSION` read back with the inputs added since
        null. Idempotent: writing the same batch twice leaves one copy. ``checkpoint`` commits
        with the rows. ``allow_missing_inputs``: store rows lacking those inputs as they are
        (``storage migrate`` copies a store's rows as stored; the stages never set it).
        """
        ...

    def read_latest_features(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's latest feature row per season (highest ``as_of_seq``).

        Filtered by season and/or player ids when given; order is unspecified.
        """
        ...

    def read_feature_history(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every stored feature row (the as-of history training needs), in no fixed order."""
        ...

    def read_features_at(self, *, season: int, points: Mapping[int, int]) -> AsyncGenerator[pa.Table, None]:
        """For each ``player_id -> as_of_seq`` of ``points``, his feature row of ``season`` at
        that point, else his latest one before it (none if he has neither): the row a
        prediction at that point was made from. At most one row per player, in no fixed order.

        Cost: Postgres, one index probe per player; the object stores, one filtered pass over
        the season's feature history (the read API calls it only for players whose latest
        feature row is newer than their prediction of the listed role: a moment after each
        game for the champion; as long as the shadow lags for ``role=challenger``).
        """
        ...

    async def write_predictions(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert predictions (``PREDICTIONS_SCHEMA``) by ``(player_id, season, as_of_seq,
        model_version)``; a rerun replaces, never duplicates (its ``role`` too), except that a
        ``challenger`` row never replaces a stored ``champion`` row of the same key: a version
        shadowed after it served (a rollback left it as the canary) keeps the rows it served
        as champion. A champion row replaces a challenger row (a promoted version's refeed).

        Raises:
            StorageError: a schema mismatch, or a role not in :data:`PREDICTION_ROLES`
                (:func:`conform_predictions`).
        """
        ...

    def read_predictions(
        self,
        *,
        season: int | None = None,
        player_id: int | None = None,
        latest_only: bool = False,
        role: str | None = "champion",
    ) -> AsyncGenerator[pa.Table, None]:
        """Stored predictions of ``role`` (``None``: every role), filtered when given.

        Rows stored before roles existed are the champion's. ``latest_only`` keeps one row
        per ``(player_id, season)`` among the selected rows: the highest ``as_of_seq``, and
        among those the highest ``model_version`` (so ``role=None`` picks across roles).

        Raises:
            StorageError: a role that is neither ``None`` nor in :data:`PREDICTION_ROLES`.
        """
        ...

    async def read_latest_predictions_page(
        self, *, season: int, after_player_id: int | None = None, limit: int, role: str = "champion"
    ) -> pa.Table:
        """One page of a season's latest predictions of ``role``, in ascending ``player_id``:
        the latest rows (as ``read_predictions(latest_only=True)``) of the first ``limit``
        players whose id is above ``after_player_id`` (from the first when ``None``), with
        each one's ``previous_probability``, the name, team and counts of the feature row it
        was made from and his outcome (:data:`PAGE_SCHEMA`). Fewer rows: the last page.

        Cost O(limit), whatever the season's size: Postgres runs one statement (a walk of the
        primary key index from ``after_player_id``, and per row index lookups of his previous
        point, feature row and outcome); the object stores read only the Parquet row groups
        whose ``player_id`` statistics reach into the page's id range (segments pruned by
        their key bounds), so time and memory grow with the page and the row group size
        (:data:`~scorebeater.storage.objects.tables.ROW_GROUP_ROWS`), not with the season.

        Raises:
            StorageError: a bad ``limit``, ``role`` or ``after_player_id`` (:func:`check_page`).
        """
        ...

    @property
    def cache(self) -> PredictionCache:
        """The prediction cache kept in the same store (the same object on every access)."""
        ...

    @property
    def quarantine(self) -> Quarantine:
        """The dead-letter table kept in the same store (the same object on every access; see
        :mod:`scorebeater.storage.quarantine`)."""
        ...

    async def write_outcomes(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert outcomes (``OUTCOMES_SCHEMA``) by ``(player_id, season)``.

        A ``final`` row replaces anything; an ``early`` row never replaces a ``final`` one.
        A row that replaces a stored one keeps the stored ``resolved_early_seq``/
        ``resolved_early_at`` where its own are null (``COALESCE(new, old)``): a ``final`` row
        written with them null still says when the player was known to have beaten his mark.
        Rows are first :func:`conform_outcomes`-ed (an ``early`` row's are its ``resolved_*``).

        Raises:
            StorageError: as :func:`conform_outcomes`.
        """
        ...

    def read_outcomes(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Stored outcomes, filtered by season and/or player ids when given."""
        ...

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The checkpoint's last committed value, or ``None`` if never written."""
        ...

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        """Atomically replace a checkpoint's value."""
        ...

    async def drain_commits(self, *, timeout_s: float | None = DRAIN_TIMEOUT_S) -> None:
        """Wait until the commits whose callers were cancelled have ended (landed, fenced or
        failed: each outcome is logged, never raised here); at most ``timeout_s``, then they
        are cancelled (``None``: no limit, never cancelled). Commits whose callers still wait
        are not waited for. Closing the storage does this; idempotent."""
        ...

    async def set_fencing_token(self, token: int | None, *, nonce: str = "") -> None:
        """Make every later write of this object carry the leadership term ``token``.

        From then on a write (rows, checkpoints, cache, compaction) commits only while the
        store's current term is at most ``token``; otherwise it raises
        :class:`~scorebeater.errors.Fenced` and leaves the store unchanged. Postgres checks in
        each write's own transaction; the object stores record the token in the manifest and
        commit one marker generation here, so that the previous leader's next commit fails.
        ``None`` (the default): no check (tests, single-process tools). Idempotent.
        ``nonce`` (the elector's :attr:`~scorebeater.leadership.base.Elector.nonce`): Postgres
        also requires the term's stored nonce to match, and runs fenced transactions under it as
        their ``application_name``; the object stores ignore it.

        Raises:
            Fenced: the store already records a newer term. StorageUnavailable: the backend
                cannot be reached (object stores only: their marker commit).
        """
        ...

    async def checkpoint_names(self) -> list[str]:
        """The name of every stored checkpoint, sorted (``[]`` on an empty store): what
        ``scorebeater storage migrate`` copies. Read-only."""
        ...

    async def stored_rows(self) -> dict[str, dict[int, int]]:
        """Rows stored per table of :data:`STORED_TABLES` and per partition (a season; a model
        version for ``cache``), e.g. ``{"features": {2014: 41_000}, ...}``; a table with no rows
        is absent. Read-only, and cheap where the backend allows: the object stores sum their
        manifest's segment row counts without opening a segment (an upper bound: a row replaced
        by a later commit counts twice until compaction merges it); Postgres counts exactly
        (``count(*) ... GROUP BY``: one scan of each table). What ``storage migrate`` plans its
        copy with and ``backend = "auto"`` sizes an existing store with."""
        ...

    def export_training_set(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Feature history joined with outcomes (``TRAINING_SCHEMA``): every stored feature row
        of a player-season that has an outcome, labelled with it (``beat``, ``resolution`` and
        the early resolution's ``resolved_early_seq``/``resolved_early_at``, null if none)."""
        ...
