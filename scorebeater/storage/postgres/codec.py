"""Arrow to Postgres and back, without a Python object per value.

Writes: :func:`copy_payload` encodes an Arrow table straight into Postgres's binary ``COPY``
format (vectorised with numpy and Arrow kernels). Scans: :func:`decode_copy` decodes a binary
``COPY`` of the ``SELECT`` list :func:`copy_select` builds (:mod:`.copyout` streams it).
Other reads: :func:`to_arrow` turns fetched records into an Arrow table column by column;
timestamps arrive as integer microseconds through the ``tuple``-format codec that
:func:`init_connection` installs on ``timestamptz``, which avoids a ``datetime`` per value.
All of it is CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scorebeater.errors import StorageError

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_US = 946_684_800_000_000
"""Postgres counts timestamps in microseconds from 2000-01-01 UTC; Arrow from 1970-01-01."""

PG_TYPES = {
    pa.int64(): "int8",
    pa.int32(): "int4",
    pa.float32(): "float4",
    pa.float64(): "float8",
    pa.bool_(): "bool",
    pa.string(): "text",
    pa.binary(): "bytea",
    pa.timestamp("us", tz="UTC"): "timestamptz",
}
"""How each Arrow type of the schemas is stored (the migrations follow it; a test checks)."""

_BINARY_FORMATS: dict[pa.DataType, str] = {
    pa.int64(): ">i8",
    pa.int32(): ">i4",
    pa.float32(): ">f4",
    pa.float64(): ">f8",
    pa.bool_(): "u1",
    pa.timestamp("us", tz="UTC"): ">i8",
}
"""Fixed-width Arrow types and their big-endian layout in Postgres's binary COPY format."""
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"  # a field count of -1
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())
_NULL_FIELD = b"\xff\xff\xff\xff"  # a field length of -1: NULL, no value bytes
_I2 = struct.Struct(">h")
_I4 = struct.Struct(">i")


def copy_columns(schema: pa.Schema) -> tuple[str, ...]:
    """The column order of :func:`copy_payload`'s rows: fixed-width columns, then text ones."""
    fixed = [f.name for f in schema if f.type in _BINARY_FORMATS]
    return (*fixed, *(f.name for f in schema if f.type not in _BINARY_FORMATS))


def copy_payload(table: pa.Table) -> bytes:
    """Encode ``table`` as a complete binary ``COPY`` stream, columns in :func:`copy_columns` order.

    Vectorised, with no Python object per value: the fixed-width columns (each a 4-byte length
    and a big-endian value) of every row go into numpy structured arrays, and Arrow's
    ``binary_join_element_wise`` joins them with each row's text fields (length, then UTF-8
    bytes), so the joined array's data buffer is the row stream itself. Timestamps become
    microseconds since 2000-01-01, bools one byte. A fixed-width column holding nulls (a
    nullable one: an outcome's early time) is encoded on its own, a null as the length -1
    without a value; the other columns keep the one-array path. Text columns must not hold
    nulls.
    """
    n = table.num_rows
    fixed = [f for f in table.schema if f.type in _BINARY_FORMATS]
    text = [f for f in table.schema if f.type not in _BINARY_FORMATS]
    # Runs of null-free fixed-width columns share one structured array; the row's field count
    # leads the first.
    parts: list[pa.Array] = []
    run: list[tuple[pa.Field, pa.ChunkedArray]] = []
    for f in fixed:
        column = table.column(f.name)
        if not column.null_count:
            run.append((f, column))
            continue
        if run or not parts:
            parts.append(_encode_fixed(run, n, fields=None if parts else table.num_columns))
        run = []
        whole = column.combine_chunks()  # one array, so that the result is one too
        filled = pc.fill_null(whole, pa.scalar(False if pa.types.is_boolean(f.type) else 0, f.type))
        values = _encode_fixed([(f, filled)], n, fields=None)
        parts.append(pc.if_else(whole.is_valid(), values, pa.scalar(_NULL_FIELD, pa.large_binary())))
    if run or not parts:
        parts.append(_encode_fixed(run, n, fields=None if parts else table.num_columns))
    for f in text:
        column = table.column(f.name).combine_chunks()
        lengths = pc.binary_length(column).to_numpy(zero_copy_only=False).astype(">i4")
        parts += [_fixed_binary(lengths.view(np.uint8), 4, n), column.cast(pa.large_binary())]
    joined = pc.binary_join_element_wise(*parts, _NO_SEPARATOR)
    _, offsets_buffer, data = joined.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=n + 1, offset=joined.offset * 8)
    return b"".join((_COPY_HEADER, data[int(offsets[0]) : int(offsets[-1])].to_pybytes(), _COPY_TRAILER))


