"""Checks of the deployment files (Dockerfile, compose stack, Prometheus, Grafana) that run here.

No Docker engine runs on our machines, so each file is checked by what can run: Debian's
``promtool`` and ``prometheus``, ``hadolint`` from PyPI, PyYAML, and the image's own commands run
from the virtualenv. This module holds what several of those tests share: where the files are,
how to read every query out of the dashboards and alert rules, and which metric names exist.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prometheus_client import CollectorRegistry

from scorebeater.metrics import Metrics
from tests.conftest import service_unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
PROMETHEUS_DIR = REPO / "config" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA_DIR = REPO / "config" / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

DATASOURCE_UID = "scorebeater-prometheus"

TFSERVING_METRICS = frozenset(
    {
        ":tensorflow:serving:request_count",
        ":tensorflow:serving:request_latency_bucket",
        ":tensorflow:serving:request_latency_sum",
        ":tensorflow:serving:request_latency_count",
    }
)
"""TF Serving's own series (the official image and the embedded stand-in export both)."""

PROMETHEUS_SYNTHETIC = frozenset({"up"})
"""Series Prometheus itself writes for every scrape target."""

# Grafana's built-in variables, replaced by what Grafana would send for a short time range. The
# dashboards' own variables are replaced by their "All" value (allValue ".*").
GRAFANA_BUILTINS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
}


def binary(name: str) -> str:
    """Path of a required executable (promtool, prometheus, hadolint); fails in CI if missing."""
    venv = VENV_BIN / name
    if venv.is_file():
        return str(venv)
    found = shutil.which(name)
    if found is None:
        service_unavailable(name, "not on PATH (scripts/install-services.sh installs it)")
        raise AssertionError  # unreachable: service_unavailable fails or skips
    return found


def daemon_metric_names() -> frozenset[str]:
    """Every series name the daemon's ``Metrics`` can export, with the suffixes each type adds."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        base = family.name
        if family.type == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif family.type == "histogram":
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"}
        elif family.type == "summary":
            names |= {base, f"{base}_sum", f"{base}_count", f"{base}_created"}
        elif family.type == "info":
            names.add(f"{base}_info")
        else:
            names.add(base)
    return frozenset(names)


def known_metric_names() -> frozenset[str]:
    """Names a dashboard or alert may use: the daemon's, TF Serving's documented ones, ``up``."""
    return daemon_metric_names() | TFSERVING_METRICS | PROMETHEUS_SYNTHETIC


# --- PromQL ------------------------------------------------------------------------------------

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "inf",
        "nan",
        "start",
        "end",
        "atan2",
    }
)
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# Possessive: a name followed by "(" is a function, and must not match as a shorter prefix.
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*+)(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and durations removed)."""
    names = {a or b for a, b in _NAME_MATCHER.findall(expr)}
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names |= {m for m in _IDENT.findall(text) if m not in _KEYWORDS}
    return names


def selectors(expr: str) -> list[str]:
    """The instant-vector selectors of an expression (``name{matchers}``), for checking each alone."""
    out: list[str] = []
    masked = _STRING.sub(lambda m: "\0" * len(m.group()), expr)
    for name in sorted(metric_names(expr)):
        pattern = re.compile(rf"(?<![A-Za-z0-9_:.]){re.escape(name)}(?![A-Za-z0-9_:])\s*(\{{[^}}]*\}})?")
        for match in pattern.finditer(masked):
            matchers = expr[match.start(1) : match.end(1)] if match.group(1) else ""
            selector = f"{name}{matchers}"
            if selector not in out:
                out.append(selector)
    return out


def grafana_substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana's variables as Grafana would before sending the query to Prometheus."""
    for var, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(var, value)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


# --- dashboards and rules ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    panel_title: str
    ref_id: str
    raw: str
    expr: str
    """``raw`` with Grafana's variables replaced."""

    @property
    def test_id(self) -> str:
        return f"{self.dashboard}#{self.panel_id}{self.ref_id}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every provisioned dashboard, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable of a dashboard with its "All" value."""
    return {v["name"]: v.get("allValue") or ".*" for v in dashboard.get("templating", {}).get("list", [])}


def panel_queries() -> list[PanelQuery]:
    """Every Prometheus query of every panel, in dashboard order."""
    out: list[PanelQuery] = []
    for stem, dashboard in load_dashboards().items():
        variables = dashboard_variables(dashboard)
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                raw = target["expr"]
                out.append(
                    PanelQuery(
                        stem,
                        panel["id"],
                        panel["title"],
                        target["refId"],
                        raw,
                        grafana_substitute(raw, variables),
                    )
                )
    return out


@dataclass(frozen=True, slots=True)
class AlertRule:
    group: str
    name: str
    expr: str
    rule: dict[str, Any]


def alert_rules() -> list[AlertRule]:
    """Every alerting rule of config/prometheus/alerts.yml."""
    doc = yaml.safe_load(ALERTS.read_text())
    return [
        AlertRule(group["name"], rule["alert"], rule["expr"], rule)
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
