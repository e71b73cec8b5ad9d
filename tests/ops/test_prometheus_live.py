"""Every dashboard panel and every alert, proven against real scraped data.

Scenario:
1. Build a short season: the bundled real data with the last season's schedule cut to its first
   ``GAMES`` regular-season games (season totals, the ground truth, untouched), so the replay turns
   the season final within seconds.
2. Start the real daemon as the container would (``scorebeater run --config``) with the embedded
   replay Score API and TF Serving stand-in on free loopback ports, local storage in a temporary
   directory, and the newest model of model/score_beater (when the repository holds none, a model
   with the production signature exported by scorebeater.testing.savedmodel).
3. Start Debian's real ``prometheus`` with config/prometheus/prometheus.yml, its targets rewritten
   to those ports (scorebeater's admin port, the stand-in's /monitoring/prometheus/metrics), a
   one-second scrape interval, and config/prometheus/alerts.yml loaded.
4. Poll Prometheus (bounded) until every query has data, then check, one test per query: every
   panel query (Grafana variables replaced as Grafana would) returns data; every selector of every
   alert returns data and the alert expression evaluates; every metric name a panel or alert uses
   is one the scraped targets export; every alert rule is loaded and evaluates without error.

The learning loop's parts take part too: the replayed season's play-by-play FTM are halved (the
season totals, the ground truth, are not), the repository's two newest model versions are served
with the older one as the shadow challenger (``challenger_label = "canary"``), and the drift
alert's hold time is cut to nothing in the rules Prometheus loads here, so that
ScorebeaterInputDrift is seen firing for ``ftm`` on real scraped data (its promtool tests and
tests/ops/test_drift_alert.py check it with its real hold time).

Only ``scorebeater_records_rejected_total`` may have no series: it gains one only when a record is
rejected, and the replay serves clean data; queries over it alone must then still be backed by the
family's metadata in the scrape (see EVENT_ONLY).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.ops import (
    ALERTS,
    PROMETHEUS_CONFIG,
    REPO,
    VENV_BIN,
    AlertRule,
    PanelQuery,
    alert_rules,
    binary,
    metric_names,
    panel_queries,
    selectors,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(300)]

GAMES = 120
"""Regular-season games kept in the replayed season: about a week and a half of the schedule."""
REPLAY_SPEED = 4 * 86400.0
"""Four replay days per real second: the short season turns final in about three seconds."""
SETTLE_TIMEOUT_S = float(os.environ.get("SCOREBEATER_LIVE_TIMEOUT_S", "60"))
"""Bound on the wait for every query to have data, once Prometheus is up."""
EVENT_ONLY = frozenset({"scorebeater_records_rejected_total"})
"""Labelled counters with no series until their event happens (nothing is rejected from clean data)."""

QUERIES = panel_queries()
ALERTS_LIST = alert_rules()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def _wait(
    what: str,
    check: Any,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log else ""
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{tail}")
        if time.monotonic() > deadline:
            tail = log.read_text()[-4000:] if log else ""
            pytest.fail(f"{what}: not ready after {timeout:.0f} s\n{tail}")
        time.sleep(0.25)


# --- the short season ----------------------------------------------------------------------------


def _copy_filtered(source: Any, target: Path, keep: Any, transform: Any = None) -> int:
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8", newline="") as fin:
        reader = csv.DictReader(fin)
        assert reader.fieldnames is not None
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
        writer.writeheader()
        kept = 0
        for row in reader:
            if keep(row):
                writer.writerow(transform(row) if transform is not None else row)
                kept += 1
    with gzip.open(target, "wt", encoding="utf-8", newline="") as fout:
        fout.write(out.getvalue())
    return kept


def _short_season(directory: Path) -> int:
    """The bundled data with the last season cut to its first GAMES regular-season games, its
    play-by-play FTM halved."""
    from scorebeater.data import GAMES as GAMES_FILE
    from scorebeater.data import PLAYER_GAMES, SEASON_TOTALS, bundled_data_dir

    bundled = bundled_data_dir()
    directory.mkdir(parents=True)
    with bundled.joinpath(GAMES_FILE).open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fin:
        season = max(int(row["season"]) for row in csv.DictReader(fin))

    def in_short_season(row: dict[str, str]) -> bool:
        return (
            int(row["season"]) == season and row["season_type"] == "regular" and int(row["game_seq"]) <= GAMES
        )

    _copy_filtered(bundled.joinpath(SEASON_TOTALS), directory / SEASON_TOTALS, lambda _row: True)
    assert _copy_filtered(bundled.joinpath(GAMES_FILE), directory / GAMES_FILE, in_short_season) == GAMES
    plays = bundled.joinpath(PLAYER_GAMES)
    halved = _copy_filtered(plays, directory / PLAYER_GAMES, in_short_season, _halve_ftm)
    assert halved > 0
    return season


def _halve_ftm(row: dict[str, str]) -> dict[str, str]:
    """The deliberate input shift: every play-by-play FTM halved (rounded down)."""
    return {**row, "ftm": str(int(row["ftm"]) // 2)} if row["ftm"] else row


def _models_config(base_path: Path, path: Path) -> bool:
    """A models.config serving the two newest versions, the older labelled ``canary`` (the
    shadow challenger); False (no file) when there is only one version."""
    versions = sorted(int(p.name) for p in base_path.iterdir() if p.name.isdigit())
    if len(versions) < 2:
        return False
    path.write_text(
        "model_config_list {\n  config {\n    name: 'score_beater'\n"
        f"    base_path: '{base_path}'\n    model_platform: 'tensorflow'\n"
        "    model_version_policy { latest { num_versions: 2 } }\n"
        f"    version_labels {{ key: 'stable' value: {versions[-1]} }}\n"
        f"    version_labels {{ key: 'canary' value: {versions[-2]} }}\n  }}\n}}\n"
    )
    return True


def _model(base_path: Path, work: Path) -> None:
    """model/score_beater's two newest versions, copied in; when the repository has none, a model with
    the production signature (scorebeater.testing.savedmodel, untrained weights: the checks here are about
    metrics and queries, not quality; `scorebeater train` takes minutes)."""
    repo_models = REPO / "model" / "score_beater"
    versions = (
        sorted(
            (p for p in repo_models.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        if repo_models.is_dir()
        else []
    )
    if versions:
        for version in versions[-2:]:
            shutil.copytree(version, base_path / version.name)
        return
    code = "import sys\nfrom pathlib import Path\n"
    code += "from scorebeater.testing.savedmodel import export_score_model\n"
    code += "export_score_model(Path(sys.argv[1]))\n"
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code, str(base_path / "1")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"exporting a model for the live test failed:\n{result.stderr[-4000:]}"


# --- the stack -----------------------------------------------------------------------------------


@dataclass
class Live:
    prometheus: str
    admin: str
    admin_token: str
    jobs: dict[str, str]
    """Prometheus job -> the loopback target it scrapes."""

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            body = _get_json(url)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr!r}: {exc.code} {exc.read().decode(errors='replace')}") from exc
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def run_stage(self, stage: str) -> None:
        """Ask the daemon for one run of a stage, as an operator would (POST /v1/stages/{stage}:run)."""
        request = urllib.request.Request(  # noqa: S310 - loopback only
            f"{self.admin}/v1/stages/{stage}:run",
            method="POST",
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            assert response.status == 202

    def series(self, name: str) -> list[dict[str, str]]:
        """Label sets of every series of a metric (last 5 minutes)."""
        match = urllib.parse.urlencode({"match[]": f'{{__name__="{name}"}}', "start": str(time.time() - 300)})
        result: list[dict[str, str]] = _get_json(f"{self.prometheus}/api/v1/series?{match}")["data"]
        return result

    def series_names(self) -> set[str]:
        return set(_get_json(f"{self.prometheus}/api/v1/label/__name__/values")["data"])

    def metadata_families(self) -> set[str]:
        body = _get_json(f"{self.prometheus}/api/v1/targets/metadata")
        return {item["metric"] for item in body["data"]}


def _prometheus_config(live_targets: dict[str, str], rules: Path) -> dict[str, Any]:
    """config/prometheus/prometheus.yml with the compose hostnames replaced by loopback ports."""
    doc: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    doc["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    doc["rule_files"] = [str(rules)]
    for job in doc["scrape_configs"]:
        for static in job["static_configs"]:
            # One daemon and one model server here: the compose replicas map onto them.
            static["targets"] = list(dict.fromkeys(live_targets[t] for t in static["targets"]))
    return doc


DRIFT_ALERT = "ScorebeaterInputDrift"


def _without_drift_hold(doc: dict[str, Any]) -> dict[str, Any]:
    """alerts.yml with the drift alert's ``for`` cut to 0s: it fires on the first evaluation."""
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == DRIFT_ALERT:
                rule["for"] = "0s"
    return doc


