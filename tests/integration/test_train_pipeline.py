"""Train -> gate -> publish, end to end on real (subsampled) history, and `evaluate --json`.

Scenario (one temp model directory), with 2012-2014 rows and season-start rows of 2010-2014:
1. the first candidate has no champion: its gate fold (fitted on 2012, early-stopped on
   2013, judged on 2014) passes, and the refit on every season is published as version 1,
   with card and blessing;
2. a second, equally good candidate passes the gate: version 2 (the champion, refitted on
   2014, is represented by its own gate fold's metrics: never judged in-sample);
3. a gate demanding an impossible improvement rejects the third: nothing published, the
   decision is recorded under report_dir;
4. with --force the gate's decision says publish, recorded as forced;
5. `scorebeater evaluate --seasons 2014 --json` prints the model/bucket/metric table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorebeater import cli
from scorebeater.config import Config, parse_config
from scorebeater.data import load_history
from scorebeater.inputs import INPUT_NAMES
from scorebeater.training.dataset import TrainingSet, build_long_history, build_training_set

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEASONS = [2012, 2013, 2014]


@pytest.fixture(name="rows", scope="module")
def _rows() -> TrainingSet:
    return build_training_set(load_history(), SEASONS).subsample(0.08, seed=1)


@pytest.fixture(name="long_rows", scope="module")
def _long_rows() -> TrainingSet:
    return build_long_history(load_history(), [2010, 2011, 2012, 2013, 2014])


def _config(tmp_path: Path, **gate: Any) -> Config:
    table = {
        "model": {"base_path": str(tmp_path / "model" / "score_beater")},
        "training": {
            "epochs": 2,
            "ensemble_members": 2,
            "long_history_weight": 5.0,
            "batch_size": 256,
            "hidden_units": [8],
            "learning_rate": 0.01,
            "report_dir": str(tmp_path / "reports"),
            "gate": {"max_ece": 1.0, **gate},
        },
    }
    return parse_config(table, env={})


def test_train_gate_publish_and_evaluate(
    tmp_path: Path, rows: TrainingSet, long_rows: TrainingSet, capsys: pytest.CaptureFixture[str]
) -> None:
    from scorebeater.training.evaluate import ServedModel
    from scorebeater.training.export import versions
    from scorebeater.training.pipeline import run_training

    cfg = _config(tmp_path)
    base = cfg.model.base_path

    first = run_training(cfg, rows, long_rows, source="test", stored_seasons=[2014])
    assert first.version == 1
    assert versions(base) == [1]
    card = json.loads((base / "1" / "assets.extra" / "model_card.json").read_text())
    blessing = json.loads((base / "1" / "assets.extra" / "blessing.json").read_text())
    assert card["version"] == 1
    assert card["training_seasons"] == SEASONS  # the published model is refitted on everything
    assert card["long_history_seasons"] == [2010, 2014]
    assert card["seasons"] == [
        {"season": s, "source": "storage" if s == 2014 else "files", "rows": int((rows.season == s).sum())}
        for s in SEASONS
    ]
    fold = card["gate_fold"]
    assert (fold["train_seasons"], fold["validation_seasons"], fold["eval_seasons"]) == (
        [2012],
        [2013],
        [2014],
    )
    assert card["epochs_per_member"] == fold["best_epochs"]
    assert len(fold["best_epochs"]) == 2
    assert card["recipe"]["members"] == 2
    assert [i["name"] for i in card["inputs"]] == list(INPUT_NAMES)
    assert set(fold["metrics"]) == {"mlp", "pace", "logistic", "gbt"}
    assert blessing["verdict"] == "BLESSED"
    # the drift reference: the refit's per-game rows (no long-history rows), scored by the artifact
    from scorebeater.drift import read_reference

    reference = read_reference(base / "1")
    assert reference is not None
    assert reference.rows == len(rows)
    assert (reference.meta["model_version"], reference.meta["added_after_export"]) == (1, False)
    assert reference.meta["seasons"] == SEASONS
    assert blessing["champion"] is None
    assert not [p for p in base.iterdir() if p.name.startswith(".tmp-")]

    # the exported signature, as a TF Serving client sees it in /metadata
    served = ServedModel(base / "1")
    sig = served.signature()
    assert sorted(sig["inputs"]) == sorted(INPUT_NAMES)
    assert all(v == ("float32", [None]) for v in sig["inputs"].values())
    assert sig["outputs"] == {"probability": ("float32", [None, 1])}

    second = run_training(cfg, rows, long_rows, source="test", compare_baselines=False)
    assert second.version == 2
    assert second.decision["champion"]["version"] == 1
    # version 1 was refitted on 2014: the gate uses what its fold (fitted without 2014) scored
    assert second.decision["champion"]["source"] == "champion's gate fold"
    assert second.decision["champion"]["metrics"] == fold["metrics"]["mlp"]
    assert second.decision["verdict"] == "BLESSED"

    strict = _config(tmp_path, max_auc_drop=-1.0)
    third = run_training(strict, rows, long_rows, source="test", compare_baselines=False)
    assert third.version is None
    assert third.decision["verdict"] == "NOT_BLESSED"
    assert any("roc_auc drops" in r for r in third.decision["reasons"])
    assert versions(base) == [1, 2]
    assert third.rejected_record is not None
    recorded = json.loads(third.rejected_record.read_text())
    assert recorded["champion"]["version"] == 2
    assert recorded["candidate"]["metrics"]["all"]["n"] == int((rows.season == 2014).sum())

    # --force publishes a rejected candidate and says so (judged here on the real version-2 export)
    from scorebeater.training.gate import decide

    forced = decide(base / "2", base, rows.for_seasons([2014]), strict.training.gate, force=True)
    assert (forced.verdict, forced.publish, forced.forced) == ("NOT_BLESSED", True, True)

    # judged on 2013, which the champion was refitted on and has no fold record for: no blessing
    blind = decide(base / "1", base, rows.for_seasons([2013]), cfg.training.gate)
    assert (blind.verdict, blind.publish) == ("NOT_BLESSED", False)
    assert any("cannot be compared out of sample" in r for r in blind.reasons)

    config_file = tmp_path / "scorebeater.toml"
    config_file.write_text(
        f'[model]\nbase_path = "{base}"\n[training]\nreport_dir = "{tmp_path / "reports"}"\n'
    )
    capsys.readouterr()
    code = cli.main(
        [
            "evaluate",
            "--config",
            str(config_file),
            "--seasons",
            "2014",
            "--json",
            "--model-version",
            "1",
            "--report-dir",
            str(tmp_path / "report"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out.strip()
    table = json.loads(out)  # exactly one JSON object on stdout
    assert list(table) == ["mlp", "pace", "logistic", "gbt"]
    for buckets in table.values():
        assert list(buckets) == ["all", "0-25", "25-50", "50-75", "75-100"]
        for metrics in buckets.values():
            assert list(metrics) == ["roc_auc", "brier", "log_loss", "ece", "accuracy", "n"]
    assert table["mlp"]["all"]["n"] == sum(table["mlp"][b]["n"] for b in ("0-25", "25-50", "50-75", "75-100"))
    assert table["mlp"]["all"]["roc_auc"] > 0.8
    for name in ("evaluation.md", "reliability.png", "auc_by_progress.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert (tmp_path / "report" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_judges_against_the_champions_stored_predictions(
    tmp_path: Path, rows: TrainingSet, long_rows: TrainingSet
) -> None:
    """From storage, the champion is what it served: its stored predictions of the evaluation
    season, on exactly the rows it predicted (here every other row of 2014)."""
    import pyarrow as pa

    from scorebeater.training.pipeline import StoredPredictions, run_training

    cfg = _config(tmp_path)
    served = rows.for_seasons([2014])
    served = served.take(np.arange(0, len(served), 2))

    def stored(probability: np.ndarray) -> StoredPredictions:
        table = pa.table(
            {
                "player_id": pa.array(served.player_id, pa.int64()),
                "season": pa.array(served.season, pa.int32()),
                "as_of_seq": pa.array(served.as_of_seq, pa.int32()),
                "probability": pa.array(probability, pa.float64()),
            }
        )
        return StoredPredictions(version=7, seasons=[2014], predictions=table)

    summary = {"version": 7, "source": "stored_predictions", "rows": len(served)}
    # 1. a champion that served the truth itself: the candidate falls short of it
    perfect = stored(np.where(served.label, 0.99, 0.01))
    rejected = run_training(
        cfg, rows, long_rows, source="test", compare_baselines=False, champion_predictions=perfect
    )
    assert rejected.version is None
    champion = rejected.decision["champion"]
    assert {k: champion[k] for k in summary} == summary
    assert champion["metrics"]["all"]["n"] == len(served)
    assert champion["metrics"]["all"]["roc_auc"] == 1.0
    assert rejected.decision["rows"] == len(served)
    assert rejected.decision["candidate"]["metrics"]["all"]["n"] == len(served)  # the same rows
    assert any("roc_auc drops" in r for r in rejected.decision["reasons"])
    assert rejected.card["gate_fold"]["champion"] == summary
    # 2. one that served coin flips: the candidate is blessed and published; its card says
    #    how the champion was represented, and on how many rows
    coin = stored(np.full(len(served), 0.5))
    published = run_training(
        cfg, rows, long_rows, source="test", compare_baselines=True, champion_predictions=coin
    )
    assert published.version == 1
    assert published.decision["verdict"] == "BLESSED"
    card = json.loads((cfg.model.base_path / "1" / "assets.extra" / "model_card.json").read_text())
    assert card["gate_fold"]["champion"] == summary
    assert card["gate_fold"]["rows"] == len(served)
    assert card["gate_fold"]["metrics"]["mlp"]["all"]["n"] == len(served)
    assert card["gate_fold"]["metrics"]["gbt"]["all"]["n"] == len(served)  # baselines on them too
    assert card["training_seasons"] == SEASONS


def test_infra_check_rejects_a_directory_that_is_not_a_model(tmp_path: Path, rows: TrainingSet) -> None:
    from scorebeater.training.gate import decide

    cfg = _config(tmp_path)
    bogus = tmp_path / "model" / "score_beater" / ".tmp-bogus"
    bogus.mkdir(parents=True)
    decision = decide(bogus, cfg.model.base_path, rows.for_seasons([2014]), cfg.training.gate)
    assert decision.verdict == "NOT_BLESSED"
    assert not decision.publish
    assert decision.reasons[0].startswith("infra:")


def test_storage_training_set_goes_through_the_same_pipeline(tmp_path: Path, rows: TrainingSet) -> None:
    """A fake Storage (Protocol boundary) exports TRAINING_SCHEMA batches; training uses final rows."""
    import asyncio

    import pyarrow as pa

    from scorebeater.storage.base import TRAINING_SCHEMA
    from scorebeater.training.pipeline import training_set_from_storage

    n = len(rows)
    table = pa.Table.from_pydict(
        {
            "player_id": rows.player_id,
            "season": rows.season,
            "as_of_seq": rows.as_of_seq,
            "as_of_game_id": ["g"] * n,
            "as_of_time": np.zeros(n, "int64"),
            "player": ["p"] * n,
            "team": ["T"] * n,
            **{k: rows.inputs[k] for k in INPUT_NAMES},
            "feature_hash": ["h"] * n,
            "beat": rows.label,
            "resolution": np.where(np.arange(n) % 10 == 0, "early", "final"),
            "resolved_early_seq": pa.nulls(n, pa.int32()),
            "resolved_early_at": pa.nulls(n, TRAINING_SCHEMA.field("resolved_early_at").type),
        },
        schema=TRAINING_SCHEMA,
    )

    class FakeStorage:
        async def export_training_set(self, *, seasons: object = None) -> Any:
            for batch in table.to_batches(max_chunksize=5000):
                yield pa.Table.from_batches([batch])

    loaded = asyncio.run(training_set_from_storage(FakeStorage()))  # type: ignore[arg-type]
    assert len(loaded) == n - len(range(0, n, 10))
    assert loaded.seasons() == SEASONS
    np.testing.assert_array_equal(loaded.inputs["ftm"], rows.inputs["ftm"][np.arange(n) % 10 != 0])
