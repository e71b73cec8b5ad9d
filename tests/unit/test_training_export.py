"""Atomic publishing: next integer version, never overwritten, card and blessing inside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scorebeater.training.export import (
    PublishError,
    discard,
    latest_version,
    publish,
    read_extra,
    record_decision,
    versions,
)


def _staged(base: Path, name: str) -> Path:
    path = base / f".tmp-{name}"
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"pb")
    return path


def test_publish_allocates_next_version_and_writes_card(tmp_path: Path) -> None:
    base = tmp_path / "score_beater"
    base.mkdir()
    (base / "7").mkdir()
    (base / "notes").mkdir()  # not a version
    assert versions(base) == [7]
    v = publish(_staged(base, "a"), {"name": "score_beater", "seed": 7}, {"verdict": "BLESSED"})
    assert v == 8
    assert latest_version(base) == 8
    card = read_extra(base / "8", "model_card.json")
    assert card == {"name": "score_beater", "seed": 7, "version": 8}
    assert json.loads((base / "8" / "assets.extra" / "blessing.json").read_text())["version"] == 8
    assert not list(base.glob(".tmp-*"))
    assert publish(_staged(base, "b"), {}, {}) == 9


def test_no_versions_and_bad_staging(tmp_path: Path) -> None:
    assert versions(tmp_path / "missing") == []
    assert latest_version(tmp_path) is None
    empty = tmp_path / ".tmp-empty"
    empty.mkdir()
    with pytest.raises(PublishError, match=r"saved_model\.pb"):
        publish(empty, {}, {})
    discard(empty)
    assert not empty.exists()
    assert read_extra(tmp_path, "model_card.json") is None


def test_rejected_decision_is_recorded(tmp_path: Path) -> None:
    path = record_decision(tmp_path, {"verdict": "NOT_BLESSED", "decided_at": "2026-01-02T03:04:05+00:00"})
    assert path.parent == tmp_path / "gate"
    assert json.loads(path.read_text())["verdict"] == "NOT_BLESSED"
