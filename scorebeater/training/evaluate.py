"""Scoring models on the same rows: the metrics table, overall and by season progress.

The MLP is scored through its *exported* SavedModel's ``serving_default`` signature (what
TF Serving runs), never through the in-memory Keras object, so evaluation, the promotion gate
and production all see the same artifact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from scorebeater import quality
from scorebeater.errors import ScorebeaterError
from scorebeater.inputs import INPUT_NAMES, OUTPUT_NAME, PROGRESS_BUCKETS
from scorebeater.training.dataset import TrainingSet

log = structlog.get_logger(__name__)

BUCKETS: tuple[str, ...] = ("all", *PROGRESS_BUCKETS)
MODEL_ORDER: tuple[str, ...] = ("mlp", "pace", "logistic", "gbt")
SERVING_BATCH = 8192
"""Rows per call of the loaded signature."""

Table = dict[str, dict[str, dict[str, float]]]
"""``{model: {bucket: {metric: value}}}``; ``n`` is a row count, undefined metrics are ``nan``."""


class ModelLoadError(ScorebeaterError):
    """An exported model cannot be loaded or does not have the expected serving signature."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Rows scored by several models: their probabilities and the metrics table."""

    rows: TrainingSet
    probabilities: Mapping[str, np.ndarray]
    table: Table


def bucket_metrics(label: np.ndarray, prob: np.ndarray, buckets: np.ndarray) -> dict[str, dict[str, float]]:
    """``{bucket: quality.summary}`` for ``all`` and each progress bucket."""
    out = {"all": quality.summary(label, prob)}
    for b in PROGRESS_BUCKETS:
        mask = buckets == b
        out[b] = quality.summary(label[mask], prob[mask])
    return out


def evaluate(rows: TrainingSet, predictors: Mapping[str, Callable[[TrainingSet], np.ndarray]]) -> Evaluation:
    """Score every predictor on ``rows`` and build the metrics table.

    Raises:
        ValueError: a predictor returned the wrong number of values or a non-probability.
    """
    buckets = rows.progress_bucket()
    probs: dict[str, np.ndarray] = {}
    table: Table = {}
    for name, predict in predictors.items():
        p = np.asarray(predict(rows), dtype=np.float64).ravel()
        if p.shape[0] != len(rows):
            raise ValueError(f"model {name} returned {p.shape[0]} values for {len(rows)} rows")
        probs[name] = p
        table[name] = bucket_metrics(rows.label, p, buckets)
    log.info(
        "training.evaluated",
        rows=len(rows),
        seasons=rows.seasons(),
        auc={m: _round(t["all"]["roc_auc"]) for m, t in table.items()},
    )
    return Evaluation(rows=rows, probabilities=probs, table=table)


def _round(value: float, digits: int = 4) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def json_table(table: Table, digits: int = 6) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """The table as JSON-ready data: ``n`` as an int, ``nan`` as ``null``, floats rounded."""
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for model, buckets in table.items():
        out[model] = {}
        for bucket, metrics in buckets.items():
            row: dict[str, float | int | None] = {}
            for metric in quality.METRIC_NAMES:
                value = metrics[metric]
                row[metric] = int(value) if metric == "n" else _round(value, digits)
            out[model][bucket] = row
    return out


class ServedModel:
    """An exported SavedModel called through its ``serving_default`` signature.

    Raises (on construction):
        ModelLoadError: the directory does not load, has no ``serving_default``, its inputs
        are not named inputs of ``INPUT_NAMES`` (an older version may take fewer: it is sent
        only the inputs it declares, as the daemon does), or its output is not ``probability``.
    """

    def __init__(self, path: Path) -> None:
        import tensorflow as tf  # noqa: PLC0415 - TF only where a model is loaded

        self.path = path
        self._tf = tf
        try:
            loaded = tf.saved_model.load(str(path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise ModelLoadError(path, f"cannot load SavedModel: {exc}") from exc
        signatures = getattr(loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ModelLoadError(path, "no serving_default signature")
        self._loaded = loaded  # keeps the variables alive
        self._fn: Any = signatures["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        unknown = sorted(set(kwargs) - set(INPUT_NAMES))
        if unknown or not kwargs:
            raise ModelLoadError(
                path,
                f"serving inputs {sorted(kwargs)} are not a subset of the known inputs (unknown: {unknown})",
            )
        self.input_names: tuple[str, ...] = tuple(n for n in INPUT_NAMES if n in kwargs)
        """The inputs this version takes, in ``INPUT_NAMES`` order."""
        outputs = sorted(self._fn.structured_outputs)
        if outputs != [OUTPUT_NAME]:
            raise ModelLoadError(path, f"serving outputs {outputs} are not [{OUTPUT_NAME!r}]")

    def signature(self) -> dict[str, Any]:
        """Inputs and outputs as TF Serving's metadata shows them: ``{alias: (dtype, shape)}``."""
        _, kwargs = self._fn.structured_input_signature
        return {
            "inputs": {k: (v.dtype.name, list(v.shape.as_list())) for k, v in kwargs.items()},
            "outputs": {
                k: (v.dtype.name, list(v.shape.as_list())) for k, v in self._fn.structured_outputs.items()
            },
        }

    def raw(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The signature's ``probability`` output for one batch, shape ``[batch, 1]``."""
        tf = self._tf
        out = self._fn(**{n: tf.constant(np.asarray(inputs[n], np.float32)) for n in self.input_names})
        return np.asarray(out[OUTPUT_NAME].numpy())

    def __call__(self, rows: TrainingSet) -> np.ndarray:
        """P(beat) for every row, shape ``[rows]`` (float64), in chunks of ``SERVING_BATCH``."""
        n = len(rows)
        out = np.empty(n, np.float64)
        for start in range(0, n, SERVING_BATCH):
            stop = min(start + SERVING_BATCH, n)
            chunk = {k: rows.inputs[k][start:stop] for k in self.input_names}
            out[start:stop] = self.raw(chunk)[:, 0]
        return out
