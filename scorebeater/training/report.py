"""The evaluation report: Markdown plus two PNG plots, written to a directory.

- ``reliability.png``: reliability diagram (10 equal-width bins) of every model;
- ``auc_by_progress.png``: ROC AUC per season-progress bucket, MLP against the baselines;
- ``evaluation.md``: the context (model version, seasons, rows) and the metrics tables,
  linking both plots by relative path.

Files are written to temporary names and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt

from scorebeater import quality
from scorebeater.inputs import PROGRESS_BUCKETS
from scorebeater.training.evaluate import BUCKETS, Evaluation

RELIABILITY_PNG = "reliability.png"
AUC_PNG = "auc_by_progress.png"
REPORT_MD = "evaluation.md"

_LABELS = {
    "mlp": "MLP",
    "pace": "pace heuristic",
    "logistic": "logistic regression",
    "gbt": "gradient-boosted trees",
}


def _replace_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def reliability_plot(evaluation: Evaluation, path: Path, title: str) -> None:
    """Observed positive share against mean predicted probability per bin, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, prob in evaluation.probabilities.items():
        bins = [b for b in quality.reliability_bins(evaluation.rows.label, prob) if b.count]
        ece = quality.ece(evaluation.rows.label, prob)
        ax.plot(
            [b.mean_prob for b in bins],
            [b.frac_positive for b in bins],
            marker="o",
            linewidth=2 if name == "mlp" else 1,
            label=f"{_LABELS.get(name, name)} (ECE {ece:.3f})",
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted P(beat)", ylabel="observed share that beat")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _replace_atomically(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def auc_plot(evaluation: Evaluation, path: Path, title: str) -> None:
    """Grouped bars: ROC AUC of every model in each progress bucket."""
    models = list(evaluation.table)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    width = 0.8 / max(len(models), 1)
    for i, name in enumerate(models):
        values = [evaluation.table[name][b]["roc_auc"] for b in PROGRESS_BUCKETS]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(PROGRESS_BUCKETS))]
        ax.bar(xs, [0 if math.isnan(v) else v for v in values], width, label=_LABELS.get(name, name))
    finite = [
        evaluation.table[m][b]["roc_auc"]
        for m in models
        for b in PROGRESS_BUCKETS
        if not math.isnan(evaluation.table[m][b]["roc_auc"])
    ]
    low = min(finite, default=0.5)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(range(len(PROGRESS_BUCKETS)), [f"{b}%" for b in PROGRESS_BUCKETS])
    ax.set(xlabel="season progress (share of the team's scheduled games played)", ylabel="ROC AUC")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _replace_atomically(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _fmt(metric: str, value: float) -> str:
    if metric == "n":
        return f"{int(value):,}"
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def markdown(evaluation: Evaluation, context: Mapping[str, Any]) -> str:
    """The report's Markdown text (plots linked by relative path)."""
    lines = ["# score_beater evaluation", ""]
    lines += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in context.items()]
    lines += [
        f"- **rows**: {len(evaluation.rows):,} player snapshots (one per player after each game day)",
        f"- **positive share**: {float(evaluation.rows.label.mean()):.3f}" if len(evaluation.rows) else "",
        "",
        "## Overall",
        "",
        "| model | ROC AUC | Brier | log loss | ECE | accuracy | rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, buckets in evaluation.table.items():
        m = buckets["all"]
        cells = " | ".join(_fmt(k, m[k]) for k in quality.METRIC_NAMES)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "## ROC AUC by season progress", "", "| model | " + " | ".join(BUCKETS) + " |"]
    lines.append("|---|" + "---|" * len(BUCKETS))
    for name, buckets in evaluation.table.items():
        lines.append(
            f"| {name} | " + " | ".join(_fmt("roc_auc", buckets[b]["roc_auc"]) for b in BUCKETS) + " |"
        )
    lines += ["", "## ECE by season progress", "", "| model | " + " | ".join(BUCKETS) + " |"]
    lines.append("|---|" + "---|" * len(BUCKETS))
    for name, buckets in evaluation.table.items():
        lines.append(f"| {name} | " + " | ".join(_fmt("ece", buckets[b]["ece"]) for b in BUCKETS) + " |")
    lines += [
        "",
        f"![reliability diagram]({RELIABILITY_PNG})",
        "",
        f"![ROC AUC by season progress]({AUC_PNG})",
        "",
        (
            "Metrics: ROC AUC (rank quality), Brier score and log loss (lower is better), ECE = expected "
            "calibration error over 10 equal-width bins, accuracy at a 0.5 threshold. Progress bucket = "
            "team games played / scheduled games."
        ),
        "",
    ]
    return "\n".join(lines)


def write_report(evaluation: Evaluation, out_dir: Path, context: Mapping[str, Any]) -> Path:
    """Write the Markdown report and both plots into ``out_dir``; returns the Markdown path.

    Idempotent: rewriting replaces the files. Raises ``OSError`` if the directory cannot be written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    seasons = ", ".join(str(s) for s in evaluation.rows.seasons())
    reliability_plot(evaluation, out_dir / RELIABILITY_PNG, f"Reliability, season(s) {seasons}")
    auc_plot(evaluation, out_dir / AUC_PNG, f"ROC AUC by season progress, season(s) {seasons}")
    md_path = out_dir / REPORT_MD
    text = markdown(evaluation, context)
    _replace_atomically(md_path, lambda p: p.write_text(text, encoding="utf-8"))
    return md_path
