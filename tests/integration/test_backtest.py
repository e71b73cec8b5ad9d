"""The rolling-origin backtest: folds, the paired bootstrap, the report, and the command end to end.

End-to-end scenario (a small data directory: three teams' regular-season games and player-games
of 2007-2010, and every season total, so the long history has rows):
1. `scorebeater backtest --seasons 2010 2009 --json` with a tiny recipe (2 members, 2 epochs,
   8 hidden units, season-start rows from 2003) exits 0 and prints exactly one JSON object;
2. the object has both folds, a summary with mean/std/min/max/worst season of every metric of
   every model and bucket, and the MLP-vs-best-baseline intervals around their point estimates;
3. no fold fitted on its test or its validation season (per-game or season-start rows);
4. stderr showed a header per fold and the epoch lines; the report files exist;
5. a season without rows is a one-line error and exit 1, before anything is fitted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scorebeater import cli
from scorebeater.data import bundled_data_dir
from scorebeater.errors import DataError
from scorebeater.inputs import PROGRESS_BUCKETS
from scorebeater.training.evaluate import BUCKETS, MODEL_ORDER, bucket_metrics

if TYPE_CHECKING:
    from scorebeater.training.backtest import FoldResult

TEAMS = {"BOS", "LAL", "PHX"}
GAME_SEASONS = {"2007", "2008", "2009", "2010"}
SUMMARY_KEYS = {"mean", "std", "min", "max", "worst_season"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _copy(name: str, out: Path, keep: set[str] | None) -> None:
    """Copy a bundled file, keeping every row (``keep is None``) or the rows of those teams."""
    text = gzip.decompress((bundled_data_dir() / name).read_bytes()).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(reader.fieldnames or ()))
    writer.writeheader()
    for row in reader:
        if keep is None:
            writer.writerow(row)
            continue
        if row["season"] not in GAME_SEASONS or row["season_type"] != "regular":
            continue
        teams = {row["away"], row["home"]} if "away" in row else {row["team"]}
        if teams & keep:
            writer.writerow(row)
    (out / name).write_bytes(gzip.compress(buffer.getvalue().encode("utf-8")))


@pytest.fixture(name="data_dir", scope="module")
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    _copy("season_totals.csv.gz", out, None)
    _copy("games.csv.gz", out, TEAMS)
    _copy("player_games.csv.gz", out, TEAMS)
    return out


@pytest.fixture(name="config_file", scope="module")
def _config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "scorebeater.toml"
    path.write_text(
        "[training]\nepochs = 2\nensemble_members = 2\nhidden_units = [8]\nlong_history_from = 2003\n"
        f'report_dir = "{path.parent / "default-reports"}"\n'
    )
    return path


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_backtest_command_end_to_end(
    data_dir: Path, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_dir = tmp_path / "report"
    argv = ["backtest", "--config", str(config_file), "--data", str(data_dir), "--seasons", "2010", "2009"]
    code = cli.main([*argv, "--json", "--report-dir", str(report_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    out = json.loads(captured.out)  # exactly one JSON object on stdout

    assert out["recipe"]["members"] == 2
    assert out["recipe"]["max_epochs"] == 2
    assert out["recipe"]["hidden_units"] == [8]
    assert len(out["refit_epochs"]) == 2

    folds = out["folds"]
    assert [f["test_season"] for f in folds] == [2009, 2010]
    for fold in folds:
        test, validation = fold["test_season"], fold["validation_season"]
        assert validation == test - 1
        # nothing of the validation season or later was fitted on
        assert fold["train_seasons"] == list(range(2007, validation))
        # the first and last season-start seasons (flat, or as one-item lists)
        long_seasons = [
            s for part in fold["long_history_seasons"] for s in (part if isinstance(part, list) else [part])
        ]
        assert long_seasons
        assert min(long_seasons) == 2003
        assert max(long_seasons) == validation - 1
        rows = fold["rows"]
        assert 0 < rows["train_long_history"] < rows["train"]
        assert rows["validation"] > 0
        assert rows["test"] > 0
        assert len(fold["best_epochs"]) == 2
        assert list(fold["metrics"]) == list(MODEL_ORDER)
        for buckets in fold["metrics"].values():
            assert list(buckets) == list(BUCKETS)
            assert buckets["all"]["n"] == rows["test"]

    summary = out["summary"]
    assert list(summary) == list(MODEL_ORDER)
    for buckets in summary.values():
        assert list(buckets) == list(BUCKETS)
        for metrics in buckets.values():
            assert set(metrics) == {"roc_auc", "brier", "log_loss", "ece"}
            for cell in metrics.values():
                assert set(cell) == SUMMARY_KEYS
                assert cell["worst_season"] in {2009, 2010}
                if cell["mean"] is not None:
                    assert cell["min"] <= cell["mean"] <= cell["max"]
    for metric in ("roc_auc", "brier"):
        per_fold = [f["metrics"]["mlp"]["all"][metric] for f in folds]
        assert summary["mlp"]["all"][metric]["mean"] == pytest.approx(np.mean(per_fold), abs=1e-5)
    worst = summary["mlp"]["all"]["roc_auc"]["worst_season"]
    assert worst == min(folds, key=lambda f: f["metrics"]["mlp"]["all"]["roc_auc"])["test_season"]

    best = max(("pace", "logistic", "gbt"), key=lambda m: summary[m]["all"]["roc_auc"]["mean"])
    assert [c["bucket"] for c in out["comparison"]] == ["all", PROGRESS_BUCKETS[0]]
    for c in out["comparison"]:
        assert (c["model"], c["baseline"], c["unit"]) == ("mlp", best, "player-season")
        lo, hi = c["ci"]
        assert lo <= c["auc_difference"] <= hi
    overall = out["comparison"][0]["auc_difference"]
    expected = np.mean(
        [f["metrics"]["mlp"]["all"]["roc_auc"] - f["metrics"][best]["all"]["roc_auc"] for f in folds]
    )
    assert overall == pytest.approx(expected, abs=1e-5)

    for header in (
        "== fold 1/2: test 2009, early-stop on 2008",
        "== fold 2/2: test 2010, early-stop on 2009",
    ):
        assert header in captured.err
    assert "member 2/2 epoch 2/2" in captured.err
    for name in ("backtest_auc_by_fold.png", "backtest_auc_by_progress.png"):
        assert (report_dir / name).read_bytes()[:8] == PNG_MAGIC
    document = json.loads((report_dir / "backtest.json").read_text())
    assert document["folds"] == out["folds"]
    assert document["context"]["test_seasons"] == [2009, 2010]
    markdown = (report_dir / "backtest.md").read_text()
    assert f"**{worst}** (MLP's worst)" in markdown
    assert "backtest_auc_by_fold.png" in markdown
    assert not [p for p in report_dir.iterdir() if p.name.endswith(".tmp")]

    # step 5: a season without rows fails before any fit, as one line
    assert cli.main([*argv[:-2], "2015", "--report-dir", str(report_dir)]) == 1
    err = capsys.readouterr().err
    assert "scorebeater: error: backtest season 2015 has no per-game rows" in err
    assert "epoch" not in err


def test_make_folds_and_its_errors() -> None:
    from scorebeater.training.backtest import make_folds

    folds = make_folds([2011, 2010, 2011], range(2007, 2012), range(1990, 2015))
    assert [(f.test_season, f.validation_season) for f in folds] == [(2010, 2009), (2011, 2010)]
    assert folds[0].train_seasons == [2007, 2008]
    assert folds[0].long_history_seasons == list(range(1990, 2009))
    assert folds[1].long_history_seasons[-1] == 2009

    with pytest.raises(DataError, match="backtest season 2015 has no per-game rows"):
        make_folds([2015], range(2007, 2015), [])
    with pytest.raises(DataError, match="season 2009 has no per-game rows to early-stop on"):
        make_folds([2010], [2007, 2008, 2010], [])
    with pytest.raises(DataError, match="no per-game season before 2008 to fit on"):
        make_folds([2009], [2008, 2009], range(1990, 2009))


def test_sorted_auc_is_sklearns_auc_under_weights() -> None:
    from scorebeater.training.backtest import _SortedAuc

    rng = np.random.default_rng(3)
    n = 500
    label = rng.random(n) < 0.4
    score = np.round(rng.random(n) * 0.6 + label * 0.3, 2)  # rounded: many ties
    auc = _SortedAuc(score, label)
    assert auc(np.ones(n)) == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    weight = rng.integers(0, 4, n)  # zero weights drop rows
    repeated = roc_auc_score(np.repeat(label, weight), np.repeat(score, weight))
    assert auc(weight.astype(np.float64)) == pytest.approx(repeated, abs=1e-12)
    assert auc(np.zeros(n)) != auc(np.zeros(n))  # no rows: undefined (nan)


def _fold_result(
    season: int, rng: np.random.Generator, *, players: int = 80, per_player: int = 12
) -> FoldResult:
    """A scored fold of synthetic player-seasons: ``per_player`` identical rows each."""
    from scorebeater.training.backtest import Fold, FoldResult

    cluster = np.repeat(np.arange(players), per_player)
    label = np.repeat(rng.random(players) < 0.45, per_player)
    bucket = np.asarray(PROGRESS_BUCKETS, dtype=object)[np.arange(len(cluster)) % len(PROGRESS_BUCKETS)]
    skill = {"mlp": 0.5, "pace": 0.2, "logistic": 0.35, "gbt": 0.3}
    probabilities = {}
    for model, signal in skill.items():
        noise = np.repeat(rng.random(players), per_player)
        probabilities[model] = np.clip(0.15 + 0.6 * signal * label + 0.6 * noise, 0.01, 0.99)
    return FoldResult(
        fold=Fold(season, season - 1, list(range(2007, season - 1)), list(range(1990, season - 1))),
        table={m: bucket_metrics(label, p, bucket) for m, p in probabilities.items()},
        rows={"train": 1000, "train_long_history": 300, "validation": 400, "test": len(label)},
        best_epochs=[3, 5],
        platt=(1.1, -0.05),
        seconds=2.0,
        probabilities=probabilities,
        label=label,
        cluster=cluster,
        bucket=bucket,
    )


def test_paired_bootstrap_resamples_player_seasons() -> None:
    from scorebeater.training.backtest import FoldResult, paired_bootstrap

    rng = np.random.default_rng(11)
    folds = [_fold_result(s, rng) for s in (2012, 2013)]

    out = paired_bootstrap(folds, "mlp", "logistic", replicates=300)
    expected = np.mean(
        [
            roc_auc_score(r.label, r.probabilities["mlp"])
            - roc_auc_score(r.label, r.probabilities["logistic"])
            for r in folds
        ]
    )
    assert out["auc_difference"] == pytest.approx(expected, abs=1e-12)
    lo, hi = out["ci"]
    assert lo < out["auc_difference"] < hi
    assert (out["replicates"], out["confidence"], out["unit"]) == (300, 0.95, "player-season")
    assert paired_bootstrap(folds, "mlp", "logistic", replicates=300)["ci"] == out["ci"]  # seeded

    first = PROGRESS_BUCKETS[0]
    early = paired_bootstrap(folds, "mlp", "logistic", bucket=first, replicates=300)
    in_bucket = [r.bucket == first for r in folds]
    expected_early = np.mean(
        [
            roc_auc_score(r.label[m], r.probabilities["mlp"][m])
            - roc_auc_score(r.label[m], r.probabilities["logistic"][m])
            for r, m in zip(folds, in_bucket, strict=True)
        ]
    )
    assert early["auc_difference"] == pytest.approx(expected_early, abs=1e-12)

    same = paired_bootstrap(folds, "mlp", "mlp", replicates=50)
    assert same["auc_difference"] == 0.0
    assert same["ci"] == [0.0, 0.0]  # paired: both models see the same draw

    # each player-season's 12 identical rows move together: treating rows as independent
    # would make the interval about sqrt(12) times narrower
    rowwise = [
        FoldResult(
            fold=r.fold,
            table=r.table,
            rows=r.rows,
            best_epochs=r.best_epochs,
            platt=r.platt,
            seconds=r.seconds,
            probabilities=r.probabilities,
            label=r.label,
            cluster=np.arange(len(r.label)),
            bucket=r.bucket,
        )
        for r in folds
    ]
    narrow = paired_bootstrap(rowwise, "mlp", "logistic", replicates=300)["ci"]
    assert (hi - lo) > 2 * (narrow[1] - narrow[0])


def test_report_and_console_table_of_a_synthetic_backtest(tmp_path: Path) -> None:
    from scorebeater.training import backtest_report
    from scorebeater.training.backtest import Backtest, paired_bootstrap, summarise
    from scorebeater.training.recipe import Recipe

    rng = np.random.default_rng(5)
    folds = [_fold_result(s, rng) for s in (2011, 2012, 2013)]
    # one undefined metric: a bucket with a single class
    folds[0].table["gbt"]["75-100"]["roc_auc"] = math.nan
    summary = summarise(folds)
    comparison = [
        paired_bootstrap(folds, "mlp", "logistic", bucket=b, replicates=100) for b in ("all", "0-25")
    ]
    bt = Backtest(Recipe(members=2), folds, summary, comparison, 12.5)

    md = backtest_report.write_report(bt, tmp_path / "r", {"data": "synthetic"})
    text = md.read_text()
    worst = summary["mlp"]["all"]["roc_auc"]["worst_season"]
    assert f"**{worst}** (MLP's worst)" in text
    assert text.count("(MLP's worst)") == 1
    assert "| all | " in text  # the comparison table
    assert "- **data**: synthetic" in text
    document = json.loads((tmp_path / "r" / "backtest.json").read_text())  # strict JSON: nan -> null
    assert document["summary"]["gbt"]["75-100"]["roc_auc"]["mean"] is None
    assert document["context"] == {"data": "synthetic"}

    table = backtest_report.console_table(bt)
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[2:6]] == list(MODEL_ORDER)
    assert f"{summary['mlp']['all']['roc_auc']['mean']:.4f}" in lines[2]
    assert "mlp - logistic AUC (0-25)" in table