def _encode_fixed(
    columns: Sequence[tuple[pa.Field, pa.ChunkedArray | pa.Array]], n: int, *, fields: int | None
) -> pa.Array:
    """Each row's fields of null-free fixed-width ``columns`` (preceded by the row's field
    count ``fields`` when given), one binary value per row."""
    layout = [("fields", ">i2")] if fields is not None else []
    for i, (f, _) in enumerate(columns):
        layout += [(f"len{i}", ">i4"), (f"val{i}", _BINARY_FORMATS[f.type])]
    rows = np.empty(n, dtype=np.dtype(layout))
    if fields is not None:
        rows["fields"] = fields
    for i, (f, column) in enumerate(columns):
        rows[f"len{i}"] = np.dtype(_BINARY_FORMATS[f.type]).itemsize
        if pa.types.is_timestamp(f.type):
            rows[f"val{i}"] = column.cast(pa.int64()).to_numpy() - _PG_EPOCH_US
        else:
            rows[f"val{i}"] = column.to_numpy()
    return _fixed_binary(rows.view(np.uint8), rows.dtype.itemsize, n)


def _fixed_binary(data: np.ndarray[Any, np.dtype[np.uint8]], width: int, n: int) -> pa.Array:
    array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])
    return array.cast(pa.large_binary())


