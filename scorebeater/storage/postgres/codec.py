"""Arrow to Postgres and back, without a Python object per value.

Writes: :func:`copy_payload` encodes an Arrow table straight into Postgres's binary ``COPY``
format (vectorised with numpy and Arrow kernels). Reads: :func:`to_arrow` turns fetched
records into an Arrow table column by column; timestamps arrive as integer microseconds
through the ``tuple``-format codec that :func:`init_connection` installs on ``timestamptz``,
which avoids a ``datetime`` per value. All of it is CPU-bound: callers run it in a worker
thread.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
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
