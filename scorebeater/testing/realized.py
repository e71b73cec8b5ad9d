"""Reading the daemon's realized model-quality gauges back from a ``/metrics`` exposition.

Shared by the daemon-vs-evaluate test and ``scripts/daemon_vs_evaluate.py``: both compare
these gauges with ``scorebeater evaluate --json`` (metric names as in its table).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

REALIZED_GAUGES: dict[str, str] = {
    "roc_auc": "scorebeater_eval_roc_auc",
    "brier": "scorebeater_eval_brier_score",
    "log_loss": "scorebeater_eval_log_loss",
    "ece": "scorebeater_eval_expected_calibration_error",
    "accuracy": "scorebeater_eval_accuracy",
    "n": "scorebeater_eval_rows",
}
"""``evaluate``'s metric name -> the gauge the validation stage exports it as."""


def scrape_realized(text: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{model_version: {bucket: {metric: value}}}`` from a ``/metrics`` exposition."""
    wanted = {name: metric for metric, name in REALIZED_GAUGES.items()}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metric = wanted.get(sample.name)
            if metric is not None:
                version, bucket = sample.labels["model_version"], sample.labels["bucket"]
                out.setdefault(version, {}).setdefault(bucket, {})[metric] = sample.value
    return out
