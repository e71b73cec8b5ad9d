"""Postgres backend parts that need no server: packaged migrations, names, the binary COPY
codec, secrets kept out of errors, and failures before any connection.

The cases against a real Postgres 15 are in tests/integration/test_storage_postgres.py.
"""

from __future__ import annotations

import datetime as dt
import socket
import struct
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from scorebeater.config import PostgresStorageConfig, Secret, StorageConfig
from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.storage.base import PredictionCache, Storage, check_schema_name
from scorebeater.storage.postgres import (
    PostgresPredictionCache,
    PostgresStorage,
    copy_columns,
    copy_payload,
    load_migrations,
    open_postgres,
)
from scorebeater.storage.postgres.connection import Redactor

if TYPE_CHECKING:
    from collections.abc import Iterator

PASSWORD = "pw-Zq8x!s3cr3t"
SCHEMA = "unit_never_created"


def _cfg(dsn: str) -> StorageConfig:
    postgres = PostgresStorageConfig(
        dsn=Secret(dsn), schema=SCHEMA, min_pool=1, max_pool=3, command_timeout_s=20
    )
    return StorageConfig(backend="postgres", postgres=postgres)


def test_migrations_are_numbered_and_packaged() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"
    assert "CREATE TABLE features" in migrations[0].sql


@pytest.mark.parametrize("name", ["Bad", "1abc", "pg_temp", 'a"b', "a;drop schema public", "x" * 64, ""])
def test_schema_names_are_validated(name: str) -> None:
    with pytest.raises(StorageError, match="invalid Postgres schema name"):
        check_schema_name(name)


def test_backend_has_every_protocol_member() -> None:
    # issubclass() does not take a protocol with a property (``cache``): check the names.
    for protocol, cls in ((Storage, PostgresStorage), (PredictionCache, PostgresPredictionCache)):
        members = [n for n in vars(protocol) if not n.startswith("_")]
        assert members
        assert [n for n in members if not hasattr(cls, n)] == []


def test_copy_payload_is_postgres_binary_copy() -> None:
    ts = dt.datetime(2000, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    table = pa.table(
        {
            "name": pa.array(["é"]),
            "n": pa.array([7], pa.int32()),
            "at": pa.array([ts], pa.timestamp("us", tz="UTC")),
            "ok": pa.array([True]),
        }
    )
    assert copy_columns(table.schema) == ("n", "at", "ok", "name")
    payload = copy_payload(table)
    header, trailer = b"PGCOPY\n\xff\r\n\x00" + bytes(8), b"\xff\xff"
    assert payload.startswith(header)
    assert payload.endswith(trailer)
    row = payload[len(header) : -len(trailer)]
    name = "é".encode()
    assert row == struct.pack(">hiiiqib", 4, 4, 7, 8, 1_000_000, 1, 1) + struct.pack(">i", len(name)) + name


def test_copy_payload_writes_a_null_as_length_minus_one() -> None:
    """A nullable fixed-width column with nulls (an outcome's early time) is sent field by field."""
    ts = dt.datetime(2000, 1, 1, 0, 0, 2, tzinfo=dt.UTC)
    table = pa.table(
        {
            "n": pa.array([7, 8], pa.int32()),
            "seq": pa.array([None, 30], pa.int32()),
            "at": pa.array([ts, None], pa.timestamp("us", tz="UTC")),
            "m": pa.array([1, 2], pa.int64()),
            "name": pa.array(["a", "bc"]),
        }
    )
    assert copy_columns(table.schema) == ("n", "seq", "at", "m", "name")
    payload = copy_payload(table)
    rows = payload[len(b"PGCOPY\n\xff\r\n\x00") + 8 : -2]
    null = struct.pack(">i", -1)
    first = struct.pack(">hii", 5, 4, 7) + null + struct.pack(">iq", 8, 2_000_000) + struct.pack(">iq", 8, 1)
    second = struct.pack(">hii", 5, 4, 8) + struct.pack(">ii", 4, 30) + null + struct.pack(">iq", 8, 2)
    assert rows == first + struct.pack(">i", 1) + b"a" + second + struct.pack(">i", 2) + b"bc"


def _assert_clean(exc: BaseException, dsn: str) -> None:
    assert exc.__cause__ is not None
    text = str(exc)
    assert PASSWORD not in text
    assert PASSWORD.replace("!", "%21") not in text
    assert dsn not in text


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:p%40ss!word@db.internal:5432/prod",
        "postgresql://app@db.internal/prod?password=p%40ss!word",
    ],
)
def test_redactor_scrubs_every_spelling_of_the_password(dsn: str) -> None:
    redact = Redactor(dsn)
    for text in (dsn, "p@ss!word", "p%40ss!word", "p%40ss%21word", f"could not reach {dsn}: refused"):
        scrubbed = redact(text)
        assert "ss!word" not in scrubbed
        assert "ss%21word" not in scrubbed
    assert redact("connection refused") == "connection refused"


async def test_refused_connection_is_unavailable_and_hides_the_password() -> None:
    with _socket_port() as port:
        dsn = f"postgresql://postgres:{PASSWORD.replace('!', '%21')}@127.0.0.1:{port}/postgres"
        with pytest.raises(StorageUnavailable) as info:
            async with open_postgres(_cfg(dsn)):
                pass
    _assert_clean(info.value, dsn)


async def test_missing_dsn_names_the_variable() -> None:
    cfg = StorageConfig(backend="postgres", postgres=PostgresStorageConfig(dsn_env="MY_PG", schema=SCHEMA))
    with pytest.raises(StorageUnavailable, match="MY_PG"):
        async with open_postgres(cfg):
            pass


@contextmanager
def _socket_port() -> Iterator[int]:
    """A loopback port that is bound but not listening (connecting is refused), held meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