def to_arrow(rows: Sequence[asyncpg.Record], schema: pa.Schema) -> pa.Table:
    """Turn fetched records (columns in ``schema`` order) into an Arrow table, column by column.

    The records are flattened into one list in C and each column is a strided slice of it,
    several times faster than indexing every record.
    """
    n = len(rows)
    width = len(schema)
    flat = list(chain.from_iterable(rows))
    arrays = []
    for i, field in enumerate(schema):
        values = flat[i::width]
        if pa.types.is_timestamp(field.type):
            nulls = np.fromiter((v is None for v in values), dtype=bool, count=n) if field.nullable else None
            if nulls is not None and nulls.any():
                values = [0 if v is None else v for v in values]
            else:
                nulls = None
            micros = np.fromiter(values, dtype=np.int64, count=n) + _PG_EPOCH_US
            arrays.append(pa.array(micros, type=field.type, mask=nulls))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _encode_timestamptz(value: Any) -> tuple[int]:
    if isinstance(value, tuple):
        return value  # already (microseconds since 2000-01-01,), as _python_columns builds it
    if isinstance(value, datetime) and value.tzinfo is not None:
        return ((value - _PG_EPOCH) // timedelta(microseconds=1),)
    raise StorageError(f"timestamptz value must be a tz-aware datetime, got {value!r}")


async def init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Install the ``timestamptz`` codec on a new pool connection: integer microseconds since
    2000-01-01 when read, a tz-aware ``datetime`` (or such a 1-tuple) when written."""
    await conn.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamptz,
        decoder=operator.itemgetter(0),
        format="tuple",
    )


# --- reads: binary COPY out, decoded column by column ---------------------------------------------

_TEXT_TYPES = (pa.string(),)
"""Variable-width types :func:`decode_copy` reads (UTF-8 bytes in the binary format)."""
_NULL_FLAG_SUFFIX = "__null"


def copy_select(schema: pa.Schema, alias: str = "", expressions: Mapping[str, str] | None = None) -> str:
    """The ``SELECT`` list whose binary ``COPY`` output :func:`decode_copy` reads as ``schema``.

    Every fixed-width field comes first and always has a value, so the fixed part of a row
    has one size and is decoded with one numpy view: a nullable one is sent as
    ``COALESCE(c, 0)`` followed by the flag ``c IS NULL``. Text fields follow, in schema
    order. ``alias`` qualifies each column (``f`` gives ``f.c``); ``expressions`` gives the
    SQL of fields that are not a column of ``alias`` (of the field's type exactly). Names and
    expressions are constants of ours, never user input.

    Raises:
        StorageError: a field of a type neither fixed-width nor text.
    """
    q = f"{alias}." if alias else ""
    sql = {f.name: (expressions or {}).get(f.name, f"{q}{f.name}") for f in schema}
    fixed: list[str] = []
    for f in schema:
        if f.type in _BINARY_FORMATS:
            if f.nullable:
                zero = "false" if pa.types.is_boolean(f.type) else "0"
                if pa.types.is_timestamp(f.type):
                    zero = "'2000-01-01T00:00:00Z'"
                fixed += [f"COALESCE({sql[f.name]}, {zero})", f"({sql[f.name]} IS NULL)"]
            else:
                fixed.append(sql[f.name])
        elif f.type not in _TEXT_TYPES:
            raise StorageError(f"postgres: cannot read column {f.name} of type {f.type} through COPY")
    return ", ".join([*fixed, *(sql[f.name] for f in schema if f.type in _TEXT_TYPES)])


def _row_layout(schema: pa.Schema) -> tuple[np.dtype[Any], list[pa.Field], list[pa.Field]]:
    """The numpy layout of a row's fixed part in :func:`copy_select`'s order, its fixed and
    its text fields."""
    layout: list[tuple[str, str]] = [("fields", ">i2")]
    fixed = [f for f in schema if f.type in _BINARY_FORMATS]
    text = [f for f in schema if f.type in _TEXT_TYPES]
    for f in fixed:
        layout += [(f"len_{f.name}", ">i4"), (f.name, _BINARY_FORMATS[f.type])]
        if f.nullable:
            layout += [(f"len_{f.name}{_NULL_FLAG_SUFFIX}", ">i4"), (f.name + _NULL_FLAG_SUFFIX, "u1")]
    return np.dtype(layout), fixed, text


def copy_field_count(schema: pa.Schema) -> int:
    """Fields per row of :func:`copy_select`'s output."""
    return len(schema) + sum(1 for f in schema if f.type in _BINARY_FORMATS and f.nullable)


def decode_copy(data: bytes, schema: pa.Schema, *, start: int, max_rows: int) -> tuple[pa.Table, int, bool]:
    """Decode the complete rows of a binary ``COPY`` stream of :func:`copy_select` (``schema``).

    ``data[start:]`` begins at a row (or the trailer); at most ``max_rows`` rows are decoded.
    Returns the rows as a ``schema`` table, the offset just past the last row decoded (where
    the next call starts) and whether the trailer was reached. A row cut off at the end of
    ``data`` is left for the next call, with more data.

    No Python object per value: the rows are located with numpy (:func:`_find_rows`; a row
    by row walk, :func:`_locate_rows`, only when the data is ambiguous), the fixed-width
    fields of every row are one numpy structured view, and each text column is gathered into
    one Arrow array (its UTF-8 checked).

    Raises:
        StorageError: the stream does not have the layout ``schema`` implies (a field count,
            a fixed field's length, a null text field), which would be a bug of ours.
    """
    row_dtype, fixed, text = _row_layout(schema)
    buf = np.frombuffer(data, dtype=np.uint8)
    fields = copy_field_count(schema)
    # Look at about max_rows rows' worth of bytes first (the caller's data may hold many more).
    located = None
    guess = start + max_rows * (row_dtype.itemsize + 64 * len(text))
    for limit in (guess, buf.size) if guess < buf.size else (buf.size,):
        located = _find_rows(buf[:limit], start, max_rows, row_dtype, fields=fields, texts=len(text))
        if located is not None and (located[0].size == max_rows or located[3]):
            break
    if located is None:  # an ambiguous stream (see _find_rows): walk it row by row
        starts, text_heads, end, finished = _locate_rows(
            data, start, max_rows, width=row_dtype.itemsize, fields=fields, texts=len(text)
        )
        located = (np.asarray(starts, dtype=np.int64), np.asarray(text_heads, dtype=np.int64), end, finished)
    begin, text_heads_array, end, finished = located
    n = begin.size
    rows = _gather(buf, begin, row_dtype.itemsize).view(row_dtype).reshape(n)
    for f in fixed:
        _check_lengths(rows, f.name)
        if f.nullable:
            _check_lengths(rows, f.name + _NULL_FLAG_SUFFIX)
    columns = {f.name: _fixed_column(rows, f) for f in fixed}
    heads = text_heads_array.reshape(n, len(text))
    for i, f in enumerate(text):
        columns[f.name] = _gather_text(buf, heads[:, i])
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema), end, finished


def _find_rows(
    buf: np.ndarray[Any, np.dtype[np.uint8]],
    start: int,
    max_rows: int,
    row_dtype: np.dtype[Any],
    *,
    fields: int,
    texts: int,
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.int64]], int, bool] | None:
    """:func:`_locate_rows` without a Python step per row, or ``None`` when it cannot tell.

    Every row starts with the same bytes (its field count, the first field's length) and has
    the same length words in its fixed part: each position whose bytes fit that whole layout
    is a candidate row, and each candidate's end follows from its text fields' lengths, all
    computed at once. The rows are then the chain of candidates from ``start`` (each starting
    where the previous one ends). Data inside a row may happen to look like a row's start;
    then the chain has a candidate off it, and the answer is ``None`` (the caller walks the
    rows one by one instead).
    """
    size = buf.size
    width = row_dtype.itemsize
    expected = np.zeros(1, dtype=row_dtype)
    _fill_lengths(expected, fields)
    signature = np.frombuffer(expected.tobytes()[:6], dtype=np.uint8)
    last = size - width  # a row's fixed part must fit
    if last < start:
        return _no_rows(buf, start)
    window = buf[start : last + 6]
    # The rarest byte first (the field count's low byte), then the others on the few left.
    cand = np.flatnonzero(window[1 : last - start + 2] == signature[1])
    for i in (0, 2, 3, 4, 5):
        cand = cand[window[cand + i] == signature[i]]
    cand += start
    rows = _gather(buf, cand, width).view(row_dtype).reshape(cand.size)
    ok = np.ones(cand.size, dtype=bool)
    for name in row_dtype.names or ():
        if name == "fields" or name.startswith("len_"):
            ok &= rows[name] == expected[name][0]
    cand = cand[ok]
    heads = np.empty((cand.size, texts), dtype=np.int64)
    ends = cand + width
    complete = np.ones(cand.size, dtype=bool)
    for k in range(texts):
        complete &= ends + 4 <= size
        at = np.where(complete, ends, 0)
        lengths = _gather(buf, at, 4).view(">i4").reshape(cand.size)
        heads[:, k] = ends
        complete &= lengths >= 0
        ends = ends + 4 + np.where(complete, lengths, 0).astype(np.int64)
    complete &= ends <= size
    cand, heads, ends = cand[complete], heads[complete], ends[complete]
    if cand.size == 0:
        return _no_rows(buf, start)
    # The chain from ``start``: every candidate must continue it, or it is not a clean cut.
    if cand[0] != start or not np.array_equal(ends[:-1], cand[1:]):
        return None
    n = min(cand.size, max_rows)
    end = int(ends[n - 1])
    finished = buf[end : end + 2].tobytes() == _COPY_TRAILER
    return cand[:n], heads[:n].reshape(-1), end, finished


