"""The Prometheus config and alert rules, checked by Debian's promtool.

``promtool check config`` also loads the rule files the config names; ``promtool test rules``
runs the unit tests in alerts_test.yml, which must hold a firing and a quiet case for every
alert.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.ops import (
    ALERTS,
    ALERTS_TEST,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    alert_rules,
    binary,
    metric_names,
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_is_valid_and_loads_the_rules() -> None:
    result = _promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert f"{len(alert_rules())} rules found" in result.stdout


def test_rules_are_valid() -> None:
    result = _promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = _promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _cases() -> dict[str, dict[str, int]]:
    """Per alert: how many evaluations expect it firing and how many expect it quiet."""
    doc: dict[str, Any] = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    counts: dict[str, dict[str, int]] = {}
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "firing" if case.get("exp_alerts") else "quiet"
            counts.setdefault(case["alertname"], {"firing": 0, "quiet": 0})[kind] += 1
    return counts


@pytest.mark.parametrize("alert", [r.name for r in alert_rules()])
def test_every_alert_has_a_firing_and_a_quiet_case(alert: str) -> None:
    counts = _cases().get(alert, {"firing": 0, "quiet": 0})
    assert counts["firing"] >= 1, f"{alert}: no unit test expects it to fire"
    assert counts["quiet"] >= 1, f"{alert}: no unit test expects it to stay quiet"


def test_unit_tests_name_only_existing_alerts() -> None:
    assert set(_cases()) <= {r.name for r in alert_rules()}


def test_alerts_are_routable_and_explained() -> None:
    names = [r.name for r in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in alert_rules():
        assert rule.rule.get("labels", {}).get("severity") in {"page", "ticket"}, rule.name
        annotations = rule.rule.get("annotations", {})
        assert annotations.get("summary"), rule.name
        assert annotations.get("description"), rule.name
        assert rule.rule.get("for"), f"{rule.name}: fires on one evaluation; give it a `for`"


def test_alerts_cover_staleness_quality_errors_and_model_availability() -> None:
    """An alert watches each of: a stage without success, stale features, low realized quality,
    stage and TF Serving errors, the model not AVAILABLE."""
    by_metric: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule.expr):
            by_metric.setdefault(name, set()).add(rule.name)
    assert by_metric["scorebeater_stage_last_success_timestamp_seconds"]
    assert by_metric["scorebeater_features_last_materialized_timestamp_seconds"]
    assert by_metric["scorebeater_eval_roc_auc"]
    assert by_metric["scorebeater_eval_brier_score"]
    assert by_metric["scorebeater_eval_expected_calibration_error"]
    assert by_metric["scorebeater_stage_runs_total"]
    assert by_metric["scorebeater_tfserving_requests_total"]
    assert by_metric[":tensorflow:serving:request_count"]
    assert by_metric["scorebeater_model_available"]
    # issue 13: input drift, outcomes that stop while games are played, an unpromoted challenger
    assert by_metric["scorebeater_drift_psi"]
    assert by_metric["scorebeater_outcomes_stored"] & by_metric["scorebeater_games_processed_total"]
    assert by_metric["scorebeater_shadow_auc_gain"] & by_metric["scorebeater_model_role_version"]


def test_scrape_config_matches_the_alerts_and_tf_serving() -> None:
    doc = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert jobs["scorebeater"].get("metrics_path", "/metrics") == "/metrics"
    # Every replica of docker-compose.yml is scraped (the standby too: it serves /metrics).
    assert jobs["scorebeater"]["static_configs"][0]["targets"] == ["scorebeater-1:8080", "scorebeater-2:8080"]
    # TF Serving serves Prometheus on its REST port at the path of tfserving/monitoring.config.
    assert jobs["tfserving"]["metrics_path"] == "/monitoring/prometheus/metrics"
    assert jobs["tfserving"]["static_configs"][0]["targets"] == ["tfserving-1:8501", "tfserving-2:8501"]
    for rule in alert_rules():
        for job in re.findall(r'up\{job="([^"]+)"\}', rule.expr):
            assert job in jobs, f"{rule.name} watches job {job!r}, which nothing scrapes"
