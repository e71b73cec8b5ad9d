"""``scorebeater backtest``: the rolling-origin backtest's command, progress display and report.

The computation is :mod:`scorebeater.training.backtest`'s; this module loads the rows, shows
progress on stderr, writes the report and prints the result:

- ``backtest.md``: each model's mean ± standard deviation over the folds (ROC AUC, Brier,
  log loss, ECE; overall and per season-progress bucket), the per-fold AUCs with the MLP's
  worst fold marked, the bootstrap interval of the AUC difference MLP - best baseline, what
  each fold fitted on (seasons, rows, best epochs), the recipe and the time taken;
- ``backtest.json``: :meth:`Backtest.as_json` plus the context;
- ``backtest_auc_by_fold.png``: AUC per fold, one line per model (overall and 0-25%);
- ``backtest_auc_by_progress.png``: mean AUC per progress bucket, one bar per model, with the
  standard deviation over the folds as error bars.

Every file is written under a temporary name and renamed, so a reader never sees half a
report. TensorFlow and matplotlib are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from scorebeater.config import Config
from scorebeater.data import load_history
from scorebeater.inputs import PROGRESS_BUCKETS
from scorebeater.training import dataset
from scorebeater.training.evaluate import BUCKETS

if TYPE_CHECKING:
    from scorebeater.training.backtest import Backtest, Fold

log = structlog.get_logger(__name__)

EXIT_OK = 0
REPORT_MD = "backtest.md"
REPORT_JSON = "backtest.json"
FOLDS_PNG = "backtest_auc_by_fold.png"
PROGRESS_PNG = "backtest_auc_by_progress.png"

LABELS = {
    "mlp": "MLP",
    "pace": "pace heuristic",
    "logistic": "logistic regression",
    "gbt": "gradient-boosted trees",
}
METRIC_TITLES = {"roc_auc": "ROC AUC", "brier": "Brier", "log_loss": "log loss", "ece": "ECE"}
_FOLD_LINE = re.compile(r"fold (\d+)/\d+ ")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes:d}:{secs:02d}"


def _span(seasons: Sequence[int]) -> str:
    if not seasons:
        return "none"
    return str(seasons[0]) if len(seasons) == 1 else f"{seasons[0]}-{seasons[-1]}"


class ProgressDisplay:
    """The backtest's progress on stderr: a header per fold, then the recipe's member and
    epoch lines, each prefixed with the time elapsed since the display started.

    Call it with each progress line (it is a :data:`~scorebeater.training.recipe.Progress`).
    A line starting ``fold i/n`` opens fold ``i``'s header the first time it is seen.
    """

    def __init__(
        self,
        folds: Sequence[Fold],
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._folds = list(folds)
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._shown = 0

    def elapsed(self) -> float:
        """Seconds since the display started."""
        return self._clock() - self._started

    def line(self, text: str) -> None:
        """Write one line, prefixed with the elapsed time."""
        stream = self._stream if self._stream is not None else sys.stderr
        print(f"[{_clock(self.elapsed()):>6s}] {text}", file=stream, flush=True)

    def __call__(self, text: str) -> None:
        match = _FOLD_LINE.match(text)
        if match is not None:
            index = int(match.group(1))
            while self._shown < min(index, len(self._folds)):
                self._header(self._shown)
                self._shown += 1
        self.line(text)

    def _header(self, i: int) -> None:
        f = self._folds[i]
        self.line(
            f"== fold {i + 1}/{len(self._folds)}: test {f.test_season}, early-stop on "
            f"{f.validation_season}, fit on per-game seasons {_span(f.train_seasons)} and "
            f"season-start rows {_span(f.long_history_seasons)}"
        )


def backtest_command(args: argparse.Namespace) -> int:
    """``scorebeater backtest``: run the backtest, write the report, print the table (or JSON).

    Raises:
        DataError: a test season has no per-game rows, or S-1 has none, or nothing is left
            to fit on (checked before anything is fitted).
    """
    from scorebeater.training import backtest  # noqa: PLC0415 - TensorFlow
    from scorebeater.training.recipe import Recipe  # noqa: PLC0415

    cfg: Config = args.cfg
    data_dir: Path | None = args.data if args.data is not None else cfg.data.dir
    history = load_history(data_dir)
    per_game = dataset.build_training_set(history)
    first = cfg.training.long_history_from
    long_history = (
        dataset.build_long_history(history, first=first) if first else dataset.build_long_history(history, [])
    )
    seasons = sorted(set(args.seasons))
    folds = backtest.make_folds(seasons, per_game.seasons(), long_history.seasons())
    recipe = Recipe.from_config(cfg.training)

    display = ProgressDisplay(folds)
    display.line(
        f"backtest: {len(folds)} fold(s), test seasons {seasons}; {len(per_game):,} per-game rows, "
        f"{len(long_history):,} season-start rows; {recipe.members} member(s) x up to "
        f"{recipe.max_epochs} epochs"
    )
    bt = backtest.run(recipe, per_game, long_history, seasons, progress=display)
    display.line(f"backtest done in {_clock(bt.seconds)}")

    report_dir: Path = args.report_dir or cfg.training.report_dir
    context = {
        "data": str(data_dir) if data_dir is not None else "bundled",
        "test_seasons": seasons,
        "per_game_seasons": per_game.seasons(),
        "long_history_from": first or "none",
        "per_game_rows": len(per_game),
        "season_start_rows": len(long_history),
        "cpu_cores": _cpu_cores(),
    }
    md = write_report(bt, report_dir, context)
    log.info("training.backtest_report_written", path=str(md))
    if args.json:
        print(json.dumps(finite(bt.as_json()), allow_nan=False))  # noqa: T201 - the command's output
    else:
        print(console_table(bt))  # noqa: T201
    return EXIT_OK


def _cpu_cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (an undefined metric) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _f(value: float, digits: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.4f}"


def _best_baseline(bt: Backtest) -> str | None:
    from scorebeater.training.backtest import best_baseline  # noqa: PLC0415 - imports TensorFlow

    return best_baseline(bt.summary)


def console_table(bt: Backtest) -> str:
    """The compact result: per model, mean AUC overall and per bucket, Brier, log loss, ECE,
    the AUC's standard deviation and worst fold; then the bootstrap interval(s)."""
    n = len(bt.results)
    seasons = [r.fold.test_season for r in bt.results]
    lines = [
        f"backtest: {n} fold(s), test seasons {_span(seasons)}, {_clock(bt.seconds)}; mean over folds",
        f"{'model':9s} {'auc':>7s} "
        + " ".join(f"{b:>7s}" for b in PROGRESS_BUCKETS)
        + f" {'brier':>7s} {'logloss':>7s} {'ece':>7s} {'auc std':>7s} {'worst fold (auc)':>17s}",
    ]
    for model, buckets in bt.summary.items():
        auc = buckets["all"]["roc_auc"]
        cells = [_f(buckets[b]["roc_auc"]["mean"]) for b in BUCKETS]
        cells += [_f(buckets["all"][k]["mean"]) for k in ("brier", "log_loss", "ece")]
        cells.append(_f(auc["std"]))
        worst_cell = f"{int(auc['worst_season'])} {_f(auc['min'])}"
        lines.append(f"{model:9s} " + " ".join(f"{c:>7s}" for c in cells) + f" {worst_cell:>17s}")
    for c in bt.comparison:
        lo, hi = c["ci"]
        lines.append(
            f"{c['model']} - {c['baseline']} AUC ({c['bucket']}): {_signed(c['auc_difference'])} "
            f"[{c['confidence']:.0%} CI {_signed(lo)}, {_signed(hi)}; {c['replicates']} {c['unit']} "
            "bootstrap replicates]"
        )
    return "\n".join(lines)


