"""The dead-letter (quarantine) table: records a stage set aside instead of retrying forever.

A stage that cannot use a record (a box score that fails validation, a game whose fetch keeps
failing after its retry budget) stores it here with the reason and moves on; an operator then
lists the entries and retries or skips each one (``GET /v1/quarantine``, ``scorebeater
quarantine``). An entry is keyed by ``(kind, key)`` (``("box_score", "201400123")``); its
``id`` is derived from that key, so every backend gives the same entry the same id and a
rewrite never makes a second entry. A key belongs to one season (a game id does).

States:

- ``open``: set aside; the stage does not fetch it again and its season does not complete;
- ``retry``: an operator asked for another attempt: the stage fetches it on its next run and
  marks it ``resolved`` on success, ``open`` again (one more attempt) on failure;
- ``skipped``: an operator accepted its loss: its season completes without it;
- ``resolved``: a later attempt succeeded.

The payload is the record as received (JSON), cut to :data:`MAX_PAYLOAD_BYTES` (``truncated``
says so). This module imports nothing of the package but ``errors``: the storage protocol,
the backends and the table specs all depend on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, get_args, runtime_checkable

import pyarrow as pa

from scorebeater.errors import StorageError

QuarantineState = Literal["open", "retry", "skipped", "resolved"]
STATES: tuple[QuarantineState, ...] = get_args(QuarantineState)
KINDS = ("box_score",)
"""Kinds of records a stage quarantines (the metric's ``kind`` label values)."""
MAX_PAYLOAD_BYTES = 64 * 1024
"""A stored payload is cut to this many bytes: enough to see what was wrong, never a flood."""
MAX_KEY_CHARS = 128

_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
_UTC_TS = pa.timestamp("us", tz="UTC")

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("season", pa.int32(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("first_seen", _UTC_TS, nullable=False),
        pa.field("last_seen", _UTC_TS, nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
    ]
)


def quarantine_id(kind: str, key: str) -> int:
    """The id of entry ``(kind, key)``: 53 bits of BLAKE2b, the same on every backend.

    53 bits keep ids exact in JSON clients that read numbers as doubles.
    """
    digest = hashlib.blake2b(f"{kind}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 11


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineEntry:
    """One set-aside record. Build it with keyword arguments; :func:`check_entry` validates it."""

    kind: str
    key: str
    season: int
    reason: str
    """A short reason code (``unknown_game``, ``bad_type``, ``retry_budget_exhausted``)."""
    detail: str = ""
    """The error message, for the operator."""
    payload: bytes = b""
    truncated: bool = False
    first_seen: dt.datetime
    last_seen: dt.datetime
    attempts: int = 1
    """Failed attempts (fetches or runs) so far."""
    state: QuarantineState = "open"

    @property
    def entry_id(self) -> int:
        """The entry's id (:func:`quarantine_id` of its kind and key)."""
        return quarantine_id(self.kind, self.key)

    def as_json(self) -> dict[str, object]:
        """The entry as the admin API and the CLI show it (payload as text, lossy if not UTF-8)."""
        return {
            "id": self.entry_id,
            "kind": self.kind,
            "key": self.key,
            "season": self.season,
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "attempts": self.attempts,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "payload": self.payload.decode("utf-8", errors="replace"),
            "payload_truncated": self.truncated,
        }


def check_state(state: str) -> QuarantineState:
    """Return ``state`` if it is one of :data:`STATES`, else raise ``StorageError``."""
    for known in STATES:
        if state == known:
            return known
    raise StorageError(f"quarantine: state must be one of {list(STATES)}, got {state!r}")


def check_entry(entry: QuarantineEntry) -> QuarantineEntry:
    """Return ``entry`` with its payload capped at :data:`MAX_PAYLOAD_BYTES`, if it is valid.

    Raises:
        StorageError: naming the field: a kind that is not ``[a-z][a-z0-9_]*`` (at most 32),
            an empty or overlong key, a season or attempts out of range, naive or reversed
            timestamps, an unknown state.
    """
    problems = []
    if not _KIND.fullmatch(entry.kind):
        problems.append(f"kind {entry.kind!r} is not [a-z][a-z0-9_]*, at most 32 characters")
    if not entry.key or len(entry.key) > MAX_KEY_CHARS:
        problems.append(f"key must be 1-{MAX_KEY_CHARS} characters, got {len(entry.key)}")
    if not 0 < entry.season < 2**31:
        problems.append(f"season {entry.season!r} is not a positive int32")
    if not 1 <= entry.attempts < 2**31:
        problems.append(f"attempts {entry.attempts!r} is not a positive int32")
    if entry.first_seen.tzinfo is None or entry.last_seen.tzinfo is None:
        problems.append("first_seen and last_seen must be tz-aware")
    elif entry.last_seen < entry.first_seen:
        problems.append("last_seen is before first_seen")
    if entry.state not in STATES:
        problems.append(f"state must be one of {list(STATES)}, got {entry.state!r}")
    if problems:
        raise StorageError(f"quarantine entry {entry.kind}/{entry.key}: {'; '.join(problems)}")
    if len(entry.payload) > MAX_PAYLOAD_BYTES:
        return dataclasses.replace(entry, payload=entry.payload[:MAX_PAYLOAD_BYTES], truncated=True)
    return entry


def entries_table(entries: Sequence[QuarantineEntry]) -> pa.Table:
    """Checked entries as ``QUARANTINE_SCHEMA`` rows (payloads capped).

    Raises:
        StorageError: an invalid entry (:func:`check_entry`), or values of the wrong type.
    """
    checked = [check_entry(e) for e in entries]
    columns: dict[str, list[object]] = {name: [] for name in QUARANTINE_SCHEMA.names}
    for e in checked:
        for name, value in (
            ("id", e.entry_id),
            ("kind", e.kind),
            ("key", e.key),
            ("season", e.season),
            ("reason", e.reason),
            ("detail", e.detail),
            ("payload", e.payload),
            ("truncated", e.truncated),
            ("first_seen", e.first_seen.astimezone(dt.UTC)),
            ("last_seen", e.last_seen.astimezone(dt.UTC)),
            ("attempts", e.attempts),
            ("state", e.state),
        ):
            columns[name].append(value)
    try:
        return pa.table(columns, schema=QUARANTINE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StorageError(f"quarantine: entries do not fit the schema: {exc}") from exc


def entries_from_table(table: pa.Table) -> list[QuarantineEntry]:
    """The entries of ``QUARANTINE_SCHEMA`` rows (as read back from a backend)."""
    return [
        QuarantineEntry(
            kind=row["kind"],
            key=row["key"],
            season=row["season"],
            reason=row["reason"],
            detail=row["detail"],
            payload=row["payload"],
            truncated=row["truncated"],
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            attempts=row["attempts"],
            state=check_state(row["state"]),
        )
        for row in table.to_pylist()
    ]


def select(
    entries: Sequence[QuarantineEntry],
    *,
    season: int | None = None,
    state: str | None = None,
    kind: str | None = None,
) -> list[QuarantineEntry]:
    """The entries matching the filters given, in ``(season, kind, key)`` order."""
    chosen = [
        e
        for e in entries
        if (season is None or e.season == season)
        and (state is None or e.state == state)
        and (kind is None or e.kind == kind)
    ]
    return sorted(chosen, key=lambda e: (e.season, e.kind, e.key))


@runtime_checkable
class Quarantine(Protocol):
    """The dead-letter table of a store (``Storage.quarantine``).

    Small by design (a handful of entries per season): reads return lists, not streams.
    Errors: ``StorageError`` for an invalid entry or state, ``StorageUnavailable`` when the
    backend cannot be reached. Every write is atomic.
    """

    async def put(self, entries: Sequence[QuarantineEntry]) -> None:
        """Insert or replace entries by ``(kind, key)``, payloads capped; all in one write.

        Idempotent: putting the same entries again changes nothing. Nothing to put: no write.
        """
        ...

    async def entries(
        self, *, season: int | None = None, state: str | None = None, kind: str | None = None
    ) -> list[QuarantineEntry]:
        """The stored entries matching the filters given, in ``(season, kind, key)`` order."""
        ...

    async def get(self, entry_id: int) -> QuarantineEntry | None:
        """The entry with this id, or ``None`` if there is none."""
        ...

    async def set_state(self, entry_id: int, state: QuarantineState) -> QuarantineEntry | None:
        """Set the entry's state; return the updated entry, or ``None`` if there is none.

        Idempotent. Which changes make sense is the caller's rule (an operator never retries a
        resolved entry); the store only checks that ``state`` is one of :data:`STATES`.
        """
        ...
