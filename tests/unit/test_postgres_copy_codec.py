"""Decoding Postgres's binary COPY stream (``codec.decode_copy``) without a server.

``copy_payload`` (the write path's encoder) writes the layout ``copy_select`` asks the server
for when no fixed-width field is nullable, so its output stands in for the server's here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from scorebeater.errors import StorageError
from scorebeater.storage.postgres import codec

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("seq", pa.int32(), nullable=False),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("x", pa.float32(), nullable=False),
        pa.field("p", pa.float64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("hash", pa.string(), nullable=False),
    ]
)
HEADER = 19  # signature, flags, header extension length (0)


def rows(n: int, seed: int = 3) -> pa.Table:
    rng = np.random.default_rng(seed)
    names = ["".join(rng.choice(list("abcŽ李 "), rng.integers(0, 12))) for _ in range(n)]
    return pa.table(
        {
            # Ids whose low bytes spell a row's start (field count 7, length 8), and values
            # equal to length words, so data inside rows looks like row starts.
            "id": pa.array((rng.integers(0, 1 << 40, n) << 16) | 0x0007, pa.int64()),
            "seq": pa.array(np.full(n, 8, dtype=np.int32)),
            "at": pa.array(rng.integers(0, 10**15, n), pa.timestamp("us", tz="UTC")),
            "x": pa.array(rng.random(n).astype(np.float32)),
            "p": pa.array(rng.random(n)),
            "name": pa.array(names, pa.string()),
            "hash": pa.array([f"{v:016x}" for v in rng.integers(0, 1 << 62, n)], pa.string()),
        },
        schema=SCHEMA,
    )


def decode_all(data: bytes, max_rows: int) -> tuple[pa.Table, bool]:
    tables, pos, finished = [], HEADER, False
    while not finished:
        table, end, finished = codec.decode_copy(data, SCHEMA, start=pos, max_rows=max_rows)
        if table.num_rows == 0 and not finished:
            break
        tables.append(table)
        pos = end
    return pa.concat_tables(tables), finished


def test_copy_payload_has_the_layout_copy_select_reads() -> None:
    assert codec.copy_columns(SCHEMA) == tuple(SCHEMA.names)
    assert codec.copy_select(SCHEMA, "t") == ", ".join(f"t.{n}" for n in SCHEMA.names)


@pytest.mark.parametrize("max_rows", [1, 7, 1000])
def test_a_stream_decodes_to_the_rows_encoded(max_rows: int) -> None:
    table = rows(300)
    decoded, finished = decode_all(codec.copy_payload(table), max_rows)
    assert finished
    assert decoded.equals(table)


def test_a_cut_stream_decodes_its_complete_rows_and_resumes_where_it_stopped() -> None:
    table = rows(40)
    data = codec.copy_payload(table)
    for cut in range(HEADER, len(data), 97):
        head, end, finished = codec.decode_copy(data[:cut], SCHEMA, start=HEADER, max_rows=1000)
        assert not finished
        rest, _, finished = codec.decode_copy(data, SCHEMA, start=end, max_rows=1000)
        assert finished
        assert pa.concat_tables([head, rest]).equals(table)


def test_the_row_by_row_walk_agrees_when_the_fast_path_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    table = rows(200)
    data = codec.copy_payload(table)
    monkeypatch.setattr(codec, "_find_rows", lambda *args, **kwargs: None)
    decoded, finished = decode_all(data, 64)
    assert finished
    assert decoded.equals(table)


def test_a_stream_of_another_layout_is_refused() -> None:
    other = pa.schema([*SCHEMA, pa.field("extra", pa.int32(), nullable=False)])
    with pytest.raises(StorageError, match="fields"):
        codec.decode_copy(codec.copy_payload(rows(3)), other, start=HEADER, max_rows=10)