# --- the report -------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def _pm(cell: Mapping[str, float]) -> str:
    if math.isnan(cell["mean"]):
        return "n/a"
    return f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def _summary_tables(bt: Backtest) -> list[str]:
    n = len(bt.results)
    lines = [
        f"## Mean ± standard deviation over the {n} fold(s)",
        "",
        "| model | ROC AUC | Brier | log loss | ECE | worst fold (ROC AUC) |",
        "|---|---|---|---|---|---|",
    ]
    for model, buckets in bt.summary.items():
        cells = " | ".join(_pm(buckets["all"][k]) for k in METRIC_TITLES)
        auc = buckets["all"]["roc_auc"]
        lines.append(
            f"| {LABELS.get(model, model)} | {cells} | {int(auc['worst_season'])}: {_f(auc['min'])} |"
        )
    for metric in ("roc_auc", "ece", "brier"):
        lines += [
            "",
            f"### {METRIC_TITLES[metric]} by season progress (mean ± std)",
            "",
            "| model | " + " | ".join(BUCKETS) + " |",
            "|---|" + "---|" * len(BUCKETS),
        ]
        for model, buckets in bt.summary.items():
            cells = " | ".join(_pm(buckets[b][metric]) for b in BUCKETS)
            lines.append(f"| {LABELS.get(model, model)} | {cells} |")
    return lines


