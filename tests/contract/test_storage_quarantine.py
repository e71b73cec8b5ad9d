"""The storage contract of the dead-letter table (``Storage.quarantine``), on every backend.

Same fixtures as ``test_storage.py``: each case gets a fresh, empty backend (local files, S3 on
moto, Postgres).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import TYPE_CHECKING, Any

import pytest

from scorebeater.errors import StorageError
from scorebeater.storage import open_storage
from scorebeater.storage.quarantine import (
    MAX_PAYLOAD_BYTES,
    Quarantine,
    QuarantineEntry,
    quarantine_id,
)

if TYPE_CHECKING:
    from scorebeater.config import StorageConfig
    from scorebeater.storage.base import Storage

T0 = dt.datetime(2014, 11, 2, 2, 30, tzinfo=dt.UTC)


def entry(game_id: str, **changes: Any) -> QuarantineEntry:
    base = QuarantineEntry(
        kind="box_score",
        key=game_id,
        season=2014,
        reason="unknown_game",
        detail=f"box score {game_id}: asked for game {game_id}, got another",
        payload=b'{"game_id": "x", "players": {}}',
        first_seen=T0,
        last_seen=T0,
    )
    return dataclasses.replace(base, **changes)


async def test_entries_round_trip_with_filters_and_ids(storage: Storage) -> None:
    assert isinstance(storage.quarantine, Quarantine)
    assert storage.quarantine is storage.quarantine
    entries = [
        entry("201400002"),
        entry("201400001", state="skipped"),
        entry("201500007", season=2015, state="retry", attempts=3, last_seen=T0 + dt.timedelta(hours=2)),
    ]
    await storage.quarantine.put(entries)
    assert await storage.quarantine.entries() == sorted(entries, key=lambda e: (e.season, e.key))
    assert [e.key for e in await storage.quarantine.entries(season=2014)] == ["201400001", "201400002"]
    assert [e.key for e in await storage.quarantine.entries(state="retry")] == ["201500007"]
    assert [e.key for e in await storage.quarantine.entries(season=2014, state="open")] == ["201400002"]
    assert await storage.quarantine.entries(kind="other") == []
    assert await storage.quarantine.entries(season=2013) == []
    wanted = entries[2]
    assert wanted.entry_id == quarantine_id("box_score", "201500007")
    assert await storage.quarantine.get(wanted.entry_id) == wanted
    assert await storage.quarantine.get(quarantine_id("box_score", "nope")) is None


async def test_put_is_an_idempotent_upsert_by_kind_and_key(storage: Storage) -> None:
    first = entry("201400005")
    await storage.quarantine.put([first])
    await storage.quarantine.put([first])
    assert await storage.quarantine.entries() == [first]
    again = dataclasses.replace(first, attempts=2, last_seen=T0 + dt.timedelta(days=1), reason="bad_type")
    await storage.quarantine.put([again])
    assert await storage.quarantine.entries() == [again]
    await storage.quarantine.put([])  # nothing to write
    assert await storage.quarantine.entries() == [again]


async def test_payload_is_capped_with_a_truncated_flag_and_kept_as_bytes(storage: Storage) -> None:
    big = entry("201400003", payload=b"[" + b"1," * MAX_PAYLOAD_BYTES + b"1]")
    binary = entry("201400004", payload=bytes(range(256)))
    await storage.quarantine.put([big, binary])
    stored = {e.key: e for e in await storage.quarantine.entries()}
    assert stored["201400003"].truncated
    assert stored["201400003"].payload == big.payload[:MAX_PAYLOAD_BYTES]
    assert not stored["201400004"].truncated
    assert stored["201400004"].payload == bytes(range(256))
    assert stored["201400004"].as_json()["payload_truncated"] is False


async def test_set_state_updates_one_entry_and_is_idempotent(storage: Storage) -> None:
    await storage.quarantine.put([entry("201400001"), entry("201400002")])
    target = quarantine_id("box_score", "201400001")
    updated = await storage.quarantine.set_state(target, "retry")
    assert updated is not None
    assert updated.state == "retry"
    assert await storage.quarantine.set_state(target, "retry") == updated
    states = {e.key: e.state for e in await storage.quarantine.entries()}
    assert states == {"201400001": "retry", "201400002": "open"}
    assert await storage.quarantine.set_state(quarantine_id("box_score", "absent"), "skipped") is None
    with pytest.raises(StorageError, match="state must be one of"):
        await storage.quarantine.set_state(target, "gone")  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="state must be one of"):
        await storage.quarantine.entries(state="gone")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "Box Score"}, "kind"),
        ({"key": ""}, "key must be"),
        ({"attempts": 0}, "attempts"),
        ({"first_seen": T0.replace(tzinfo=None)}, "tz-aware"),
        ({"last_seen": T0 - dt.timedelta(seconds=1)}, "last_seen is before"),
        ({"state": "lost"}, "state must be one of"),
    ],
)
async def test_an_invalid_entry_is_rejected_and_nothing_is_written(
    storage: Storage, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(StorageError, match=message):
        await storage.quarantine.put([entry("201400001"), entry("201400002", **changes)])
    assert await storage.quarantine.entries() == []


async def test_entries_survive_reopen(backend_config: StorageConfig) -> None:
    kept = entry("201400009", state="skipped", attempts=4)
    async with open_storage(backend_config) as storage:
        await storage.quarantine.put([kept])
    async with open_storage(backend_config) as storage:
        assert await storage.quarantine.entries() == [kept]
