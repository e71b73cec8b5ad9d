"""``scorebeater export`` and ``scorebeater predictions``: the stored rows, for analysts.

The object store's own files are not an analyst's table: they need its manifest to be read
(globbing ``outcomes/**/*.parquet`` returns a player's ``early`` and ``final`` rows side by side,
``features_latest/`` returns stale rows). ``export`` reads through the storage interface instead
(any backend: local, S3, Postgres), so every row is the one the store answers with, and writes
one season of one table as CSV, JSON lines, Parquet or a Delta Lake table.

Both commands stream: rows go from the backend's batches (at most ``storage.batch_rows`` rows
each) to an incremental writer (``pyarrow.csv.CSVWriter``, ``pyarrow.parquet.ParquetWriter``,
one ``orjson`` line per row, or one Delta commit fed by a record batch reader), never holding a
season in memory. ``predictions`` holds one row per player of the season (his latest prediction),
which it must sort.

CSV cells: a string cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets
a leading ``'`` (OWASP's defence against CSV injection: a spreadsheet would run it as a
formula); only string columns are touched, so numbers (a negative one too) stay numbers.

Idempotency: a local file is written to a temporary file beside it, fsynced and renamed over
it (the directory fsynced after), so a failed export leaves the previous file (or none) and
never a half-written one; a Delta export replaces the season's partition in one commit
(``mode="overwrite"`` with the predicate ``season = S``), so re-exporting a season never
duplicates its rows. Stdout is streamed, not atomic: a failure mid-stream leaves the rows
already written there. Errors are :class:`ExportError` (one line, exit status 1): nothing stored
for the season, an unwritable destination (named), a format that cannot go where asked (Parquet
or Delta to stdout), or each player's latest prediction across roles (``--latest --role all``:
it would mix champion and challenger rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scorebeater.errors import ScorebeaterError
from scorebeater.storage import open_storage

if TYPE_CHECKING:
    import argparse

    from scorebeater.config import S3StorageConfig
    from scorebeater.storage.base import Storage

What = Literal["features", "predictions", "outcomes"]
Format = Literal["csv", "parquet", "jsonl", "delta"]
WHATS: tuple[What, ...] = ("features", "predictions", "outcomes")
FORMATS: tuple[Format, ...] = ("csv", "parquet", "jsonl", "delta")
ROLES = ("champion", "challenger", "all")
STDOUT = "-"
_EXTENSIONS = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}
_PROGRESS_EVERY_S = 0.2


class ExportError(ScorebeaterError):
    """An export or listing that cannot be done: nothing stored, or an unusable destination."""


# --- reading ---------------------------------------------------------------------------------


def source(
    storage: Storage, what: What, season: int, *, role: str = "champion", latest: bool = False
) -> AsyncGenerator[pa.Table, None]:
    """The stored rows of ``what`` for ``season``, batch by batch, as the backend answers them.

    ``predictions``: the rows of ``role`` (``all``: every role), or each player's latest with
    ``latest`` (not with ``all``: :func:`check_role`); ``features``: the whole as-of history, or
    each player's latest row with ``latest``; ``outcomes``: one row per player (a ``final`` row
    has replaced an ``early`` one).
    """
    if what == "predictions":
        return storage.read_predictions(
            season=season, role=None if role == "all" else role, latest_only=latest
        )
    if what == "features":
        if latest:
            return storage.read_latest_features(season=season)
        return storage.read_feature_history(seasons=[season])
    return storage.read_outcomes(season=season)


def check_role(what: str, role: str, *, latest: bool) -> None:
    """Refuse each player's latest prediction across roles, before anything is opened.

    Raises:
        ExportError: ``predictions`` with ``latest`` and role ``all``: one row per player across
            roles (the highest model version of his latest as-of point), champion for some and
            challenger for others, which is neither role's latest.
    """
    if what == "predictions" and latest and role == "all":
        raise ExportError(
            "--latest with --role all is ambiguous (one row per player, champion for some and "
            "challenger for others): use --role champion or --role challenger"
        )


async def _first_batch(batches: AsyncIterator[pa.Table]) -> pa.Table | None:
    """The first non-empty batch, or ``None`` when the stream holds no rows."""
    async for batch in batches:
        if batch.num_rows:
            return batch
    return None


# --- progress --------------------------------------------------------------------------------


class Progress:
    """Rows written and rows/s on one line of ``stream``, only when it is a terminal.

    Redrawn at most every 0.2 s; nothing at all is written when ``stream`` is not a tty, so
    logs and pipes get no carriage-return noise.
    """

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.rows = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def add(self, rows: int) -> None:
        """Count ``rows`` more rows written; redraw if due."""
        self.rows += rows
        now = time.monotonic()
        if self.enabled and now - self._drawn >= _PROGRESS_EVERY_S:
            self._drawn = now
            self._draw(now)

    def done(self, where: str) -> None:
        """Draw the final count and end the line."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write(f" -> {where}\n")
            self.stream.flush()

    def abort(self) -> None:
        """End a drawn line, so that an error message starts on a line of its own."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        rate = self.rows / max(now - self.started, 1e-9)
        self.stream.write(f"\r{self.label}: {self.rows:,} rows, {rate:,.0f} rows/s")
        self.stream.flush()


# --- writers ---------------------------------------------------------------------------------


class BatchWriter(Protocol):
    """Writes batches of one schema to an open binary sink, then finishes the format."""

    def write(self, batch: pa.Table) -> None: ...

    def close(self) -> None: ...


_FORMULA_START = r"^[=+\-@\t\r]"
"""A cell a spreadsheet may take for a formula (OWASP's CSV injection list)."""


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def defuse_formulas(table: pa.Table) -> pa.Table:
    """``table`` with a ``'`` before every string cell starting with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return (OWASP's defence against CSV injection), column by column with
    ``pyarrow.compute``. Only string columns: numbers, a negative one too, are left as they are;
    nulls stay null."""
    for index, field in enumerate(table.schema):
        if not _is_text(field.type):
            continue
        column = table.column(index)
        risky = pc.match_substring_regex(column, _FORMULA_START)
        quoted = pc.binary_join_element_wise(pa.scalar("'", field.type), column, pa.scalar("", field.type))
        table = table.set_column(index, field, pc.if_else(risky, quoted, column))
    return table


class _CsvWriter:
    """Arrow's incremental CSV writer, string cells defused (:func:`defuse_formulas`)."""

    def __init__(self, sink: Any, schema: pa.Schema) -> None:
        self._writer = pacsv.CSVWriter(sink, schema)

    def write(self, batch: pa.Table) -> None:
        self._writer.write_table(defuse_formulas(batch))

    def close(self) -> None:
        self._writer.close()


class _JsonlWriter:
    """One JSON object per row and line (timestamps as RFC 3339, nulls as ``null``)."""

    def __init__(self, sink: Any, schema: pa.Schema) -> None:
        del schema
        self._sink = sink

    def write(self, batch: pa.Table) -> None:
        self._sink.write(b"".join(orjson.dumps(row) + b"\n" for row in batch.to_pylist()))

    def close(self) -> None:
        """Nothing to finish: every line is complete."""


class _ParquetWriter:
    def __init__(self, sink: Any, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(sink, schema)

    def write(self, batch: pa.Table) -> None:
        self._writer.write_table(batch)

    def close(self) -> None:
        self._writer.close()


_WRITERS: dict[str, type[_CsvWriter | _JsonlWriter | _ParquetWriter]] = {
    "csv": _CsvWriter,
    "jsonl": _JsonlWriter,
    "parquet": _ParquetWriter,
}


# --- destinations ----------------------------------------------------------------------------


def s3_filesystem(cfg: S3StorageConfig) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem at ``[storage.s3]``'s endpoint and region (AWS's own when the
    endpoint is empty); credentials from the usual AWS chain (environment, profile, role)."""
    kwargs: dict[str, Any] = {"region": cfg.region}
    if cfg.endpoint_url:
        parts = urlsplit(cfg.endpoint_url)
        kwargs["endpoint_override"] = parts.netloc or parts.path
        kwargs["scheme"] = parts.scheme or "https"
    if cfg.addressing_style == "virtual":
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


def delta_storage_options(cfg: S3StorageConfig) -> dict[str, str]:
    """deltalake's storage options for ``[storage.s3]``'s endpoint and region; credentials
    come from the AWS environment variables, as for the rest of the package."""
    options = {"AWS_REGION": cfg.region}
    if cfg.endpoint_url:
        options["AWS_ENDPOINT_URL"] = cfg.endpoint_url
        if cfg.endpoint_url.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if cfg.addressing_style == "virtual":
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "true"
    return options


@dataclass(frozen=True, slots=True)
class Target:
    """Where an export goes: ``-`` (stdout), a local path, or an ``s3://bucket/key`` URL."""

    out: str
    what: What
    season: int
    fmt: Format

    @property
    def is_stdout(self) -> bool:
        return self.out == STDOUT

    @property
    def is_s3(self) -> bool:
        return self.out.startswith("s3://")

    def file_name(self) -> str:
        """The file name used when ``--out`` is a directory or an S3 prefix."""
        return f"{self.what}_{self.season}.{_EXTENSIONS[self.fmt]}"

    def local_path(self) -> Path:
        """The file to write: ``--out`` itself, or :meth:`file_name` inside it if a directory."""
        path = Path(self.out)
        if path.is_dir() or self.out.endswith(os.sep):
            return path / self.file_name()
        return path

    def s3_key(self) -> str:
        """``bucket/key`` for pyarrow: the URL itself if it ends in the format's extension,
        else :meth:`file_name` under it as a prefix."""
        rest = self.out.removeprefix("s3://").rstrip("/")
        if rest.endswith(f".{_EXTENSIONS[self.fmt]}"):
            return rest
        return f"{rest}/{self.file_name()}"

    def check(self) -> None:
        """Refuse a format the destination cannot take, before anything is read.

        Raises:
            ExportError: an empty destination; Parquet or Delta to stdout; an S3 URL without
                a bucket.
        """
        if not self.out.strip():
            raise ExportError("--out is empty: give a file, - (stdout), a directory or s3://bucket/prefix")
        if self.is_stdout and self.fmt not in {"csv", "jsonl"}:
            raise ExportError(
                f"--format {self.fmt} cannot be written to stdout (-): use csv or jsonl, or a path"
            )
        if self.is_s3 and not self.out.removeprefix("s3://").split("/", 1)[0]:
            raise ExportError(f"{self.out}: an S3 destination is s3://bucket/prefix")


def _file_mode(path: Path) -> int:
    """The mode of the file at ``path``, else 0666 less the process's umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def _atomic_local(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path``, renamed over it on success and removed on failure.

    Durable as :func:`scorebeater.promotion.labels.write_atomically`: the file is flushed and
    fsynced before ``os.replace``, and the directory is fsynced after it, so the rename
    survives a crash.

    Raises:
        ExportError: the directory cannot take the file, or cannot be synced after the rename
            (naming ``path`` and why).
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as sink:
            # mkstemp's file is private (0600); the export gets the mode a new file would get,
            # or the one of the file it replaces.
            os.fchmod(sink.fileno(), _file_mode(path))
            yield sink
            sink.flush()
            os.fsync(sink.fileno())
        Path(tmp).replace(path)  # os.replace: atomic on POSIX
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ExportError(f"{path} written but its directory not synced: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _s3_stream(fs: pafs.S3FileSystem, key: str) -> Iterator[Any]:
    """An upload to a temporary object beside ``key`` (``bucket/key``), moved onto ``key`` on
    success and deleted on failure, so a failed export leaves the previous object (or none):
    pyarrow completes an upload even when its stream is closed on an error.

    Raises:
        ExportError: the upload cannot start or finish (naming the URL and why).
    """
    folder, _, name = key.rpartition("/")
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        stream = fs.open_output_stream(tmp)
    except (OSError, pa.ArrowException) as exc:
        raise ExportError(f"cannot write s3://{key}: {exc}") from exc
    try:
        try:
            yield stream
        finally:
            stream.close()
        fs.move(tmp, key)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)
        if isinstance(exc, OSError | pa.ArrowException):
            raise ExportError(f"cannot write s3://{key}: {exc}") from exc
        raise


@contextlib.contextmanager
def _sink(target: Target, s3: S3StorageConfig) -> Iterator[tuple[Any, str]]:
    """The open binary sink of a file format, and the name it is shown by."""
    if target.is_stdout:
        out = sys.stdout.buffer
        yield out, "stdout"
        out.flush()
    elif target.is_s3:
        key = target.s3_key()
        with _s3_stream(s3_filesystem(s3), key) as stream:
            yield stream, f"s3://{key}"
    else:
        path = target.local_path()
        with _atomic_local(path) as sink:
            yield sink, str(path)


# --- export ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportResult:
    rows: int
    where: str


async def export(
    storage: Storage,
    target: Target,
    *,
    s3: S3StorageConfig,
    role: str = "champion",
    latest: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Write ``target.what`` of ``target.season`` from ``storage`` to ``target``.

    Returns the rows written and where. Nothing is written unless the season has rows.

    Raises:
        ExportError: nothing stored for the season; an unwritable destination; a format the
            destination cannot take; ``latest`` predictions of role ``all`` (:func:`check_role`).
    """
    target.check()
    check_role(target.what, role, latest=latest)
    progress = progress or Progress(f"{target.what} {target.season}")
    async with contextlib.aclosing(
        source(storage, target.what, target.season, role=role, latest=latest)
    ) as rows:
        first = await _first_batch(rows)
        if first is None:
            extra = f" ({role})" if target.what == "predictions" and role != "all" else ""
            raise ExportError(f"no {target.what}{extra} stored for season {target.season}: nothing written")
        try:
            if target.fmt == "delta":
                where = await _export_delta(first, rows, target, s3, progress)
            else:
                where = await _export_file(first, rows, target, s3, progress)
        except BaseException:
            progress.abort()
            raise
    progress.done(where)
    return ExportResult(progress.rows, where)


async def _export_file(
    first: pa.Table, rest: AsyncIterator[pa.Table], target: Target, s3: S3StorageConfig, progress: Progress
) -> str:
    schema = first.schema
    with _sink(target, s3) as (sink, where):
        writer = _WRITERS[target.fmt](sink, schema)
        writer.write(first)
        progress.add(first.num_rows)
        async for batch in rest:
            if batch.num_rows:
                writer.write(_as_schema(batch, schema))
                progress.add(batch.num_rows)
        writer.close()
    return where


def _as_schema(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """``batch`` with exactly ``schema`` (backends may differ in field nullability)."""
    return batch if batch.schema.equals(schema) else batch.cast(schema)


def _local_table_dir(path: Path) -> str:
    """``path`` made absolute and created if missing, for deltalake (which takes a URI).

    Raises:
        ExportError: the directory cannot be created or written (naming it).
    """
    path = path.absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK):
        raise ExportError(f"cannot write {path}: permission denied")
    return str(path)


async def _next(batches: AsyncIterator[pa.Table]) -> pa.Table:
    return await anext(batches)


class _Feed:
    """Batches of an async stream for a consumer in a worker thread (deltalake's writer).

    Each batch is fetched on ``loop``; :meth:`stop` makes a waiting fetch give up, so the worker
    ends when the export is cancelled. A failure of the stream is kept in :attr:`failure`, to be
    re-raised as itself rather than as deltalake's wrapping of it.
    """

    def __init__(self, first: pa.Table, rest: AsyncIterator[pa.Table], progress: Progress) -> None:
        self.loop = asyncio.get_running_loop()
        self.first, self.rest, self.progress = first, rest, progress
        self.schema = first.schema
        self.failure: BaseException | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _pull(self) -> pa.Table:
        future = asyncio.run_coroutine_threadsafe(_next(self.rest), self.loop)
        while True:
            try:
                return future.result(timeout=0.25)
            except TimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    raise ExportError("export cancelled") from None

    def batches(self) -> Iterator[pa.RecordBatch]:
        yield from self.first.to_batches()
        self.progress.add(self.first.num_rows)
        while True:
            try:
                batch = self._pull()
            except StopAsyncIteration:
                return
            except BaseException as exc:
                self.failure = exc
                raise
            if batch.num_rows:
                yield from _as_schema(batch, self.schema).to_batches()
                self.progress.add(batch.num_rows)


async def _export_delta(
    first: pa.Table, rest: AsyncIterator[pa.Table], target: Target, s3: S3StorageConfig, progress: Progress
) -> str:
    """One Delta commit replacing the season's partition, fed batch by batch.

    ``write_deltalake`` is blocking, so it runs in a worker thread reading a record batch
    reader whose batches come from this loop's stream (:class:`_Feed`); the commit happens only
    once the stream ends, so a failure anywhere leaves the table as it was.
    """
    from deltalake import write_deltalake  # noqa: PLC0415 - a large native library, only for delta

    feed = _Feed(first, rest, progress)
    if target.is_s3:
        uri, options = target.out.rstrip("/"), delta_storage_options(s3)
    else:
        uri, options = await asyncio.to_thread(_local_table_dir, Path(target.out)), None
    reader = pa.RecordBatchReader.from_batches(feed.schema, feed.batches())
    try:
        await asyncio.to_thread(
            write_deltalake,
            uri,
            reader,
            partition_by=["season"],
            mode="overwrite",
            predicate=f"season = {int(target.season)}",
            storage_options=options,
        )
    except BaseException as exc:
        feed.stop()
        if feed.failure is not None:
            raise feed.failure from exc
        if isinstance(exc, ScorebeaterError) or not isinstance(exc, Exception):
            raise
        raise ExportError(f"cannot write the Delta table {uri}: {exc}") from exc
    return uri


async def export_command(args: argparse.Namespace) -> int:
    """``scorebeater export``: one season of one stored table to a file, stdout or Delta table."""
    target = Target(out=args.out, what=args.what, season=args.season, fmt=args.format)
    target.check()
    # An option that does not apply is refused, not ignored: the user meant something by it.
    if args.role is not None and target.what != "predictions":
        raise ExportError(f"--role applies to --what predictions only, not {target.what}")
    if args.latest and target.what == "outcomes":
        raise ExportError("--latest does not apply to outcomes: they hold one row per player already")
    role = args.role or "champion"
    check_role(target.what, role, latest=args.latest)
    async with open_storage(args.cfg.storage) as storage:
        await export(storage, target, s3=args.cfg.storage.s3, role=role, latest=args.latest)
    return 0


# --- the predictions table -------------------------------------------------------------------

_NAME_COLUMNS = ("player_id", "as_of_seq", "player", "team", "ftm", "prev_ftm", "team_games")


async def _collect(batches: AsyncGenerator[pa.Table, None], columns: list[str]) -> pa.Table | None:
    async with contextlib.aclosing(batches) as stream:
        tables = [batch.select(columns) async for batch in stream if batch.num_rows]
    return pa.concat_tables(tables) if tables else None


async def prediction_table(
    storage: Storage,
    season: int,
    *,
    role: str = "champion",
    top: int | None = None,
    player: str | None = None,
) -> pa.Table:
    """Each player's latest prediction of ``season`` with his name, team, FTM so far, mark
    (last season's FTM), team games and outcome, by probability descending.

    Names come from the feature row the prediction was made from (same player and
    ``as_of_seq``), else his latest one. ``player`` keeps names containing it (case-insensitive);
    ``top`` keeps the first rows. Holds one row per player of the season.

    Raises:
        ExportError: no predictions of ``role`` stored for the season; role ``all`` (each
            player's latest across roles would mix them in a table without a role column).
    """
    if role not in {"champion", "challenger"}:
        raise ExportError(
            f"the predictions table is of one role (champion or challenger), not {role!r}: "
            "each player's latest across roles would mix them without saying which"
        )
    preds = await _collect(
        storage.read_predictions(season=season, latest_only=True, role=role),
        ["player_id", "as_of_seq", "probability", "model_version", "progress"],
    )
    if preds is None:
        raise ExportError(f"no predictions ({role}) stored for season {season}")
    keys = preds.select(["player_id", "as_of_seq"])
    async with contextlib.aclosing(storage.read_feature_history(seasons=[season])) as history:
        # Only the rows the predictions were made from: one per player, however long the history.
        matched = [
            batch.select(list(_NAME_COLUMNS)).join(keys, ["player_id", "as_of_seq"], join_type="inner")
            async for batch in history
            if batch.num_rows
        ]
    names = pa.concat_tables(matched) if matched else None
    table = preds
    if names is not None and names.num_rows:
        table = table.join(names, ["player_id", "as_of_seq"], join_type="left outer")
    missing = table.column("player").null_count if "player" in table.column_names else table.num_rows
    if missing:
        latest = await _collect(
            storage.read_latest_features(season=season), ["player_id", *_NAME_COLUMNS[2:]]
        )
        table = _fill_from_latest(table, latest)
    outcomes = await _collect(storage.read_outcomes(season=season), ["player_id", "beat", "resolution"])
    if outcomes is not None:
        table = table.join(outcomes, "player_id", join_type="left outer")
    else:
        table = table.append_column("beat", pa.nulls(table.num_rows, pa.bool_())).append_column(
            "resolution", pa.nulls(table.num_rows, pa.string())
        )
    if player:
        names_col = pc.fill_null(table.column("player"), "")
        table = table.filter(pc.match_substring(pc.utf8_lower(names_col), player.lower()))
    table = table.sort_by([("probability", "descending"), ("player_id", "ascending")])
    if top is not None:
        table = table.slice(0, top)
    return table


def _fill_from_latest(table: pa.Table, latest: pa.Table | None) -> pa.Table:
    """Name columns missing from the exact join taken from the player's latest feature row."""
    fields = list(_NAME_COLUMNS[2:])
    if latest is None:
        for name in fields:
            if name not in table.column_names:
                table = table.append_column(
                    name,
                    pa.nulls(table.num_rows, pa.string() if name in {"player", "team"} else pa.float32()),
                )
        return table
    fallback = latest.rename_columns(["player_id", *(f"_latest_{n}" for n in fields)])
    table = table.join(fallback, "player_id", join_type="left outer")
    for name in fields:
        spare = table.column(f"_latest_{name}")
        if name in table.column_names:
            merged = pc.coalesce(table.column(name), spare.cast(table.column(name).type))
            table = table.set_column(table.column_names.index(name), name, merged)
        else:
            table = table.append_column(name, spare)
        table = table.drop_columns([f"_latest_{name}"])
    return table


_HEADERS = ("#", "player", "team", "P(beat)", "FTM/mark", "team games", "model", "outcome")
_RIGHT = {0, 3, 4, 5, 6}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters (ESC among them): terminal escape codes start with them."""


def _count(value: float | None) -> str:
    return "?" if value is None else f"{int(value)}"


def _printable(text: str) -> str:
    """``text`` with every control character replaced by U+FFFD, so a stored name cannot move
    the cursor, recolour or retitle the terminal the table is printed on."""
    return _CONTROL.sub("\ufffd", text)


def format_table(table: pa.Table) -> str:
    """``table`` (:func:`prediction_table`'s) as aligned text, one line per player.

    Stored text (names, teams, resolutions) has its control characters replaced by U+FFFD.
    """
    lines = []
    for rank, row in enumerate(table.to_pylist(), start=1):
        if row["beat"] is None:
            outcome = ""
        else:
            outcome = ("beat" if row["beat"] else "missed") + f" ({_printable(str(row['resolution']))})"
        lines.append(
            (
                str(rank),
                _printable(row["player"] or f"#{row['player_id']}"),
                _printable(row["team"] or "?"),
                f"{row['probability']:.3f}",
                f"{_count(row['ftm'])}/{_count(row['prev_ftm'])}",
                _count(row["team_games"]),
                f"v{row['model_version']}",
                outcome,
            )
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(_HEADERS)
    ]

    def render(cells: tuple[str, ...]) -> str:
        out = [
            c.rjust(w) if i in _RIGHT else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join([render(_HEADERS), *(render(line) for line in lines)]) + "\n"


async def predictions_command(args: argparse.Namespace) -> int:
    """``scorebeater predictions``: the season's latest predictions as a table on stdout."""
    async with open_storage(args.cfg.storage) as storage:
        table = await prediction_table(storage, args.season, role=args.role, top=args.top, player=args.player)
    sys.stdout.write(format_table(table))
    if not table.num_rows:
        print(f"no player matches {args.player!r}", file=sys.stderr)  # noqa: T201
    return 0
