"""The drift reference from export to the daemon's reader, and added to a published version.

1. ``reference_for`` scores a staged SavedModel on per-game rows (long-history rows are left
   out); ``publish`` writes it into the version's ``assets.extra/`` with the model card; the
   daemon's reader (``scorebeater.drift.read_reference``) reads back the same edges, shares,
   snapshots and row count, stamped with the version and ``added_after_export: false``.
2. ``add_reference`` (``python -m scorebeater.training.reference``) gives a version published
   without one the same reference, from the seasons its model card lists, marked
   ``added_after_export: true``; it refuses a version fitted on stored rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scorebeater import drift
from scorebeater.data import load_history
from scorebeater.errors import DataError
from scorebeater.inputs import INPUT_NAMES
from scorebeater.testing.savedmodel import cached_models
from scorebeater.training import dataset, export
from scorebeater.training.reference import add_reference, main, reference_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL_CACHE = Path("/tmp/scorebeater-test-models")  # noqa: S108 - a per-machine cache of exports
SEASON = 2014


def _staged(base: Path) -> Path:
    staged = base / ".tmp-test"
    shutil.copytree(cached_models(MODEL_CACHE).score(1), staged)
    return staged


def _same(a: drift.Reference, b: drift.Reference) -> None:
    assert a.rows == b.rows
    assert set(a.edges) == set(b.edges) == {*INPUT_NAMES, "probability"}
    for name in a.edges:
        np.testing.assert_allclose(a.edges[name], b.edges[name], rtol=1e-7)
        np.testing.assert_allclose(a.shares[name], b.shares[name], atol=1e-7)
    assert [(s.progress, s.rows) for s in a.snapshots] == [(s.progress, s.rows) for s in b.snapshots]
    for sa, sb in zip(a.snapshots, b.snapshots, strict=True):
        for name in sa.shares:
            np.testing.assert_allclose(sa.shares[name], sb.shares[name], atol=1e-7)


def test_export_writes_the_reference_and_the_daemon_reads_it(tmp_path: Path) -> None:
    history = load_history()
    per_game = dataset.build_training_set(history, [SEASON])
    long_rows = dataset.build_long_history(history, [SEASON])
    rows = dataset.concat([per_game, long_rows])
    base = tmp_path / "score_beater"
    staged = _staged(base)

    reference = reference_for(staged, rows)
    assert reference.rows == len(per_game)  # long-history rows are left out
    version = export.publish(staged, {"name": "score_beater"}, {"verdict": "BLESSED"}, reference)

    data = json.loads((base / str(version) / "assets.extra" / drift.REFERENCE_FILE).read_text())
    assert data["format"] == drift.REFERENCE_FORMAT
    assert data["format_version"] == drift.REFERENCE_VERSION
    assert data["model_version"] == version
    assert data["added_after_export"] is False
    assert data["rows_included"] == "per_game"
    assert data["long_history_rows_included"] is False
    assert data["seasons"] == [SEASON]
    back = drift.read_reference(base / str(version))
    assert back is not None
    _same(back, reference)
    # the probability series is the exported model's output on those rows
    probs = reference.shares["probability"]
    assert probs.sum() == pytest.approx(1.0)
    # the rows it was built from compare with it as no drift at all
    share = drift.progress_share(per_game.inputs["team_games"], per_game.inputs["season_games"])
    idx = drift.latest_as_of(per_game.season, per_game.player_id, per_game.as_of_seq, share, 0.5)
    psis = back.compare({n: per_game.inputs[n][idx] for n in INPUT_NAMES}, 0.5)
    assert max(psis.values()) < 1e-6


def test_a_reference_added_after_export(tmp_path: Path) -> None:
    base = tmp_path / "score_beater"
    card = {"name": "score_beater", "data_source": "bundled", "training_seasons": [SEASON]}
    version = export.publish(_staged(base), card, {"verdict": "BLESSED"})
    assert drift.read_reference(base / str(version)) is None

    assert main(["--base-path", str(base), "--model-version", str(version)]) == 0
    added = drift.read_reference(base / str(version))
    assert added is not None
    assert added.meta["added_after_export"] is True
    assert added.meta["model_version"] == version
    assert added.meta["seasons"] == [SEASON]
    _same(added, reference_for(base / str(version), dataset.build_training_set(load_history(), [SEASON])))

    stored = export.publish(
        _staged(base), {**card, "data_source": "storage:local+bundled"}, {"verdict": "BLESSED"}
    )
    with pytest.raises(DataError, match="stored rows"):
        add_reference(base, stored)
    with pytest.raises(DataError, match="no model card"):
        add_reference(base, 99)
