"""Promotion's parts without a model server: the models.config label writer (only the label's
value changes; atomic and durable replacement), the bounded promotion history on local storage,
the automatic policy's rules and the ``[promotion]`` config."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scorebeater.config import Config, LocalStorageConfig, PromotionConfig, StorageConfig, parse_config
from scorebeater.errors import ConfigError
from scorebeater.modelserver.modelsconfig import parse_models_config, set_version_label
from scorebeater.promotion.labels import move_label, read_labels
from scorebeater.promotion.policy import judge
from scorebeater.promotion.promoter import models_config_path
from scorebeater.promotion.records import CHECKPOINT, PromotionLog, PromotionRecord
from scorebeater.stages.handoff import ShadowComparison
from scorebeater.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
REPO_CONFIG = (ROOT / "tfserving/models.config").read_text()


def _labels(text: str, model: str = "score_beater") -> dict[str, int]:
    return dict(next(m for m in parse_models_config(text) if m.name == model).labels)


# --- the writer -------------------------------------------------------------------------------


def test_moving_the_repos_stable_label_changes_only_its_value() -> None:
    new, previous = set_version_label(REPO_CONFIG, model="score_beater", label="stable", version=2)
    assert previous == 1
    assert _labels(new) == {"stable": 2}
    assert new == REPO_CONFIG.replace(
        "version_labels { key: 'stable' value: 1 }", "version_labels { key: 'stable' value: 2 }"
    )


def test_a_missing_label_is_added_as_the_models_last_field_on_its_own_line() -> None:
    new, previous = set_version_label(REPO_CONFIG, model="score_beater", label="canary", version=2)
    assert previous is None
    assert _labels(new) == {"stable": 1, "canary": 2}
    assert (
        "    version_labels { key: 'stable' value: 1 }\n    version_labels { key: 'canary' value: 2 }\n  }\n}"
        in new
    )
    assert new.startswith(REPO_CONFIG.split("model_config_list")[0])  # the comments are kept


_OTHER = "config { name: 'other' base_path: '/o' version_labels { key: 'stable' value: 1 } }"
_MINE = "config { name: 'score_beater' base_path: '/m' version_labels { key: 'stable' value: %d } }"
_COMMENTED = "model_config_list { config { name: 'score_beater' base_path: '/m'  # key: 'stable' value: 1\n"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "model_config_list { config { name: 'score_beater' base_path: '/m' } }",
            (
                "model_config_list { config { name: 'score_beater' base_path: '/m' "
                "version_labels { key: 'stable' value: 3 } } }"
            ),
        ),
        (
            (
                'model_config_list {\n  config {\n    name: "score_beater", base_path: "/m"\n'
                '    version_labels < key: "stable", value: 1 >  # was 1\n  }\n}\n'
            ),
            (
                'model_config_list {\n  config {\n    name: "score_beater", base_path: "/m"\n'
                '    version_labels < key: "stable", value: 3 >  # was 1\n  }\n}\n'
            ),
        ),
        # two models: only score_beater's label moves, the other's same-named label stays
        (
            f"model_config_list {{\n {_OTHER}\n {_MINE % 1}\n}}\n",
            f"model_config_list {{\n {_OTHER}\n {_MINE % 3}\n}}\n",
        ),
        # a label key in a comment or in another label is not the label
        (
            _COMMENTED + "  version_labels { key: 'stable2' value: 1 }\n} }",
            (
                _COMMENTED + "  version_labels { key: 'stable2' value: 1 }\n"
                "  version_labels { key: 'stable' value: 3 }\n} }"
            ),
        ),
    ],
)
def test_layouts_quotes_and_comments_are_kept(text: str, want: str) -> None:
    new, _ = set_version_label(text, model="score_beater", label="stable", version=3)
    assert new == want
    assert _labels(new)["stable"] == 3


def test_setting_a_label_to_its_version_is_a_no_op() -> None:
    new, previous = set_version_label(REPO_CONFIG, model="score_beater", label="stable", version=1)
    assert (new, previous) == (REPO_CONFIG, 1)


@pytest.mark.parametrize("label", ["", "st-able", "a.b", "a/b", "stable ", "ünï"])
def test_labels_tf_serving_rejects_are_refused(label: str) -> None:
    with pytest.raises(ConfigError, match="A-Za-z0-9_"):
        set_version_label(REPO_CONFIG, model="score_beater", label=label, version=2)


def test_an_unknown_model_or_an_invalid_file_is_refused() -> None:
    with pytest.raises(ConfigError, match="declares no model 'nope'"):
        set_version_label(REPO_CONFIG, model="nope", label="stable", version=2)
    with pytest.raises(ConfigError, match="line 1"):
        set_version_label("model_config_list { config {", model="score_beater", label="stable", version=2)


# --- the file ---------------------------------------------------------------------------------


@pytest.fixture(name="config_file")
def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.config"
    path.write_text(REPO_CONFIG)
    path.chmod(0o640)
    return path


def test_move_label_rewrites_the_file_and_keeps_its_mode(config_file: Path) -> None:
    assert move_label(config_file, model="score_beater", label="stable", version=2) == 1
    assert read_labels(config_file, "score_beater") == {"stable": 2}
    assert config_file.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["models.config"]


def test_a_no_op_move_does_not_touch_the_file(config_file: Path) -> None:
    before = config_file.stat().st_mtime_ns
    os.utime(config_file, ns=(before - 10**9, before - 10**9))
    assert move_label(config_file, model="score_beater", label="stable", version=1) == 1
    assert config_file.stat().st_mtime_ns == before - 10**9


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if failing == "fsync":
        monkeypatch.setattr(os, "fsync", boom)
    else:
        monkeypatch.setattr(Path, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        move_label(config_file, model="score_beater", label="stable", version=2)
    assert config_file.read_text() == REPO_CONFIG
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["models.config"]


def test_readers_always_see_a_whole_valid_file_while_the_label_flips(config_file: Path) -> None:
    stop = threading.Event()
    seen: set[int] = set()
    failures: list[str] = []

    def read_forever() -> None:
        while not stop.is_set():
            try:
                seen.add(read_labels(config_file, "score_beater")["stable"])
            except ConfigError as exc:  # a torn or empty file
                failures.append(str(exc))

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for i in range(300):
            move_label(config_file, model="score_beater", label="stable", version=1 + i % 2 + (i % 7 == 0))
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert seen <= {1, 2, 3}
    assert len(seen) > 1


def test_the_file_promotions_rewrite_comes_from_tfserving_else_the_stand_in() -> None:
    cfg = Config()
    assert models_config_path(cfg) is None
    cfg = replace(cfg, model_server=replace(cfg.model_server, models_config=Path("a.config")))
    assert models_config_path(cfg) == Path("a.config")
    cfg = replace(cfg, tfserving=replace(cfg.tfserving, models_config=Path("b.config")))
    assert models_config_path(cfg) == Path("b.config")


# --- the history ------------------------------------------------------------------------------


def _record(to: int, *, by: str = "ops") -> PromotionRecord:
    return PromotionRecord(
        label="stable",
        from_version=to - 1,
        to_version=to,
        by=by,
        trigger="operator",
        at=datetime(2026, 1, 1, tzinfo=UTC),
        reason=f"to {to}",
        metrics={"champion": {"roc_auc": float("nan")}},
    )


async def test_the_history_is_newest_first_bounded_and_survives_a_reopen(tmp_path: Path) -> None:
    cfg = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    async with open_storage(cfg) as storage:
        history = PromotionLog(storage, max_records=5)
        assert await history.records() == []
        for to in range(1, 9):
            await history.append(_record(to))
    async with open_storage(cfg) as storage:
        records = await PromotionLog(storage).records()
        assert [r.to_version for r in records] == [8, 7, 6, 5, 4]
        assert records[0].metrics == {"champion": {"roc_auc": None}}  # NaN is not JSON
        assert records[0].at == datetime(2026, 1, 1, tzinfo=UTC)
        assert [r.to_version for r in await PromotionLog(storage).records(limit=2)] == [8, 7]
        assert await storage.get_checkpoint(CHECKPOINT) is not None


async def test_concurrent_appends_in_one_process_lose_nothing(tmp_path: Path) -> None:
    import asyncio

    cfg = StorageConfig(backend="local", local=LocalStorageConfig(root=tmp_path / "store"))
    async with open_storage(cfg) as storage:
        history = PromotionLog(storage)
        await asyncio.gather(*(history.append(_record(to)) for to in range(1, 31)))
        assert sorted(r.to_version for r in await history.records()) == list(range(1, 31))


# --- the policy -------------------------------------------------------------------------------


def _comparison(
    *,
    rows: int = 2500,
    champ_auc: float = 0.80,
    chall_auc: float = 0.81,
    champ_ece: float = 0.02,
    chall_ece: float = 0.02,
) -> ShadowComparison:
    return ShadowComparison(
        champion_version=1,
        challenger_version=2,
        labelled_rows=rows,
        champion={"roc_auc": champ_auc, "ece": champ_ece, "brier": 0.2},
        challenger={"roc_auc": chall_auc, "ece": chall_ece, "brier": 0.19},
        flip_rate=0.05,
        mean_abs_diff=0.03,
        computed_at=1.7e9,
    )


POLICY = PromotionConfig(auto=True, min_labelled_rows=2000, min_auc_gain=0.002, max_ece_increase=0.0)


@pytest.mark.parametrize(
    ("comparison", "promote", "says"),
    [
        (_comparison(), True, "AUC gain +0.0100 >= +0.0020"),
        (_comparison(chall_auc=0.802), True, ">= +0.0020"),  # exactly the margin passes
        (_comparison(chall_auc=0.8019), False, "AUC gain +0.0019 < +0.0020"),
        (_comparison(rows=1999), False, "labelled rows 1999 < 2000"),
        (_comparison(chall_ece=0.0201), False, "ECE increase +0.0001 > +0.0000"),
        (_comparison(chall_ece=0.01), True, "ECE increase -0.0100 <= +0.0000"),
        (_comparison(chall_auc=float("nan")), False, "ROC AUC is not defined"),
        (None, False, "no champion-versus-challenger comparison yet"),
        (replace(_comparison(), challenger_version=1), False, "the challenger is the champion"),
    ],
)
def test_the_policy_promotes_only_when_every_rule_holds(
    comparison: ShadowComparison | None, promote: bool, says: str
) -> None:
    decision = judge(comparison, POLICY)
    assert decision.promote is promote
    assert any(says in reason for reason in decision.reasons), decision.reasons


# --- config -----------------------------------------------------------------------------------


def test_promotion_config_defaults_ranges_and_label_rule() -> None:
    cfg = parse_config({})
    assert cfg.promotion == PromotionConfig()
    assert cfg.tfserving.models_config is None
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "promotion": {"label": "st-able", "min_labelled_rows": 0, "min_auc_gain": 2.0},
                "tfserving": {"models_config": "x.config"},
            }
        )
    problems = "\n".join(info.value.problems)
    assert "promotion.label" in problems
    assert "promotion.min_labelled_rows" in problems
    assert "promotion.min_auc_gain" in problems
    ok = parse_config({"tfserving": {"models_config": ""}, "promotion": {"auto": True, "label": "prod_2"}})
    assert ok.tfserving.models_config is None
    assert ok.promotion.label == "prod_2"
