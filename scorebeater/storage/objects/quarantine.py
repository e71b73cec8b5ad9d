"""The dead-letter table of the object-store backends: the ``quarantine`` table, one
partition per season (see :mod:`scorebeater.storage.quarantine`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from scorebeater.storage.objects.commit import Committer
from scorebeater.storage.objects.scan import scan
from scorebeater.storage.objects.tables import QUARANTINE
from scorebeater.storage.quarantine import (
    QuarantineEntry,
    QuarantineState,
    check_state,
    entries_from_table,
    entries_table,
    select,
)


class ObjectQuarantine:
    """``Quarantine`` over the ``quarantine`` table of an object store.

    Get it as ``ObjectTableStorage.quarantine``; it commits through the storage's
    :class:`~scorebeater.storage.objects.commit.Committer`, so its writes serialise with
    every other write of the store. An entry rewritten by a later commit replaces the
    earlier one (the table's key is the entry id).
    """

    def __init__(self, committer: Committer, *, batch_rows: int) -> None:
        self._committer = committer
        self._batch_rows = batch_rows
        self._memo: tuple[frozenset[str], list[QuarantineEntry]] = (frozenset(), [])
        """The whole table as of a set of segments: a feature run asks on every poll, and the
        table rarely changes, so an unchanged manifest costs no read."""

    async def put(self, entries: Sequence[QuarantineEntry]) -> None:
        """Insert or replace entries by ``(kind, key)`` in one commit (none when empty).

        Raises:
            StorageError: an invalid entry. StorageUnavailable: the store is unreachable.
        """
        await self._committer.write([(QUARANTINE, entries_table(entries))], None)

    async def entries(
        self, *, season: int | None = None, state: str | None = None, kind: str | None = None
    ) -> list[QuarantineEntry]:
        """Stored entries matching the filters given, in ``(season, kind, key)`` order."""
        if state is not None:
            check_state(state)
        partitions = (await self._committer.snapshot()).partitions(QUARANTINE.name)
        segments = frozenset(s.key for segs in partitions.values() for s in segs)
        if segments != self._memo[0]:
            found: list[QuarantineEntry] = []
            async for table in scan(
                self._committer.objects, QUARANTINE, partitions, None, batch_rows=self._batch_rows
            ):
                found += entries_from_table(table)
            self._memo = (segments, found)
        return select(self._memo[1], season=season, state=state, kind=kind)

    async def get(self, entry_id: int) -> QuarantineEntry | None:
        """The entry with this id, or ``None``."""
        return next((e for e in await self.entries() if e.entry_id == entry_id), None)

    async def set_state(self, entry_id: int, state: QuarantineState) -> QuarantineEntry | None:
        """Rewrite the entry with ``state`` (one commit); ``None`` if there is no such entry."""
        check_state(state)
        entry = await self.get(entry_id)
        if entry is None:
            return None
        if entry.state != state:
            entry = dataclasses.replace(entry, state=state)
            await self.put([entry])
        return entry
