"""The drift alert fires on the PSI the monitoring stage computes for a shifted season.

The monitoring stage runs on the bundled 2014 season at half its schedule, once as it was and
once with every FTM halved (tests/unit/test_monitoring_stage.py's rows); the drift series it
exports are fed, as scraped, to ``promtool test rules`` with config/prometheus/alerts.yml. The
halved season fires ScorebeaterInputDrift for ``ftm`` against both references; the season as it
was does not (other inputs may: 2014's ``prev2_games`` looks back at the 66-game 2012 season).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops import ALERTS, binary
from tests.unit.test_monitoring_stage import Setup, _league, _open_setup  # noqa: F401 - fixtures

ALERT = "ScorebeaterInputDrift"
SCHEDULE_INPUTS = {"team_games", "season_games", "prev_season_games"}
LABELS = {"job": "scorebeater", "instance": "scorebeater:8080"}
DESCRIPTION = (
    "The population stability index is above 0.2 (a significant shift). Check the data (a unit change, "
    "a feed error), then whether the model still fits: see the drift panel of the model quality dashboard "
    "and the estimated-versus-realized AUC."
)


def _summary(name: str, reference: str, psi: float) -> str:
    return f"Input {name} drifted from the {reference} reference: PSI {psi:.2f}"


def _drift_series(s: Setup) -> dict[tuple[str, str], float]:
    out = {}
    for family in s.metrics.registry.collect():
        if family.name == "scorebeater_drift_psi":
            for sample in family.samples:
                out[(sample.labels["input"], sample.labels["reference"])] = sample.value
    return out


def _promtool_fires(series: dict[tuple[str, str], float], tmp_path: Path) -> set[tuple[str, str]]:
    """Run promtool on ``series`` held for 40 minutes; return the (input, reference) pairs the
    test expects firing (every PSI above 0.2 of a non-schedule input), after promtool agreed."""
    firing = {k for k, v in series.items() if v > 0.2 and k[0] not in SCHEDULE_INPUTS}
    doc = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "scorebeater_drift_psi{"
                        + ", ".join(f'{k}="{v}"' for k, v in {**LABELS, "input": i, "reference": r}.items())
                        + "}",
                        "values": f"{value!r}x40",
                    }
                    for (i, r), value in sorted(series.items())
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": ALERT, "exp_alerts": []},  # pending
                    {
                        "eval_time": "35m",
                        "alertname": ALERT,
                        "exp_alerts": [
                            {
                                "exp_labels": {**LABELS, "severity": "ticket", "input": i, "reference": r},
                                "exp_annotations": {
                                    "summary": _summary(i, r, series[(i, r)]),
                                    "description": DESCRIPTION,
                                },
                            }
                            for i, r in sorted(firing)
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "drift_test.yml"
    test_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = subprocess.run(
        [binary("promtool"), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return firing


@pytest.mark.parametrize("ftm_scale", [1.0, 0.5], ids=["as-it-was", "ftm-halved"])
async def test_the_drift_alert_fires_on_halved_ftm(
    open_setup: Callable[..., Any], ftm_scale: float, tmp_path: Path
) -> None:
    s: Setup = await open_setup(ftm_scale=ftm_scale)
    await s.stage.run("r1")
    series = _drift_series(s)
    assert ("ftm", "training") in series
    assert ("ftm", "last_season") in series
    fired = _promtool_fires(series, tmp_path)
    ftm = {("ftm", "training"), ("ftm", "last_season")}
    if ftm_scale == 1.0:
        assert not fired & ftm
    else:
        assert ftm <= fired