def _fold_table(bt: Backtest) -> list[str]:
    models = list(bt.summary)
    worst = bt.summary["mlp"]["all"]["roc_auc"]["worst_season"] if "mlp" in bt.summary else None
    best = _best_baseline(bt)
    header = ["test season"]
    for m in models:
        header += [f"{m} all", f"{m} 0-25"]
    if "mlp" in models and best is not None:
        header.append(f"mlp - {best} (all)")
    lines = [
        "## ROC AUC per fold",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
    ]
    for r in bt.results:
        season = r.fold.test_season
        cells = [f"**{season}** (MLP's worst)" if season == worst else str(season)]
        for m in models:
            cells += [_f(r.table[m]["all"]["roc_auc"]), _f(r.table[m][PROGRESS_BUCKETS[0]]["roc_auc"])]
        if "mlp" in models and best is not None:
            cells.append(_signed(r.table["mlp"]["all"]["roc_auc"] - r.table[best]["all"]["roc_auc"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _comparison_table(bt: Backtest) -> list[str]:
    if not bt.comparison:
        return [
            "## MLP against the best baseline",
            "",
            "No comparison (the MLP or the baselines were not run).",
        ]
    first = bt.comparison[0]
    lines = [
        f"## MLP against the best baseline ({LABELS.get(first['baseline'], first['baseline'])})",
        "",
        (
            "Mean over the folds of the per-fold ROC AUC difference, with a paired percentile "
            f"bootstrap interval ({first['replicates']} replicates; each replicate resamples every "
            f"fold's {first['unit']}s with replacement, the same draw for both models)."
        ),
        "",
        "| bucket | AUC difference | confidence interval |",
        "|---|---|---|",
    ]
    for c in bt.comparison:
        lo, hi = c["ci"]
        lines.append(
            f"| {c['bucket']} | {_signed(c['auc_difference'])} | {c['confidence']:.0%}: "
            f"[{_signed(lo)}, {_signed(hi)}] |"
        )
    return lines


def _folds_detail(bt: Backtest) -> list[str]:
    lines = [
        "## What each fold fitted on",
        "",
        (
            "| test | early stopping | per-game seasons | season-start seasons | train rows "
            "| of which season-start | validation rows | test rows | best epochs | Platt a, b | seconds |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in bt.results:
        f, rows = r.fold, r.rows
        lines.append(
            f"| {f.test_season} | {f.validation_season} | {_span(f.train_seasons)} "
            f"| {_span(f.long_history_seasons)} | {rows['train']:,} | {rows['train_long_history']:,} "
            f"| {rows['validation']:,} | {rows['test']:,} | {', '.join(map(str, r.best_epochs))} "
            f"| {r.platt[0]:.3f}, {r.platt[1]:.3f} | {r.seconds:.0f} |"
        )
    return lines


def markdown(bt: Backtest, context: Mapping[str, Any]) -> str:
    """The report's Markdown text (plots linked by relative path)."""
    seasons = [r.fold.test_season for r in bt.results]
    lines = [
        "# score_beater rolling-origin backtest",
        "",
        (
            f"For each test season S ({', '.join(map(str, seasons))}), the MLP and every baseline "
            "are fitted on the same rows of the seasons before S-1 (per-game rows and season-start "
            "rows from the long history), the MLP early-stops on S-1 (and calibrates there if the "
            "recipe says so), and everything is scored on the per-game rows of S. Nothing of S or "
            "later reaches a fit. A best epoch of 0 means no epoch beat the network's starting "
            "point on S-1 (its linear part initialised as a logistic regression, its hidden "
            "layers contributing zero), which is then kept."
        ),
        "",
    ]
    lines += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in context.items()]
    lines += [
        f"- **time taken**: {_clock(bt.seconds)} (m:ss) for {len(bt.results)} fold(s)",
        (
            f"- **epochs** (per member) of the last fold, the one with the most training rows, "
            f"which `scorebeater train`'s gate fold reproduces (same seasons and seed) and uses "
            f"for its refit on every season: {bt.epochs()}"
        ),
        "",
    ]
    lines += _summary_tables(bt)
    lines += ["", f"![ROC AUC by season progress, mean and std over folds]({PROGRESS_PNG})", ""]
    lines += _fold_table(bt)
    lines += ["", f"![ROC AUC per fold]({FOLDS_PNG})", ""]
    lines += _comparison_table(bt)
    lines += [""]
    lines += _folds_detail(bt)
    lines += ["", "## Recipe", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in bt.recipe.as_dict().items()]
    lines += [
        "",
        (
            "Metrics: ROC AUC (rank quality), Brier score and log loss (lower is better), ECE = "
            "expected calibration error over 10 equal-width bins. Progress bucket = team games "
            "played / scheduled games. Standard deviations are over the folds (ddof 1); the worst "
            "fold is the test season with the lowest ROC AUC."
        ),
        "",
    ]
    return "\n".join(lines)


def folds_plot(bt: Backtest, path: Path) -> None:
    """ROC AUC per test season, one line per model: overall and in the first progress bucket."""
    import matplotlib as mpl  # noqa: PLC0415 - only the report draws

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    seasons = [r.fold.test_season for r in bt.results]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=110, sharex=True, layout="constrained")
    for ax, bucket in zip(axes, ("all", PROGRESS_BUCKETS[0]), strict=True):
        for model in bt.summary:
            ax.plot(
                seasons,
                [r.table[model][bucket]["roc_auc"] for r in bt.results],
                marker="o",
                linewidth=2.2 if model == "mlp" else 1.2,
                label=LABELS.get(model, model),
            )
        ax.set_title("all rows" if bucket == "all" else f"{bucket}% of the season played")
        ax.set(xlabel="test season", ylabel="ROC AUC")
        ax.set_xticks(seasons, [str(s) for s in seasons])
        ax.grid(alpha=0.3)
    fig.suptitle("Rolling-origin backtest: ROC AUC per fold")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8, frameon=False)
    _write_atomically(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def progress_plot(bt: Backtest, path: Path) -> None:
    """Grouped bars: each model's mean ROC AUC per bucket, the std over folds as error bars."""
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    models = list(bt.summary)
    fig, ax = plt.subplots(figsize=(8.5, 4.8), dpi=110, layout="constrained")
    width = 0.8 / max(len(models), 1)
    low = 1.0
    for i, model in enumerate(models):
        cells = [bt.summary[model][b]["roc_auc"] for b in BUCKETS]
        means = [0.0 if math.isnan(c["mean"]) else c["mean"] for c in cells]
        stds = [0.0 if math.isnan(c["std"]) else c["std"] for c in cells]
        low = min([low] + [m - s for m, s in zip(means, stds, strict=True) if m > 0])
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(BUCKETS))]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=LABELS.get(model, model))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(range(len(BUCKETS)), ["all", *(f"{b}%" for b in PROGRESS_BUCKETS)])
    ax.set(xlabel="season progress (share of the team's scheduled games played)", ylabel="ROC AUC")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(models), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.suptitle(f"Backtest: mean ROC AUC over {len(bt.results)} fold(s), error bars ± std over folds")
    _write_atomically(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def write_report(bt: Backtest, out_dir: Path, context: Mapping[str, Any]) -> Path:
    """Write ``backtest.md``, ``backtest.json`` and both plots into ``out_dir``; returns the
    Markdown path.

    Idempotent: rewriting replaces the files. Raises ``OSError`` if the directory cannot be written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    folds_plot(bt, out_dir / FOLDS_PNG)
    progress_plot(bt, out_dir / PROGRESS_PNG)
    document = json.dumps(finite({**bt.as_json(), "context": dict(context)}), indent=2, allow_nan=False)
    _write_atomically(out_dir / REPORT_JSON, lambda p: p.write_text(document + "\n", encoding="utf-8"))
    md_path = out_dir / REPORT_MD
    text = markdown(bt, context)
    _write_atomically(md_path, lambda p: p.write_text(text, encoding="utf-8"))
    return md_path
