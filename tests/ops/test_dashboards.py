"""The provisioned Grafana dashboards, checked statically.

Grafana does not run here, so each dashboard is checked for what Grafana needs (unique ids and
uids, the provisioned data source, defined variables, a layout on the 24-column grid) and each
query for what Prometheus needs: promtool has no command that parses a bare expression, so every
query (Grafana variables replaced as Grafana would) is written as a recording rule into a
temporary rules file and checked with ``promtool check rules``. Every metric a panel or an alert
selects must be one the daemon's ``Metrics`` exports or one of TF Serving's documented series.
Whether each query returns data from a real daemon is tests/ops/test_prometheus_live.py's job.
"""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.ops import (
    DATASOURCE_UID,
    GRAFANA_DIR,
    AlertRule,
    PanelQuery,
    alert_rules,
    binary,
    daemon_metric_names,
    dashboard_variables,
    grafana_substitute,
    iter_panels,
    known_metric_names,
    load_dashboards,
    metric_names,
    panel_queries,
    selectors,
)

if TYPE_CHECKING:
    from pathlib import Path

DASHBOARDS = load_dashboards()
QUERIES = panel_queries()
_GRAFANA_BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__all"}


def test_the_four_dashboards_are_provisioned() -> None:
    assert set(DASHBOARDS) == {"model-quality", "pipeline", "serving", "data"}
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids))
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(titles) == len(set(titles))


def test_provisioning_points_at_the_dashboards_and_the_data_source() -> None:
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/scorebeater.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert (
        provider["options"]["path"] == "/etc/grafana/dashboards/scorebeater"
    )  # docker-compose.yml mounts it


@pytest.mark.parametrize("stem", sorted(DASHBOARDS))
def test_dashboard_structure(stem: str) -> None:
    dashboard = DASHBOARDS[stem]
    ids = [p["id"] for p in dashboard["panels"]] + [
        child["id"] for p in dashboard["panels"] if p.get("type") == "row" for child in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), f"{stem}: duplicate panel ids"
    defined = set(dashboard_variables(dashboard)) | _GRAFANA_BUILTIN_VARS
    for panel in iter_panels(dashboard):
        where = f"{stem}: panel {panel['id']} {panel['title']!r}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0, where
        assert grid["x"] + grid["w"] <= 24, where
        assert grid["h"] > 0, where
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        assert panel.get("description"), f"{where}: say what the panel shows"
        assert panel["targets"], f"{where}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, where
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= defined, f"{where}: undefined variable(s) {used - defined}"
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DATASOURCE_UID
            assert (
                metric_names(variable["definition"].removeprefix("label_values(").split(",")[0])
                <= known_metric_names()
            )


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:{q.dashboard.replace('-', '_')}:panel{q.panel_id}_{q.ref_id}", "expr": q.expr}
        for q in QUERIES
    ]
    rules_file = tmp_path / "dashboard_queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


@pytest.mark.parametrize("query", QUERIES, ids=[q.test_id for q in QUERIES])
def test_panel_query_uses_only_exported_metrics(query: PanelQuery) -> None:
    names = metric_names(query.expr)
    assert names, f"{query.test_id} {query.expr!r}: selects no metric"
    unknown = names - known_metric_names()
    assert not unknown, (
        f"{query.test_id} ({query.panel_title}): {sorted(unknown)} not exported by the daemon or TF Serving"
    )


@pytest.mark.parametrize("rule", alert_rules(), ids=[r.name for r in alert_rules()])
def test_alert_uses_only_exported_metrics(rule: AlertRule) -> None:
    unknown = metric_names(rule.expr) - known_metric_names()
    assert not unknown, f"{rule.name}: {sorted(unknown)} not exported by the daemon or TF Serving"