def _no_rows(
    buf: np.ndarray[Any, np.dtype[np.uint8]], start: int
) -> tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.int64]], int, bool] | None:
    """No complete row at ``start``: the trailer, else nothing yet (``None`` when the bytes
    there are not a row's start: the caller's walk reports it)."""
    empty = np.zeros(0, dtype=np.int64)
    if buf[start : start + 2].tobytes() == _COPY_TRAILER:
        return empty, empty, start, True
    return None


def _fill_lengths(rows: np.ndarray[Any, np.dtype[Any]], fields: int) -> None:
    """Set the field count and every length word of ``rows`` (fixed parts) to what they must be."""
    rows["fields"] = fields
    for name in rows.dtype.names or ():
        if name.startswith("len_"):
            rows[name] = rows.dtype.fields[name[4:]][0].itemsize  # type: ignore[index]


def _locate_rows(
    data: bytes, pos: int, max_rows: int, *, width: int, fields: int, texts: int
) -> tuple[list[int], list[int], int, bool]:
    """Where each complete row starts and where its text fields' length words are, from
    ``pos``: the one loop in Python (a row's length depends on its text fields)."""
    size = len(data)
    unpack = _I4.unpack_from
    starts: list[int] = []
    text_heads: list[int] = []
    with memoryview(data) as view:
        while len(starts) < max_rows and pos + 2 <= size:
            count = _I2.unpack_from(view, pos)[0]
            if count == -1:
                return starts, text_heads, pos, True
            if count != fields:
                raise StorageError(f"postgres COPY: a row has {count} fields, expected {fields}")
            p = pos + width
            heads: list[int] = []
            for _ in range(texts):
                if p + 4 > size:
                    return starts, text_heads, pos, False
                length = unpack(view, p)[0]
                if length < 0:
                    raise StorageError("postgres COPY: a text field is null")
                heads.append(p)
                p += 4 + length
            if p > size:
                break
            starts.append(pos)
            text_heads += heads
            pos = p
    return starts, text_heads, pos, False


