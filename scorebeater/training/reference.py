"""The drift reference of a model: its fitted rows' distribution, stored with the model.

:func:`reference_for` scores the per-game rows a model was fitted on through the exported
SavedModel (the artifact TF Serving runs) and summarises every raw input and the predicted
probability (:func:`scorebeater.drift.build_reference`). The training pipeline passes it to
:func:`scorebeater.training.export.publish`, which writes it into ``assets.extra/`` with the
model card. Only per-game rows take part: the long-history season-start rows (fitted with a
weight, but a moment the daemon never scores) would distort the comparison with the daemon's
per-game rows; the file says so (``rows_included``).

A version published before references existed gets one from the command
``python -m scorebeater.training.reference --model-version N``: it rebuilds the per-game rows
of the seasons its model card lists from the data files, predicts them (no fitting) and writes
the file, marked ``added_after_export``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from scorebeater import drift
from scorebeater.errors import DataError
from scorebeater.inputs import OUTPUT_NAME
from scorebeater.training.dataset import TrainingSet

log = structlog.get_logger(__name__)

ROWS_INCLUDED = "per_game"
"""What ``rows_included`` says: per-game rows only, long-history season-start rows excluded."""


def reference_for(
    model_dir: Path, rows: TrainingSet, *, meta: dict[str, Any] | None = None
) -> drift.Reference:
    """The reference of the SavedModel at ``model_dir`` (published or staged) on ``rows``'
    per-game rows (long-history rows are dropped here).

    Raises:
        DataError: no per-game rows.
        ModelLoadError: the SavedModel does not load.
    """
    from scorebeater.training.evaluate import ServedModel  # noqa: PLC0415 - TensorFlow

    per_game = rows.take(~rows.is_long_history())
    if len(per_game) == 0:
        raise DataError("no per-game rows to build the drift reference from")
    probability = ServedModel(model_dir)(per_game)
    values: dict[str, np.ndarray] = {name: np.asarray(v) for name, v in per_game.inputs.items()}
    values[OUTPUT_NAME] = probability
    reference = drift.build_reference(
        values,
        season=per_game.season,
        player_id=per_game.player_id,
        as_of_seq=per_game.as_of_seq,
        meta={
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows_included": ROWS_INCLUDED,
            "long_history_rows_included": False,
            "seasons": per_game.seasons(),
            **(meta or {}),
        },
    )
    log.info("training.reference_built", model_dir=str(model_dir), rows=reference.rows)
    return reference


def add_reference(base_path: Path, version: int, data_dir: Path | None = None) -> Path:
    """Build and write the reference of an already published version from the seasons its
    model card lists (``training_seasons``), rebuilt from the data files; returns the path.

    Raises:
        DataError: the version has no model card, or its rows came from storage (rebuild them
            with the daemon's export instead), or a season has no rows in the data files.
    """
    from scorebeater.data import load_history  # noqa: PLC0415
    from scorebeater.training import dataset, export  # noqa: PLC0415

    model_dir = base_path / str(version)
    card = export.read_extra(model_dir, export.MODEL_CARD)
    if card is None:
        raise DataError(f"{model_dir}: no model card; cannot tell which rows the model was fitted on")
    if str(card.get("data_source", "")).startswith("storage"):
        raise DataError(f"{model_dir}: fitted on stored rows ({card['data_source']}); not rebuilt from files")
    seasons = [int(s) for s in card.get("training_seasons", [])]
    if not seasons:
        raise DataError(f"{model_dir}: the model card lists no training_seasons")
    rows = dataset.build_training_set(load_history(data_dir), seasons)
    reference = reference_for(
        model_dir,
        rows,
        meta={
            "model_version": version,
            "added_after_export": True,
            "note": "computed after export from the model card's training_seasons, rebuilt from the "
            "data files, with the published model's predictions (no refit)",
        },
    )
    path = model_dir / export.EXTRA_DIR / drift.REFERENCE_FILE
    drift.write_reference(path, reference)
    log.info("training.reference_added", path=str(path), rows=reference.rows, seasons=seasons)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scorebeater.training.reference --model-version N [--base-path P] [--data D]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-version", type=int, action="append", required=True, dest="versions")
    parser.add_argument("--base-path", type=Path, default=Path("model/score_beater"))
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: bundled)")
    args = parser.parse_args(argv)
    for version in args.versions:
        path = add_reference(args.base_path, version, args.data)
        print(path)  # noqa: T201 - the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