def test_each_dashboard_shows_its_required_metrics() -> None:
    """Quality (per season-progress bucket), pipeline freshness, serving and rejected records:
    each dashboard's queries select the metrics it exists to show."""

    def used(stem: str) -> set[str]:
        return {name for q in QUERIES if q.dashboard == stem for name in metric_names(q.expr)}

    quality = used("model-quality")
    for name in (
        "scorebeater_eval_roc_auc",
        "scorebeater_eval_brier_score",
        "scorebeater_eval_expected_calibration_error",
        "scorebeater_eval_calibration_bin_predicted_ratio",
        "scorebeater_eval_calibration_bin_observed_ratio",
        "scorebeater_label_coverage_ratio",
    ):
        assert name in quality, name
    # issue 13: drift, estimated beside realized, the shadow comparison, label coverage vs games
    for name in (
        "scorebeater_drift_psi",
        "scorebeater_estimated_roc_auc",
        "scorebeater_estimated_accuracy",
        "scorebeater_shadow_eval_roc_auc",
        "scorebeater_shadow_auc_gain",
        "scorebeater_shadow_flip_ratio",
        "scorebeater_games_processed_total",
        "scorebeater_outcomes_stored",
    ):
        assert name in quality, name
    beside = [
        p
        for p in iter_panels(DASHBOARDS["model-quality"])
        if {"scorebeater_estimated_roc_auc", "scorebeater_eval_roc_auc"}
        <= {n for t in p.get("targets", []) for n in metric_names(t["expr"])}
    ]
    assert beside, "no panel shows the estimated AUC beside the realized one"
    by_bucket = [q for q in QUERIES if q.dashboard == "model-quality" and 'bucket=~"$bucket"' in q.raw]
    assert by_bucket, "no quality panel is broken down by season-progress bucket"
    pipeline = used("pipeline")
    for name in (
        "scorebeater_stage_runs_total",
        "scorebeater_stage_duration_seconds_bucket",
        "scorebeater_stage_last_success_timestamp_seconds",
        "scorebeater_features_last_materialized_timestamp_seconds",
        "scorebeater_watermark_game_seq",
        "scorebeater_watermark_timestamp_seconds",
    ):
        assert name in pipeline, name
    assert any("time() - " in q.raw for q in QUERIES if q.dashboard == "pipeline"), (
        "freshness as time() - timestamp"
    )
    serving = used("serving")
    for name in (
        ":tensorflow:serving:request_count",
        ":tensorflow:serving:request_latency_bucket",
        "scorebeater_tfserving_requests_total",
        "scorebeater_tfserving_request_duration_seconds_bucket",
        "scorebeater_prediction_cache_hits_total",
        "scorebeater_prediction_cache_requests_total",
    ):
        assert name in serving, name
    assert "scorebeater_records_rejected_total" in used("data")
    assert any("by (kind, reason)" in q.raw for q in QUERIES if q.dashboard == "data")


def test_every_daemon_family_is_shown_somewhere() -> None:
    """A metric the daemon exports but no panel or alert reads is invisible: list it here or use it."""
    used = {name for q in QUERIES for name in metric_names(q.expr)}
    used |= {name for r in alert_rules() for name in metric_names(r.expr)}
    families = {re.sub(r"_(bucket|sum|count|created|total)$", "", n) for n in daemon_metric_names()}
    shown = {re.sub(r"_(bucket|sum|count|created|total)$", "", n) for n in used}
    assert not families - shown, f"exported but on no dashboard or alert: {sorted(families - shown)}"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum by (le, API) (rate(:tf:lat_bucket[1m]))) / 1e6", {":tf:lat_bucket"}),
        ('(sum(rate(c_total{code!~"2.."}[1m])) or vector(0)) / sum(rate(c_total[1m]))', {"c_total"}),
        ("time() - (g > 0)", {"g"}),
        ("a and on (model_version, bucket) b >= 200 unless ignoring(x) c offset 5m", {"a", "b", "c"}),
        ('{__name__="x:y", job="j"}', {"x:y"}),
        ('label_replace(a, "dst", "$1", "src", "(.*)")', {"a"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selector_extraction_keeps_matchers() -> None:
    expr = 'x{a="1"} / x and on (b) up{job="tfserving"} == 0'
    assert selectors(expr) == ['up{job="tfserving"}', 'x{a="1"}', "x"]


def test_grafana_substitution() -> None:
    expr = 'rate(m{v=~"$model_version"}[$__rate_interval]) + increase(m[$__range]) + ${bucket}'
    assert grafana_substitute(expr, {"model_version": ".*", "bucket": "1"}) == (
        'rate(m{v=~".*"}[1m]) + increase(m[5m]) + 1'
    )
