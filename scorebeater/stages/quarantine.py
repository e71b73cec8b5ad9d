"""The feature stage's side of the quarantine table: one season's box scores set aside.

:class:`SeasonQuarantine` is read once per season per run and decides, for the stage, what
goes into the table (a rejected box score, a game whose retry budget is spent), what comes
back out (games an operator marked for retry, resolved once processed), and which games an
operator skipped (they count towards the season's completion). Entries are written before the
feature commit that sets their games aside, so a crash between the two makes the stage fetch
the game again, never lose it. See :mod:`scorebeater.storage.quarantine` for the states.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Collection, Iterable, Sequence

import structlog

from scorebeater.scoreapi.records import GameInfo
from scorebeater.stages.box_scores import Rejected
from scorebeater.stages.season_state import GameFailures
from scorebeater.storage.quarantine import STATES, Quarantine, QuarantineEntry, QuarantineState

log = structlog.get_logger(__name__)

KIND = "box_score"
BUDGET_SPENT = "retry_budget_exhausted"
"""The reason of a game set aside because its fetch kept failing (not a rejected record)."""


class SeasonQuarantine:
    """One season's box-score entries of the quarantine table, as of this run."""

    def __init__(self, store: Quarantine, season: int, entries: Iterable[QuarantineEntry]) -> None:
        self._store = store
        self.season = season
        self._entries = {e.key: e for e in entries if e.kind == KIND and e.season == season}

    def keys(self, *states: QuarantineState) -> set[str]:
        """Game ids of the entries in any of ``states``."""
        return {key for key, e in self._entries.items() if e.state in states}

    def counts(self) -> dict[str, int]:
        """Entries by state (every state, zeros included)."""
        found = Counter(e.state for e in self._entries.values())
        return {state: found[state] for state in STATES}

    def rejected(self, game: GameInfo, record: Rejected, now: dt.datetime) -> tuple[QuarantineEntry, bool]:
        """The entry recording that ``game``'s box score was rejected, and whether it is new.

        A known entry counts one more attempt and goes back to ``open`` (a retry that failed),
        unless an operator skipped it meanwhile.
        """
        known = self._entries.get(game.game_id)
        if known is None:
            entry = QuarantineEntry(
                kind=KIND,
                key=game.game_id,
                season=game.season,
                reason=record.reason,
                detail=record.detail,
                payload=record.payload,
                first_seen=now,
                last_seen=now,
            )
            return entry, True
        entry = dataclasses.replace(
            known,
            reason=record.reason,
            detail=record.detail,
            payload=record.payload,
            truncated=False,
            last_seen=max(now, known.last_seen),
            attempts=known.attempts + 1,
            state="skipped" if known.state == "skipped" else "open",
        )
        return entry, False

    def budget_spent(self, game: GameInfo, failures: GameFailures) -> QuarantineEntry:
        """The entry recording that ``game``'s fetch kept failing past its retry budget."""
        known = self._entries.get(game.game_id)
        first = failures.first_failed_at if known is None else min(known.first_seen, failures.first_failed_at)
        return QuarantineEntry(
            kind=KIND,
            key=game.game_id,
            season=game.season,
            reason=BUDGET_SPENT,
            detail=f"failed in {failures.runs} runs since {failures.first_failed_at.isoformat()}: "
            f"{failures.error}",
            payload=b"" if known is None else known.payload,
            truncated=False if known is None else known.truncated,
            first_seen=first,
            last_seen=max(failures.last_failed_at, first),
            attempts=failures.runs + (0 if known is None else known.attempts),
            state="skipped" if known is not None and known.state == "skipped" else "open",
        )

    def resolved(self, processed: Collection[str]) -> list[QuarantineEntry]:
        """Entries not yet resolved whose game is now processed, marked ``resolved``."""
        return [
            dataclasses.replace(e, state="resolved")
            for key, e in self._entries.items()
            if key in processed and e.state != "resolved"
        ]

    async def put(self, entries: Sequence[QuarantineEntry]) -> None:
        """Store ``entries`` (one write) and keep them as this run's view."""
        if not entries:
            return
        await self._store.put(entries)
        for entry in entries:
            self._entries[entry.key] = entry
            resolved = entry.state == "resolved"
            (log.info if resolved else log.warning)(
                "features.quarantine_resolved" if resolved else "features.box_score_quarantined",
                season=entry.season,
                game_id=entry.key,
                reason=entry.reason,
                state=entry.state,
                attempts=entry.attempts,
            )
