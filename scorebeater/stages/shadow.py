"""The shadow stage: the challenger scores every row the champion scores, out of its way.

With ``[tfserving] challenger_label`` set, each run pins the challenger's version from that
label (the same pinning rules, batching and cache as the champion: a
:class:`~scorebeater.stages.scoring.Scorer` of role ``challenger``) and scores the feature rows
whose champion predictions were stored since the last run (the hand-off's shadow queue, rule
8), storing them with role ``challenger``. When a shadow reconcile is due (at start, after the
queue overflowed, after the challenger was skipped or changed version, after a failed
reconcile) the run first scores every stored feature row that has a champion prediction and
no prediction of the challenger's version.

A challenger outage never delays or fails the champion: this stage has its own runner and
lock, its requests go through its own TF Serving client (its own connections and concurrency
limit), and the champion's stages only queue rows for it. A failed run is retried by the
runner's backoff, counted in ``shadow_failures_total{reason}``, and what it did not store is
put back. The run is skipped (logged once per cause, ``model_role_version{role="challenger"}``
0) while the label is empty, unassigned on the server, or names the champion's version: one
version scores a row in one role.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.errors import (
    BadModelRequest,
    ModelNotFound,
    ModelUnavailable,
    StorageError,
    TFServingError,
)
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import Handoff
from scorebeater.stages.scoring import Scorer, Skipped
from scorebeater.storage.base import FEATURE_KEY, FEATURES_SCHEMA

log = structlog.get_logger(__name__)

KEY = list(FEATURE_KEY)
_KEY_TYPES = {name: FEATURES_SCHEMA.field(name).type for name in KEY}

SKIP_OFF = "off"
SKIP_UNASSIGNED = "label_unassigned"
SKIP_SAME_VERSION = "same_as_champion"


def failure_reason(exc: BaseException) -> str:
    """``shadow_failures_total``'s ``reason`` of a failed run (one of ``SHADOW_FAILURE_REASONS``)."""
    if isinstance(exc, ModelUnavailable):
        return "unavailable"
    if isinstance(exc, ModelNotFound):
        return "not_found"
    if isinstance(exc, BadModelRequest):
        return "bad_request"
    if isinstance(exc, TFServingError):
        return "model_error"
    if isinstance(exc, StorageError):
        return "storage"
    return "other"


def _keys(parts: list[pa.Table]) -> pa.Table:
    """The distinct feature keys of ``parts`` (an empty key table when there are none)."""
    if not parts:
        return pa.table({k: pa.array([], _KEY_TYPES[k]) for k in KEY})
    return pa.concat_tables(parts).group_by(KEY).aggregate([])