def _check_lengths(rows: np.ndarray[Any, np.dtype[Any]], name: str) -> None:
    expected = rows.dtype.fields[name][0].itemsize  # type: ignore[index]
    if rows.size and not np.all(rows["len_" + name] == expected):
        raise StorageError(f"postgres COPY: field {name} has an unexpected length")


def _fixed_column(rows: np.ndarray[Any, np.dtype[Any]], f: pa.Field) -> pa.Array:
    values = rows[f.name]
    mask = rows[f.name + _NULL_FLAG_SUFFIX].astype(bool) if f.nullable else None
    if pa.types.is_timestamp(f.type):
        return pa.array(values.astype(np.int64) + _PG_EPOCH_US, type=f.type, mask=mask)
    if pa.types.is_boolean(f.type):
        return pa.array(values.astype(bool), type=f.type, mask=mask)
    return pa.array(values.astype(values.dtype.newbyteorder("=")), type=f.type, mask=mask)


def _gather(
    buf: np.ndarray[Any, np.dtype[np.uint8]], at: np.ndarray[Any, np.dtype[np.int64]], width: int
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The ``width`` bytes at each of ``at``, one row each (``(len(at), width)``, a copy).

    Through a sliding-window view of ``buf`` (no copy), so only ``len(at)`` indices are built.
    """
    if buf.size < width:
        return np.zeros((0, width), dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(buf, width)
    rows: np.ndarray[Any, np.dtype[np.uint8]] = windows[at]
    return rows


def _gather_text(
    buf: np.ndarray[Any, np.dtype[np.uint8]], heads: np.ndarray[Any, np.dtype[np.int64]]
) -> pa.Array:
    """One string array from the text fields whose length words start at ``heads``."""
    n = heads.size
    lengths = _gather(buf, heads, 4).view(">i4").reshape(n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    # Each byte's position in ``buf``: its field's first byte plus its place in the field.
    index = np.arange(total, dtype=np.int64) + np.repeat(heads + 4 - offsets[:-1], lengths)
    data = buf[index]
    array = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        array.validate(full=True)  # UTF-8 as the server sent it; checked, not trusted
    except pa.ArrowInvalid as exc:
        raise StorageError(f"postgres COPY: a text field is not UTF-8: {exc}") from exc
    return array.cast(pa.string())
