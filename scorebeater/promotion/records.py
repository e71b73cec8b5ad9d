"""The promotion history: every label move, who made it, when, and the metrics at the time.

Kept in one storage checkpoint (:data:`CHECKPOINT`), a JSON list oldest first, so it works on
every backend through the generic checkpoint API. An append is a read-modify-write of the
whole list, serialized within the process by an :class:`asyncio.Lock`: the daemon's admin API
and its promotion stage share one :class:`PromotionLog`. A ``scorebeater promote`` run in
another process while the daemon records one at the same instant could drop one of the two
records (the label moves are unaffected); promotions are rare operator actions. The list keeps
the latest :data:`MAX_RECORDS` records; older ones are dropped on the next append.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

from scorebeater.errors import StorageError

if TYPE_CHECKING:
    from scorebeater.stages.handoff import ShadowComparison
    from scorebeater.storage.base import Storage

CHECKPOINT = "promotions"
"""The storage checkpoint holding the history."""
MAX_RECORDS = 1000
MAX_TEXT_CHARS = 500
"""Longest ``reason`` (and ``by``) a record keeps: the history is read whole by ``GET /v1/models``."""
"""Records kept: the latest ones (one promotion a season would take a millennium to fill it)."""

Trigger = Literal["operator", "auto"]
TRIGGERS: tuple[Trigger, ...] = ("operator", "auto")
AUTO_POLICY = "auto-policy"
"""``by`` of a promotion the automatic policy made."""
ADMIN_API = "admin-api"
"""``by`` of a promotion made through ``POST /v1/models/promote`` (the token's identity)."""


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def comparison_json(comparison: ShadowComparison | None) -> dict[str, Any] | None:
    """A comparison as JSON-able data (non-finite metrics as ``None``), ``None`` for none."""
    return None if comparison is None else _finite(dataclasses.asdict(comparison))


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    """One label move.

    ``from_version`` is ``None`` when the label did not exist before; ``at`` is UTC;
    ``metrics`` is the latest champion-versus-challenger comparison when the move was made
    (:func:`comparison_json`), ``None`` when there was none.
    """

    label: str
    from_version: int | None
    to_version: int
    by: str
    trigger: Trigger
    at: datetime
    reason: str = ""
    metrics: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able data (``at`` in ISO 8601 with its UTC offset)."""
        return {
            "label": self.label,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "by": self.by,
            "trigger": self.trigger,
            "at": self.at.astimezone(UTC).isoformat(),
            "reason": self.reason,
            "metrics": _finite(self.metrics),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PromotionRecord:
        """The record :meth:`to_json` wrote.

        Raises:
            KeyError, TypeError, ValueError: ``doc`` is not such a record.
        """
        trigger = doc["trigger"]
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}")
        from_version = doc.get("from_version")
        return cls(
            label=str(doc["label"]),
            from_version=None if from_version is None else int(from_version),
            to_version=int(doc["to_version"]),
            by=str(doc["by"]),
            trigger=trigger,
            at=datetime.fromisoformat(doc["at"]).astimezone(UTC),
            reason=str(doc.get("reason", "")),
            metrics=doc.get("metrics"),
        )


class PromotionLog:
    """The promotion history in ``storage`` (see the module docstring)."""

    def __init__(self, storage: Storage, *, max_records: int = MAX_RECORDS) -> None:
        self._storage = storage
        self._max = max_records
        self._lock = asyncio.Lock()

    async def _load(self) -> list[dict[str, Any]]:
        raw = await self._storage.get_checkpoint(CHECKPOINT)
        if raw is None:
            return []
        try:
            docs = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StorageError(f"checkpoint {CHECKPOINT!r} is not JSON: {exc}") from exc
        if not isinstance(docs, list):
            raise StorageError(f"checkpoint {CHECKPOINT!r} is not a JSON list")
        return docs

    async def append(self, record: PromotionRecord) -> None:
        """Add ``record`` as the newest, keeping the latest ``max_records``.

        Raises:
            StorageError: the history cannot be read or written (nothing is written then).
        """
        async with self._lock:
            docs = await self._load()
            docs.append(record.to_json())
            docs = docs[-self._max :]
            await self._storage.put_checkpoint(CHECKPOINT, orjson.dumps(docs))

    async def check_writable(self) -> None:
        """Write the history back unchanged: a fenced write, so a replica that no longer leads
        learns it (``Fenced``) before it touches anything outside the store (the label).

        Raises:
            Fenced: another replica leads now. StorageError: the history cannot be read or
                written.
        """
        async with self._lock:
            raw = await self._storage.get_checkpoint(CHECKPOINT)
            await self._storage.put_checkpoint(CHECKPOINT, raw if raw is not None else b"[]")

    async def records(self, *, limit: int | None = None) -> list[PromotionRecord]:
        """The history, newest first (at most ``limit`` records).

        Raises:
            StorageError: the history cannot be read or holds something that is not a record.
        """
        docs = await self._load()
        newest = docs[::-1] if limit is None else docs[::-1][:limit]
        try:
            return [PromotionRecord.from_json(d) for d in newest]
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"checkpoint {CHECKPOINT!r} holds a bad record: {exc!r}") from exc