def _stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(name="live", scope="module")
def _live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    prometheus_bin = binary("prometheus")
    work = tmp_path_factory.mktemp("live")
    season = _short_season(work / "data")
    model_base = work / "model" / "score_beater"
    model_base.mkdir(parents=True)
    _model(model_base, work)

    replay_port, model_port, admin_port, prom_port = (_free_port() for _ in range(4))
    models_config = work / "models.config"
    challenger = _models_config(model_base, models_config)
    config = work / "scorebeater.toml"
    config.write_text(
        f"""
[logging]
format = "json"
level = "info"

[data]
dir = "{work / "data"}"

[score_api]
base_url = "http://127.0.0.1:{replay_port}"
token_env = ""

[score_api.replay]
enabled = true
host = "127.0.0.1"
port = {replay_port}
speed = {REPLAY_SPEED}
season = {season}

[model]
name = "score_beater"
base_path = "{model_base}"

[model_server]
enabled = true
host = "127.0.0.1"
port = {model_port}
poll_interval_s = 1.0
{f'models_config = "{models_config}"' if challenger else ""}

[tfserving]
base_url = "http://127.0.0.1:{model_port}"
version_label = ""
challenger_label = "{"canary" if challenger else ""}"

[storage]
backend = "local"

[storage.local]
root = "{work / "store"}"

[scheduler]
poll_interval_s = 0.2
validation_cron = "* * * * *"
shutdown_grace_s = 5.0

[admin]
host = "127.0.0.1"
port = {admin_port}

[training]
report_dir = "{work / "reports"}"
"""
    )
    daemon_log = work / "daemon.log"
    admin_token = secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBEATER_")}
    env["SCOREBEATER_ADMIN_TOKEN"] = admin_token
    with daemon_log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(VENV_BIN / "scorebeater"), "run", "--config", str(config)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        _wait(
            "daemon /healthz", lambda: _get_json(f"{admin}/healthz", 2) is not None, 180, daemon, daemon_log
        )

        targets = {
            "scorebeater-1:8080": f"127.0.0.1:{admin_port}",
            "scorebeater-2:8080": f"127.0.0.1:{admin_port}",
            "tfserving-1:8501": f"127.0.0.1:{model_port}",
            "tfserving-2:8501": f"127.0.0.1:{model_port}",
            "localhost:9090": f"127.0.0.1:{prom_port}",
        }
        prom_config = work / "prometheus.yml"
        rules = work / "alerts.yml"
        rules.write_text(yaml.safe_dump(_without_drift_hold(yaml.safe_load(ALERTS.read_text()))))
        prom_config.write_text(yaml.safe_dump(_prometheus_config(targets, rules)))
        prom_log = work / "prometheus.log"
        with prom_log.open("wb") as out:
            prometheus = subprocess.Popen(
                [
                    prometheus_bin,
                    f"--config.file={prom_config}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--web.enable-lifecycle",
                ],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        prom = f"http://127.0.0.1:{prom_port}"

        def ready() -> bool:
            with urllib.request.urlopen(f"{prom}/-/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)

        _wait("prometheus /-/ready", ready, 30, prometheus, prom_log)
        jobs = {"scorebeater": targets["scorebeater-1:8080"], "tfserving": targets["tfserving-1:8501"]}
        live = Live(prom, admin, admin_token, jobs)
        _settle(live, daemon, daemon_log)
        yield live
    finally:
        if prometheus is not None:
            _stop(prometheus)
        _stop(daemon)


_MATCHER_LABEL = re.compile(r"""([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*["']""")


def _selector_problem(live: Live, selector: str, expr: str) -> str | None:
    """Why an alert's selector is not backed by scraped data, or ``None`` when it is.

    A selector must select series, except an error filter (``code!~"2.."``, ``status!="OK"``)
    on a healthy system: it may be empty when the same metric, selected more broadly in the same
    expression (the ratio's denominator), has series and every label it filters on exists.
    """
    if live.query(selector):
        return None
    name = selector.split("{", 1)[0]
    siblings = [s for s in selectors(expr) if s.split("{", 1)[0] == name and s != selector]
    if not any(live.query(s) for s in siblings):
        return f"{selector} selects nothing in the scraped data"
    labels: set[str] = set()
    for series in live.series(name):
        labels |= set(series)
    unknown = set(_MATCHER_LABEL.findall(selector.partition("{")[2])) - labels
    if unknown:
        return f"{selector}: {name} has no label {sorted(unknown)}"
    return None


def _pending(live: Live) -> list[str]:
    """Queries and selectors that have no data yet."""
    missing = [
        f"{q.test_id}: {q.expr}"
        for q in QUERIES
        if not metric_names(q.expr) <= EVENT_ONLY and not live.query(q.expr)
    ]
    for rule in ALERTS_LIST:
        for selector in selectors(rule.expr):
            problem = _selector_problem(live, selector, rule.expr)
            if problem:
                missing.append(f"{rule.name}: {problem}")
    return missing


def _settle(live: Live, daemon: subprocess.Popen[bytes], log: Path) -> None:
    """Wait, bounded, until the season has been replayed, validated and scraped.

    Validation runs on its cron (every minute here) and when the season turns final; that
    trigger can come before the prediction stage has stored the last predictions, leaving the
    realized metrics to the next cron minute. Rather than wait up to a minute, ask for a
    validation run through the admin API while the realized metrics (or the shadow comparison
    and the label gauges the promotion stage refreshes after it) are missing.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    missing = _pending(live)
    while missing and time.monotonic() < deadline:
        assert daemon.poll() is None, f"the daemon exited with {daemon.returncode}\n{log.read_text()[-4000:]}"
        after_validation = ("scorebeater_eval_", "shadow", "label_version")
        if any(k in m for m in missing for k in after_validation) and live.query(
            'scorebeater_outcomes_stored{resolution="final"} > 0'
        ):
            live.run_stage("validation")
        time.sleep(1.0)
        missing = _pending(live)
    # Two more scrapes so that rate() windows and rule evaluations see the final state.
    time.sleep(2.5)


# --- the checks ---------------------------------------------------------------------------------


def test_every_target_is_scraped(live: Live) -> None:
    body = _get_json(f"{live.prometheus}/api/v1/targets")
    health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in body["data"]["activeTargets"]}
    for job in live.jobs:
        assert health[job][0] == "up", f"{job}: {health[job]}"
    assert live.query('up{job="scorebeater"} == 1')
    assert live.query('up{job="tfserving"} == 1')


@pytest.mark.parametrize("query", QUERIES, ids=[q.test_id for q in QUERIES])
def test_panel_query_returns_data(live: Live, query: PanelQuery) -> None:
    result = live.query(query.expr)
    if metric_names(query.expr) <= EVENT_ONLY and not result:
        # No rejection has happened: the family must still be exported (HELP/TYPE in the scrape).
        assert {
            "scorebeater_records_rejected",
            "scorebeater_records_rejected_total",
        } & live.metadata_families()
        return
    assert result, (
        f"{query.dashboard} / {query.panel_title!r} ({query.ref_id}) returned no data: {query.expr}"
    )


@pytest.mark.parametrize("rule", ALERTS_LIST, ids=[r.name for r in ALERTS_LIST])
def test_alert_selects_scraped_series(live: Live, rule: AlertRule) -> None:
    problems = [p for s in selectors(rule.expr) if (p := _selector_problem(live, s, rule.expr))]
    assert not problems, f"{rule.name}: {problems}"
    live.query(rule.expr)  # evaluates without error (it may well be empty: nothing is wrong)


def test_every_referenced_metric_is_exported(live: Live) -> None:
    exported = live.series_names()
    families = live.metadata_families()
    referenced = {n for q in QUERIES for n in metric_names(q.expr)} | {
        n for r in ALERTS_LIST for n in metric_names(r.expr)
    }
    missing = []
    for name in sorted(referenced):
        family = name
        for suffix in ("_bucket", "_sum", "_count", "_total"):
            family = family.removesuffix(suffix)
        if name not in exported and not {name, family} & families:
            missing.append(name)
    assert not missing, f"referenced but exported by no scraped target: {missing}"


def test_alert_rules_load_and_evaluate(live: Live) -> None:
    body = _get_json(f"{live.prometheus}/api/v1/rules")
    rules = [r for g in body["data"]["groups"] for r in g["rules"] if r["type"] == "alerting"]
    assert {r["name"] for r in rules} == {r.name for r in ALERTS_LIST}
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        assert rule["lastEvaluation"] != "0001-01-01T00:00:00Z", f"{rule['name']} never evaluated"


def test_the_daemon_reports_realized_quality(live: Live) -> None:
    """The short season turned final: the model's realized metrics are real numbers."""
    auc = live.query('scorebeater_eval_roc_auc{bucket="all"}')
    assert auc, "no realized AUC"
    for sample in auc:
        assert 0.0 <= float(sample["value"][1]) <= 1.0
    rows = live.query('scorebeater_eval_rows{bucket="all"}')
    assert rows
    assert all(float(s["value"][1]) > 0 for s in rows)
    assert live.query(':tensorflow:serving:request_count{status="OK"} > 0'), (
        "the stand-in answered no predict"
    )


def test_the_drift_alert_fires_on_the_halved_season(live: Live) -> None:
    """Every FTM of the replayed season was halved: the monitoring stage's PSI for ftm against
    the champion's training reference passes 0.2 and the drift alert fires on it."""
    psi = live.query('scorebeater_drift_psi{input="ftm", reference="training"}')
    assert psi, "no drift PSI for ftm (no reference with the served model?)"
    assert float(psi[0]["value"][1]) > 0.2
    assert live.query("scorebeater_drift_reference_available == 1")
    deadline = time.monotonic() + 30
    query = f'ALERTS{{alertname="{DRIFT_ALERT}", alertstate="firing", input="ftm", reference="training"}}'
    while not live.query(query):
        assert time.monotonic() < deadline, f"{DRIFT_ALERT} did not fire for ftm"
        time.sleep(0.5)


def test_the_estimates_are_exported(live: Live) -> None:
    for name in ("scorebeater_estimated_roc_auc", "scorebeater_estimated_accuracy"):
        samples = live.query(f'{name}{{bucket="all"}}')
        assert samples, name
        assert all(0.0 <= float(x["value"][1]) <= 1.0 for x in samples)
