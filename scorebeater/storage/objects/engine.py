"""The ``Storage`` protocol over any ``ObjectStore``: what the local and S3 backends share.

Writes go through the :class:`~scorebeater.storage.objects.commit.Committer` (segments, one
manifest commit, compaction); reads take a snapshot of the newest manifest and stream its
segments (:mod:`~scorebeater.storage.objects.scan`). See :mod:`scorebeater.storage.objects`
for the layout and the commit protocol.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from scorebeater.storage.base import (
    EARLY_COLUMNS,
    OUTCOME_KEY,
    PAGE_PLAYER_COLUMNS,
    PAGE_SCHEMA,
    TRAINING_SCHEMA,
    CheckpointWrite,
    check_checkpoint_name,
    check_page,
    check_role,
    conform_features,
    conform_outcomes,
    conform_predictions,
)
from scorebeater.storage.inflight import DRAIN_TIMEOUT_S
from scorebeater.storage.objects.cache import ObjectPredictionCache
from scorebeater.storage.objects.commit import Committer
from scorebeater.storage.objects.manifest import Manifest, Segment
from scorebeater.storage.objects.quarantine import ObjectQuarantine
from scorebeater.storage.objects.scan import (
    Latest,
    RowFilter,
    Select,
    player_filter,
    read_first_players,
    read_range,
    scan,
)
from scorebeater.storage.objects.store import ObjectStore
from scorebeater.storage.objects.tables import (
    FEATURES,
    FEATURES_LATEST,
    OUTCOMES,
    PREDICTIONS,
    TABLES,
    TableSpec,
    winner_indices,
)

log = structlog.get_logger(__name__)

PING_KEY = "_ping"
_LATEST_PREDICTION: Latest = (("player_id",), ("as_of_seq", "model_version"))
"""``latest_only`` predictions: per player (in a season partition), highest seq, then version."""


class ObjectTableStorage:
    """The ``Storage`` protocol over any ``ObjectStore`` (see :mod:`scorebeater.storage.objects`).

    Build it with :meth:`open`, which loads the newest manifest and collects garbage. Safe for
    concurrent use by the tasks of one event loop: commits are serialised, reads take a
    snapshot of the newest manifest and never block writers.
    """

    def __init__(self, objects: ObjectStore, *, batch_rows: int, gc_grace_s: float) -> None:
        self._batch_rows = batch_rows
        self._committer = Committer(objects, batch_rows=batch_rows, gc_grace_s=gc_grace_s)
        self._cache = ObjectPredictionCache(self._committer, batch_rows=batch_rows)
        self._quarantine = ObjectQuarantine(self._committer, batch_rows=batch_rows)
        # Outcome writes read the stored early times they keep (write_outcomes): one at a time.
        self._outcomes_lock = asyncio.Lock()

    @property
    def objects(self) -> ObjectStore:
        """The store under the tables (replaceable between calls: the tests inject faults)."""
        return self._committer.objects

    @objects.setter
    def objects(self, objects: ObjectStore) -> None:
        self._committer.objects = objects

    @property
    def cache(self) -> ObjectPredictionCache:
        """The prediction cache, in the ``cache`` table of the same store."""
        return self._cache

    @property
    def quarantine(self) -> ObjectQuarantine:
        """The dead-letter table, in the ``quarantine`` table of the same store."""
        return self._quarantine

    async def open(self) -> None:
        """Load the newest manifest and remove garbage older than the grace period."""
        await self._committer.snapshot()
        await self._committer.collect_garbage()
        log.info("storage.opened", where=self.objects.where, generation=self._committer.manifest.generation)

    async def drain_commits(self, *, timeout_s: float | None = DRAIN_TIMEOUT_S) -> None:
        """Wait for commits still running after their callers were cancelled (see the
        protocol and :mod:`scorebeater.storage.inflight`); called on close."""
        await self._committer.commits.drain(timeout_s)

    async def set_fencing_token(self, token: int | None, *, nonce: str = "") -> None:  # noqa: ARG002
        """Commit under leadership term ``token`` from now on; see the Storage protocol
        (``nonce`` is not needed: the manifest chain orders the terms)."""
        await self._committer.claim(token)

    async def snapshot(self) -> Manifest:
        """The newest committed manifest (``StorageError`` if it is corrupt)."""
        return await self._committer.snapshot()

    async def collect_garbage(self, prefix: str | None = None, *, grace_s: float | None = None) -> int:
        """Delete unreferenced objects older than the grace period (``grace_s`` overrides it);
        return how many. See :meth:`Committer.collect_garbage`."""
        return await self._committer.collect_garbage(prefix, grace_s=grace_s)

    async def compact(self, spec: TableSpec, partition: str, *, everything: bool = False) -> bool:
        """Merge the partition's newest small segments (or all) into one; True if it did."""
        return await self._committer.compact(spec, partition, everything=everything)

    async def _scan(
        self,
        spec: TableSpec,
        values: Collection[int] | None,
        row_filter: RowFilter | None = None,
        latest: Latest | None = None,
        select: Select | None = None,
    ) -> AsyncIterator[pa.Table]:
        """The table's live rows in batches of at most ``batch_rows``, partition by partition."""
        partitions = (await self._committer.snapshot()).partitions(spec.name)
        async for table in scan(
            self.objects,
            spec,
            partitions,
            values,
            batch_rows=self._batch_rows,
            row_filter=row_filter,
            latest=latest,
            select=select,
        ):
            yield table

    # --- the Storage protocol ---------------------------------------------------------------

    async def ping(self) -> None:
        """Write a tiny probe object; ``StorageUnavailable`` if the store is unreachable."""
        await self.objects.put(PING_KEY, b"ok")

    async def write_features(
        self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None, allow_missing_inputs: bool = False
    ) -> None:
        """Upsert feature rows, and each player-season's latest row, in one commit."""
        rows = conform_features(rows, allow_missing_inputs=allow_missing_inputs)
        await self._committer.write([(FEATURES, rows), (FEATURES_LATEST, rows)], checkpoint)

    async def read_latest_features(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's highest-``as_of_seq`` feature row per season (from ``features_latest``)."""
        row_filter = None
        if player_ids is not None:
            row_filter = player_filter(pa.array([operator.index(p) for p in player_ids], pa.int64()))
        seasons = None if season is None else [season]
        async for table in self._scan(FEATURES_LATEST, seasons, row_filter):
            yield table

    async def read_feature_history(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Every live feature row, season by season."""
        async for table in self._scan(FEATURES, seasons):
            yield table

    async def read_features_at(
        self, *, season: int, points: Mapping[int, int]
    ) -> AsyncGenerator[pa.Table, None]:
        """Each player's feature row at his point, else his latest before it (see the protocol):
        one pass over the season's feature history keeping only those players' rows up to
        their points (bounded: at most their rows), then each one's highest."""
        if not points:
            return
        ids = pa.array([operator.index(p) for p in points], pa.int64())
        seqs = pa.array([operator.index(points[p]) for p in points], pa.int32())

        def up_to_point(table: pa.Table) -> pa.Table:
            mine = table.filter(pc.is_in(table.column("player_id"), value_set=ids))
            point = pc.take(seqs, pc.index_in(mine.column("player_id"), value_set=ids))
            return mine.filter(pc.less_equal(mine.column("as_of_seq"), point))

        kept = [t async for t in self._scan(FEATURES, [season], up_to_point) if t.num_rows]
        if kept:
            rows = pa.concat_tables(kept)
            rank = [rows.column("as_of_seq")]
            yield rows.take(pa.array(winner_indices(rows, ("player_id",), rank)))

    async def write_predictions(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert predictions by ``(player_id, season, as_of_seq, model_version)``."""
        await self._committer.write([(PREDICTIONS, conform_predictions(rows))], checkpoint)

    async def read_predictions(
        self,
        *,
        season: int | None = None,
        player_id: int | None = None,
        latest_only: bool = False,
        role: str | None = "champion",
    ) -> AsyncGenerator[pa.Table, None]:
        """Live predictions of ``role`` (``None``: all), filtered; ``latest_only``: one per
        player-season among them."""
        select = None if check_role(role) is None else ("role", role)
        row_filter = None
        if player_id is not None:
            row_filter = player_filter(pa.array([operator.index(player_id)], pa.int64()))
        seasons = None if season is None else [season]
        latest = _LATEST_PREDICTION if latest_only else None
        async for table in self._scan(PREDICTIONS, seasons, row_filter, latest, select):
            yield table

    async def write_outcomes(self, rows: pa.Table, *, checkpoint: CheckpointWrite | None = None) -> None:
        """Upsert outcomes; a ``final`` row beats an ``early`` one whatever the order, and
        keeps the stored row's early time where its own is null.

        The stored early times are read before the commit, under a lock: with the one writer
        process the design assumes, nothing can change them in between.
        """
        rows = conform_outcomes(rows)
        async with self._outcomes_lock:
            rows = await self._keep_early_time(rows)
            await self._committer.write([(OUTCOMES, rows)], checkpoint)

    async def _keep_early_time(self, rows: pa.Table) -> pa.Table:
        """``rows`` with null ``resolved_early_*`` taken from the stored rows of their keys."""
        lacking = rows.filter(pc.is_null(rows.column("resolved_early_seq")))
        if not lacking.num_rows:
            return rows
        seasons = [int(s) for s in pc.unique(lacking.column("season")).to_pylist()]
        wanted = player_filter(pc.unique(lacking.column("player_id")))
        stored = [
            t.select([*OUTCOME_KEY, *EARLY_COLUMNS]).filter(pc.is_valid(t.column("resolved_early_seq")))
            async for t in self._scan(OUTCOMES, seasons, wanted)
        ]
        if not any(t.num_rows for t in stored):
            return rows

        def coalesce() -> pa.Table:
            known = pa.concat_tables(stored).rename_columns([*OUTCOME_KEY, "_seq", "_at"])
            order = rows.select(list(OUTCOME_KEY)).append_column(
                "_row", pa.array(np.arange(rows.num_rows, dtype=np.int64))
            )
            joined = order.join(known, keys=list(OUTCOME_KEY), join_type="left outer").sort_by("_row")
            out = rows
            for column, found in zip(EARLY_COLUMNS, ("_seq", "_at"), strict=True):
                merged = pc.coalesce(rows.column(column), joined.column(found))
                out = out.set_column(out.schema.get_field_index(column), out.schema.field(column), merged)
            return out

        return await asyncio.to_thread(coalesce)

    async def read_latest_predictions_page(
        self, *, season: int, after_player_id: int | None = None, limit: int, role: str = "champion"
    ) -> pa.Table:
        """The first ``limit`` players' latest predictions after ``after_player_id`` (see the
        protocol), from one manifest snapshot: the row groups of the season's prediction
        segments from ``after_player_id`` on until ``limit`` players of ``role`` are complete
        (:func:`read_first_players`; their history is in the same rows, for the previous
        points), then the page's id range of ``features_latest`` and ``outcomes``
        (:func:`read_range`). O(limit + row groups) whatever the season's size."""
        limit, role, after = check_page(limit=limit, role=role, after_player_id=after_player_id)
        manifest = await self._committer.snapshot()

        def segments(spec: TableSpec) -> tuple[Segment, ...]:
            return manifest.partitions(spec.name).get(spec.partition_name(season), ())

        def players(rows: pa.Table) -> int:
            mine = rows.column("player_id").filter(pc.equal(rows.column("role"), role))
            return len(pc.unique(mine))

        rows = await read_first_players(
            self.objects, PREDICTIONS, segments(PREDICTIONS), after=after, players=players, enough=limit
        )
        latest, previous = await asyncio.to_thread(_latest_of_role, rows, role, limit)
        if not latest.num_rows:
            return PAGE_SCHEMA.empty_table()
        ids = latest.column("player_id")
        bounds = {"lo": ids[0].as_py(), "hi": ids[-1].as_py()}
        columns = ["player_id", "as_of_seq", *PAGE_PLAYER_COLUMNS]
        features = await read_range(
            self.objects, FEATURES_LATEST, segments(FEATURES_LATEST), columns=columns, **bounds
        )
        behind = await asyncio.to_thread(_newer_features, latest, features)
        if len(behind):
            # A newer game's features wait for their prediction: those players' counts come
            # from the row their prediction was made from (in the history, same id range).
            span = {"lo": pc.min(behind).as_py(), "hi": pc.max(behind).as_py()}
            history = await read_range(self.objects, FEATURES, segments(FEATURES), columns=columns, **span)
            features = await asyncio.to_thread(_at_points, features, history, latest, behind)
        outcomes = await read_range(
            self.objects, OUTCOMES, segments(OUTCOMES), columns=["player_id", "beat", "resolution"], **bounds
        )

        def page() -> pa.Table:
            found = [
                *(_attach(ids, features, c) for c in PAGE_PLAYER_COLUMNS),
                *(_attach(ids, outcomes, c) for c in ("beat", "resolution")),
            ]
            return pa.Table.from_arrays([*latest.columns, previous, *found], schema=PAGE_SCHEMA)

        return await asyncio.to_thread(page)

    async def read_outcomes(
        self, *, season: int | None = None, player_ids: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Live outcomes, filtered by season and/or player ids when given."""
        row_filter = None
        if player_ids is not None:
            row_filter = player_filter(pa.array([operator.index(p) for p in player_ids], pa.int64()))
        async for table in self._scan(OUTCOMES, None if season is None else [season], row_filter):
            yield table

    async def export_training_set(
        self, *, seasons: Collection[int] | None = None
    ) -> AsyncGenerator[pa.Table, None]:
        """Feature history inner-joined with outcomes on ``(player_id, season)``."""
        labels = [
            t.select(["player_id", "season", "beat", "resolution", *EARLY_COLUMNS])
            async for t in self._scan(OUTCOMES, seasons)
        ]
        if not labels:
            return
        outcomes = pa.concat_tables(labels)
        labelled = {int(s) for s in pc.unique(outcomes.column("season")).to_pylist()}

        def join(batch: pa.Table) -> pa.Table:
            joined = batch.join(outcomes, keys=["player_id", "season"], join_type="inner")
            return pa.Table.from_arrays(
                [joined.column(n) for n in TRAINING_SCHEMA.names], schema=TRAINING_SCHEMA
            )

        async for batch in self._scan(FEATURES, labelled):
            yield await asyncio.to_thread(join, batch)

    async def get_checkpoint(self, name: str) -> bytes | None:
        """The last committed value of checkpoint ``name``, or ``None``."""
        check_checkpoint_name(name)
        return (await self._committer.snapshot()).checkpoints.get(name)

    async def put_checkpoint(self, name: str, value: bytes) -> None:
        """Atomically replace checkpoint ``name`` (one commit)."""
        await self._committer.write([], (name, value))

    async def checkpoint_names(self) -> list[str]:
        """Every committed checkpoint's name, sorted (from the newest manifest)."""
        return sorted((await self._committer.snapshot()).checkpoints)

    async def stored_rows(self) -> dict[str, dict[int, int]]:
        """Rows per table and partition from the newest manifest's segment row counts (no
        segment is opened): an upper bound until compaction merges replaced rows."""
        manifest = await self._committer.snapshot()
        counts: dict[str, dict[int, int]] = {}
        for spec in TABLES:
            partitions = {
                spec.partition_value(name): sum(s.rows for s in segments)
                for name, segments in manifest.partitions(spec.name).items()
            }
            if partitions:
                counts[spec.name] = partitions
        return counts


def _latest_of_role(rows: pa.Table, role: str, limit: int) -> tuple[pa.Table, pa.Array]:
    """The latest row of ``role`` per player (highest ``as_of_seq``, then ``model_version``)
    of the ``limit`` lowest player ids of ``rows`` (ascending), and each one's previous
    probability among ``rows`` (:func:`previous_probabilities`). CPU: worker thread."""
    mine = rows.filter(pc.equal(rows.column("role"), role))
    rank = [mine.column("as_of_seq"), mine.column("model_version")]
    best = winner_indices(mine, ("player_id",), rank, key_order=True)[:limit]
    latest = mine.take(pa.array(best)).combine_chunks()
    return latest, previous_probabilities(latest, [mine])


def _newer_features(latest: pa.Table, features: pa.Table) -> pa.Array:
    """The ids of ``latest``'s players whose latest feature row (in ``features``) is of a later
    point than their latest prediction (``latest``). CPU: worker thread."""
    seq = _attach(latest.column("player_id"), features, "as_of_seq")
    newer = pc.fill_null(pc.greater(seq, latest.column("as_of_seq")), fill_value=False)
    return latest.column("player_id").filter(newer).combine_chunks()


def _at_points(features: pa.Table, history: pa.Table, latest: pa.Table, behind: pa.Array) -> pa.Table:
    """``features`` with the rows of the ``behind`` players replaced by their history row at
    their latest prediction's point (else the latest before it). CPU: worker thread."""
    point = _attach(behind, latest, "as_of_seq")
    mine = history.filter(pc.is_in(history.column("player_id"), value_set=behind))
    limit = pc.take(point, pc.index_in(mine.column("player_id"), value_set=behind))
    mine = mine.filter(pc.less_equal(mine.column("as_of_seq"), limit))
    best = mine.take(pa.array(winner_indices(mine, ("player_id",), [mine.column("as_of_seq")])))
    rest = features.filter(pc.invert(pc.is_in(features.column("player_id"), value_set=behind)))
    return pa.concat_tables([rest, best.cast(rest.schema)])


def _attach(ids: pa.ChunkedArray | pa.Array, other: pa.Table, column: str) -> pa.Array:
    """``other``'s ``column`` for each of ``ids`` (``other`` holds one row per player; null
    where it has none)."""
    kind = other.schema.field(column).type
    if not other.num_rows:
        return pa.nulls(len(ids), kind)
    known = other.column("player_id").to_numpy()
    order = np.argsort(known, kind="stable")
    wanted = ids.to_numpy()
    at = np.clip(np.searchsorted(known[order], wanted), 0, len(known) - 1)
    found = known[order][at] == wanted
    taken = other.column(column).take(pa.array(order[at]))
    return pc.if_else(pa.array(found), taken, pa.scalar(None, kind)).combine_chunks()


def previous_probabilities(page: pa.Table, history: list[pa.Table]) -> pa.Array:
    """For each row of ``page``, the probability of the same player's history row with the
    highest ``(as_of_seq, model_version)`` below the page row's ``as_of_seq`` (null if none).

    CPU: runs in a worker thread; ``history`` holds the page players' rows only.
    """
    ids = page.column("player_id").to_numpy()
    out = np.full(len(ids), np.nan)
    rows = pa.concat_tables(history) if history else None
    if rows is not None and rows.num_rows:
        pid = rows.column("player_id").to_numpy()
        seq = rows.column("as_of_seq").to_numpy().astype(np.int64)
        ver = rows.column("model_version").to_numpy()
        at = np.searchsorted(ids, pid)  # the page is in ascending player_id order
        at = np.clip(at, 0, len(ids) - 1)
        page_seq = page.column("as_of_seq").to_numpy().astype(np.int64)
        keep = (ids[at] == pid) & (seq < page_seq[at])
        order = np.lexsort((-ver[keep], -seq[keep], at[keep]))
        slots = at[keep][order]
        first = np.ones(len(slots), dtype=bool)
        first[1:] = slots[1:] != slots[:-1]
        out[slots[first]] = rows.column("probability").to_numpy()[keep][order][first]
    return pa.array(out, pa.float64(), from_pandas=True)
