"""Parquet tables over an object store: the engine behind the local and S3 backends.

Both backends keep the same layout under their root (a directory, or an S3 prefix)::

    _manifest/<generation:020d>.json            one per commit; the newest is the store's state
    features/season=<S>/part-<commit>-<n>.parquet
    features_latest/season=<S>/...              each player-season's latest feature row
    predictions/season=<S>/...   outcomes/season=<S>/...   cache/model_version=<V>/...
    quarantine/season=<S>/...                   the dead-letter table (records set aside)

**Commits.** A write first uploads its Parquet segments, then commits by creating the next
manifest generation with one exclusive create (S3 ``If-None-Match: *``; locally a hard link
of a fsynced temporary file, which fails if the name exists). The manifest lists every live
segment of every partition, in commit order, and the checkpoints, so rows and a checkpoint
passed with them become visible together. Readers read only segments listed in the newest
manifest: an interrupted write leaves at most unreferenced segments, which a later garbage
collection removes once they are older than ``gc_grace_s``.

**Writers.** The design assumes one writer process (the daemon). A second writer is detected,
not corrupted: its exclusive create of an existing generation fails, and the commit is redone
on top of the newer manifest (appends commute; a compaction whose inputs changed is dropped).
A cancellation that lands during the commit request itself may still commit (as a database
``COMMIT`` whose reply is lost): the write is then wholly visible, never partially.

**Upserts.** Each segment is unique by key. Across segments of a partition the row from the
later commit wins, after an optional rank (an outcome's ``final`` beats ``early``; the latest
feature row has the highest ``as_of_seq``). Partitions whose segments come from one commit are
read without deduplication; otherwise a key-columns-only pass picks the winning rows first.
A partition with more than ``max_segments`` segments is compacted: its newest small segments
are merged into one (size-tiered, so a large base segment is not rewritten on every merge).
An outcome row that replaces a stored one keeps the stored early time where its own is null:
the write reads those stored rows first and fills them in (under a lock: one writer process).

**Schema versions.** The manifest records the schema version each segment was written at
(features, predictions and outcomes have one: :mod:`scorebeater.storage.base`); reads bring
an older segment's rows up to the current schema (``TableSpec.upgrade``; in a key-only pass,
``TableSpec.added``), and compaction rewrites them at the current version.

Modules, in import order: ``tables`` (table specs, winners, segment cutting, Parquet
options), ``store`` (the ``ObjectStore`` protocol and keys), ``manifest`` (the committed
state), ``scan`` (reads), ``commit`` (writes, commits, compaction, garbage collection),
``cache`` (the prediction cache), ``quarantine`` (the dead-letter table) and ``engine``
(``ObjectTableStorage``, the ``Storage`` protocol on top).
"""

from scorebeater.storage.objects.cache import ObjectPredictionCache
from scorebeater.storage.objects.commit import DEFAULT_GC_GRACE_S, Committer, compaction_run
from scorebeater.storage.objects.engine import PING_KEY, ObjectTableStorage
from scorebeater.storage.objects.manifest import (
    KEEP_MANIFESTS,
    MANIFEST_DIR,
    Manifest,
    Segment,
    check_segment,
    manifest_key,
)
from scorebeater.storage.objects.quarantine import ObjectQuarantine
from scorebeater.storage.objects.scan import rebatch
from scorebeater.storage.objects.store import (
    ObjectExists,
    ObjectInfo,
    ObjectSource,
    ObjectStore,
    ParquetSource,
    check_key,
    render,
)
from scorebeater.storage.objects.tables import (
    CACHE,
    FEATURES,
    FEATURES_LATEST,
    OUTCOMES,
    PREDICTIONS,
    QUARANTINE,
    ROW_GROUP_ROWS,
    SEGMENT_MAX_ROWS,
    TABLES,
    TableSpec,
    ordered_winners,
    parquet_options,
    split_segments,
    winner_indices,
)

__all__ = [
    "CACHE",
    "DEFAULT_GC_GRACE_S",
    "FEATURES",
    "FEATURES_LATEST",
    "KEEP_MANIFESTS",
    "MANIFEST_DIR",
    "OUTCOMES",
    "PING_KEY",
    "PREDICTIONS",
    "QUARANTINE",
    "ROW_GROUP_ROWS",
    "SEGMENT_MAX_ROWS",
    "TABLES",
    "Committer",
    "Manifest",
    "ObjectExists",
    "ObjectInfo",
    "ObjectPredictionCache",
    "ObjectQuarantine",
    "ObjectSource",
    "ObjectStore",
    "ObjectTableStorage",
    "ParquetSource",
    "Segment",
    "TableSpec",
    "check_key",
    "check_segment",
    "compaction_run",
    "manifest_key",
    "ordered_winners",
    "parquet_options",
    "rebatch",
    "render",
    "split_segments",
    "winner_indices",
]