class ShadowStage:
    """Scores the rows the champion scored with the challenger's version; never serves them."""

    name = "shadow"

    def __init__(self, ctx: StageContext, handoff: Handoff, scorer: Scorer) -> None:
        """``ctx.model`` is the challenger's own client; ``scorer`` has role ``challenger``."""
        if scorer.role != "challenger":
            raise ValueError("the shadow stage scores with a challenger scorer")
        self._ctx = ctx
        self._handoff = handoff
        self._scorer = scorer
        self._version: int | None = None
        """The challenger version of the latest run that scored (``None``: none or skipped)."""
        self._skipped: str | None = None

    @property
    def challenger_version(self) -> int | None:
        """The version the shadow scores with now (``None`` while off or skipped)."""
        return self._version

    def status(self) -> dict[str, object]:
        """The label, the pinned challenger, why it is skipped, and its queue."""
        return {
            "label": self._scorer.label,
            "pinned_model_version": self._version,
            "champion_model_version": self._handoff.champion_version,
            "skipped": self._skipped,
            **self._handoff.shadow_status(),
        }

    async def run(self, run_id: str) -> dict[str, object]:
        """One run: pin the challenger, reconcile if due, then every queued batch."""
        del run_id  # bound into the log context by the runner
        try:
            return await self._run()
        except Exception as exc:
            self._ctx.metrics.shadow_failures.labels(failure_reason(exc)).inc()
            raise

    async def _run(self) -> dict[str, object]:
        label = self._scorer.label
        if label is None:
            return self._skip(SKIP_OFF)
        try:
            version = await self._scorer.pin(self.name)
        except ModelUnavailable as exc:
            if isinstance(exc.__cause__, BadModelRequest):
                # TF Serving answers 400 for a label it does not know: nothing to shadow now.
                return self._skip(SKIP_UNASSIGNED, label=label, error=str(exc))
            raise
        champion = self._handoff.champion_version
        if champion is None:
            # No champion batch stored yet in this process: resolve the champion's label the
            # same way (through this stage's client, which reports no availability).
            champion = await self._ctx.model.pin_version(self._ctx.cfg.tfserving.version_label or None)
        if version == champion:
            return self._skip(SKIP_SAME_VERSION, label=label, model_version=version)
        if version != self._version:
            # A new challenger has scored nothing: score every row the champion has.
            self._handoff.drop_shadow()
            log.info("shadow.challenger_pinned", label=label, model_version=version, previous=self._version)
            self._version = version
        if self._skipped is not None:
            log.info("shadow.resumed", label=label, model_version=version, was=self._skipped)
            self._skipped = None
        self._ctx.metrics.model_role_version.labels("challenger").set(version)
        summary: dict[str, object] = {"model_version": version, "champion_model_version": champion}
        skipped = Skipped()
        try:
            if self._handoff.take_shadow_reconcile():
                # Everything queued so far was stored before the reconcile reads: it covers it.
                self._handoff.take_shadow()
                try:
                    summary["recovered_rows"] = await self._reconcile(version, skipped)
                except BaseException:
                    self._handoff.shadow_reconcile_failed()
                    raise
            summary["rows"] = await self._queued(version, skipped)
        finally:
            self._scorer.report_skipped(skipped, version, stage=self.name)
        summary["skipped_rows"] = skipped.total
        return summary

    def _skip(self, reason: str, **context: object) -> dict[str, object]:
        """Skip this run: forget the queue (a reconcile catches up when the shadow resumes)."""
        self._handoff.drop_shadow()
        self._version = None
        self._ctx.metrics.model_role_version.labels("challenger").set(0)
        if reason != self._skipped:
            (log.debug if reason == SKIP_OFF else log.warning)("shadow.skipped", reason=reason, **context)
            self._skipped = reason
        return {"skipped": reason}

    def _champion_took(self, version: int) -> bool:
        """Whether the champion now scores with ``version`` (a promotion mid-run): stop, so
        the shadow never re-labels the champion's rows as the challenger's."""
        return self._handoff.champion_version == version

    async def _queued(self, version: int, skipped: Skipped) -> int:
        """Score and store every queued batch; put back what was not stored if one fails."""
        batches = self._handoff.take_shadow()
        done = 0
        for i, batch in enumerate(batches):
            try:
                scored = await self._scorer.score(batch, version, use_cache=True, stage=self.name)
                if self._champion_took(version):
                    self._handoff.drop_shadow()
                    break
                await self._scorer.store(scored, version, mode="diff")
            except BaseException:
                self._handoff.put_back_shadow(batches[i:])
                raise
            done += scored.rows
            skipped.add(scored.skipped)
        return done

    async def _reconcile(self, version: int, skipped: Skipped) -> int:
        """Score every stored feature row with a champion prediction and no prediction of
        ``version`` (in any role: a row the champion scored with ``version`` keeps its role);
        returns the rows stored.

        Anti-joins in Arrow over the keys (16 bytes a row), then the rows stream by batch.
        """
        storage = self._ctx.storage
        champion: list[pa.Table] = []
        scored: list[pa.Table] = []
        async for table in storage.read_predictions(role=None):
            mine = pc.equal(table.column("model_version"), version)
            scored.append(table.filter(mine).select(KEY))
            champion.append(table.filter(pc.equal(table.column("role"), "champion")).select(KEY))
        todo = _keys(champion)
        done_keys = _keys(scored)
        if done_keys.num_rows:
            todo = todo.join(done_keys, keys=KEY, join_type="left anti")
        if not todo.num_rows:
            return 0
        stored = 0
        async for table in storage.read_feature_history():
            rows = table.join(todo, keys=KEY, join_type="left semi")
            if not rows.num_rows:
                continue
            # The join may reorder columns; keep the schema's order.
            result = await self._scorer.score(
                rows.select(table.column_names), version, use_cache=True, stage=self.name
            )
            if self._champion_took(version):
                break
            await self._scorer.store(result, version, mode="diff")
            stored += result.rows
            skipped.add(result.skipped)
        if stored:
            log.info("shadow.reconciled", rows=stored, model_version=version)
        return stored
