"""The manifest: the object store's committed state, one JSON object per generation.

``_manifest/<generation:020d>.json`` lists every live segment of every table partition, in
commit order (each with the schema version it was written at), and the checkpoints. The
newest generation is the store's state; a commit creates the next one exclusively (see
:mod:`scorebeater.storage.objects`). Parsing checks every key and checkpoint name, so a
tampered manifest cannot point outside the store.
"""

from __future__ import annotations

import base64
import dataclasses
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from scorebeater.errors import StorageError
from scorebeater.storage.base import check_checkpoint_name
from scorebeater.storage.objects.store import check_key

MANIFEST_DIR = "_manifest"
MANIFEST_FORMAT = 1
KEEP_MANIFESTS = 4
"""Older generations kept so a reader in another process can finish loading the one it listed."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One committed Parquet object, unique by its table's key."""

    key: str
    rows: int
    size: int
    commit: str
    """Id of the commit that wrote it: segments of one commit never overlap by key."""
    bounds: Mapping[str, tuple[Any, Any]] = dataclasses.field(default_factory=dict)
    """Smallest and largest value of each in-partition key column: two segments that are
    disjoint on any key column cannot share a key, so reading them needs no deduplication."""
    schema_version: int = 1
    """The version of its table's schema it was written at (``TableSpec.schema_version``);
    absent in manifests written before versions existed, which is version 1. Readers bring
    older segments' rows up to the current schema (``TableSpec.upgrade``)."""

    def disjoint(self, other: Segment) -> bool:
        """True when no key can be in both (same commit, or separate bounds on a key column)."""
        return self.commit == other.commit or any(
            name in other.bounds and (hi < other.bounds[name][0] or other.bounds[name][1] < lo)
            for name, (lo, hi) in self.bounds.items()
        )


Partitions = Mapping[str, tuple[Segment, ...]]


@dataclass(frozen=True, slots=True)
class Manifest:
    """The store's committed state: live segments per table and partition, and checkpoints."""

    generation: int = 0
    commit: str = ""
    tables: Mapping[str, Partitions] = dataclasses.field(default_factory=dict)
    checkpoints: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    fencing_token: int = 0
    """The highest leadership term that has committed (0: none); a writer with an older
    token is fenced off (:meth:`Committer.commit`). Absent in older manifests: 0."""
    parent: str = ""
    """The ``commit`` of the generation this one was built on: tells a successor that built
    on a commit from a writer that recreated a pruned generation's name
    (:meth:`Committer.commit`). Absent in older manifests: ``""``."""

    def partitions(self, table: str) -> Partitions:
        """The live segments of ``table`` by partition name (empty if it has none)."""
        return self.tables.get(table, {})

    def segment_keys(self) -> set[str]:
        """Every object key this manifest references (what garbage collection keeps)."""
        return {s.key for parts in self.tables.values() for segs in parts.values() for s in segs}

    def with_partition(self, table: str, partition: str, segments: tuple[Segment, ...]) -> Manifest:
        """A copy with ``partition``'s segments replaced (an empty tuple drops the partition)."""
        parts = dict(self.partitions(table))
        if segments:
            parts[partition] = segments
        else:
            parts.pop(partition, None)
        tables = dict(self.tables)
        tables[table] = parts
        return dataclasses.replace(self, tables=tables)

    def to_json(self) -> bytes:
        """The manifest as stored (checkpoint values in base64)."""
        return orjson.dumps(
            {
                "format": MANIFEST_FORMAT,
                "generation": self.generation,
                "commit": self.commit,
                "tables": {
                    t: {p: [_segment_doc(s) for s in segs] for p, segs in parts.items()}
                    for t, parts in self.tables.items()
                },
                "checkpoints": {n: base64.b64encode(v).decode() for n, v in self.checkpoints.items()},
                "fencing_token": self.fencing_token,
                "parent": self.parent,
            }
        )

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse and check a manifest; ``StorageError`` naming ``where`` if it is corrupt."""
        try:
            doc = orjson.loads(data)
            if doc["format"] != MANIFEST_FORMAT:
                raise StorageError(f"{where}: unsupported manifest format {doc['format']!r}")
            tables = {
                t: {p: tuple(Segment(**check_segment(s)) for s in segs) for p, segs in parts.items()}
                for t, parts in doc["tables"].items()
            }
            checkpoints = {
                check_checkpoint_name(n): base64.b64decode(v, validate=True)
                for n, v in doc["checkpoints"].items()
            }
            token = operator.index(doc.get("fencing_token", 0))
            parent = str(doc.get("parent", ""))
            return cls(int(doc["generation"]), str(doc["commit"]), tables, checkpoints, token, parent)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageError(f"{where}: corrupt manifest: {exc!r}") from exc


def _segment_doc(segment: Segment) -> dict[str, Any]:
    doc = dataclasses.asdict(segment)
    doc["bounds"] = {name: list(bound) for name, bound in segment.bounds.items()}
    return doc


def check_segment(doc: dict[str, Any]) -> dict[str, Any]:
    """A manifest's segment entry as :class:`Segment` arguments; ``ValueError`` if malformed."""
    bounds = {}
    for name, (lo, hi) in doc.get("bounds", {}).items():
        if type(lo) is not type(hi) or not isinstance(lo, int | str):
            raise ValueError(f"bad bounds for {name!r}")
        bounds[str(name)] = (lo, hi)
    return {
        "key": check_key(doc["key"]),
        "rows": int(doc["rows"]),
        "size": int(doc["size"]),
        "commit": str(doc["commit"]),
        "bounds": bounds,
        "schema_version": operator.index(doc.get("schema_version", 1)),
    }


def manifest_key(generation: int) -> str:
    """The object key of manifest ``generation``."""
    return f"{MANIFEST_DIR}/{generation:020d}.json"


def generation_of(key: str) -> int | None:
    """The generation a manifest key names, or ``None`` for any other name."""
    name = key.rsplit("/", 1)[-1]
    stem, _, ext = name.partition(".")
    return int(stem) if ext == "json" and stem.isdigit() else None
