"""ReplicaSet's choices on a fake clock, the merged status view, and ``[tfserving] base_url`` as a list."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from scorebeater.clients.tfserving_codec import VersionStatus
from scorebeater.clients.tfserving_replicas import ReplicaSet, merge_statuses, most_served
from scorebeater.config import TFServingConfig, describe, parse_config
from scorebeater.errors import ConfigError
from scorebeater.metrics import Metrics

URLS = ("http://a:8501", "http://b:8501/", "http://c:8501")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replica_set(metrics: Metrics | None = None, urls: tuple[str, ...] = URLS) -> tuple[ReplicaSet, Clock]:
    clock = Clock()
    return ReplicaSet(urls, cooldown_s=5.0, metrics=metrics, clock=clock), clock


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_idle_replicas_take_turns() -> None:
    replicas, _ = replica_set()
    assert [replicas.pick().index for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert replicas.replicas[1].url == "http://b:8501"  # the trailing slash is dropped


def test_the_least_loaded_replica_is_picked_then_turns_on_ties() -> None:
    replicas, _ = replica_set()
    a, b, c = replicas.replicas
    with replicas.using(a), replicas.using(a), replicas.using(b):
        assert replicas.pick() is c
        with replicas.using(c):
            assert replicas.pick() is b  # b and c hold one each; b is next in turn
            assert replicas.pick() is c
    assert (a.outstanding, b.outstanding, c.outstanding) == (0, 0, 0)


def test_a_retry_avoids_the_replicas_already_tried_while_another_is_healthy() -> None:
    replicas, _ = replica_set()
    assert replicas.pick(avoid={0, 1}).index == 2
    assert replicas.pick(avoid={0, 1, 2}).index in {0, 1, 2}  # all tried: any healthy one


def test_an_ejected_replica_gets_nothing_until_its_cool_down_and_a_probe(metrics: Metrics) -> None:
    replicas, clock = replica_set(metrics)
    b = replicas.replicas[1]
    assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 3
    with capture_logs() as logs:
        replicas.eject(b, "no response")
        replicas.eject(b, "no response")  # still out: the cool-down restarts, counted once
    assert [e["event"] for e in logs] == ["tfserving.replica_ejected"]
    assert logs[0]["replica"] == "http://b:8501"
    assert sample(metrics, "scorebeater_tfserving_replica_ejections_total", replica="http://b:8501") == 1
    assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 2
    assert {replicas.pick().index for _ in range(6)} == {0, 2}
    assert replicas.due() == []
    clock.now += 5.0
    assert replicas.due() == [b]
    assert replicas.survey_targets() == list(replicas.replicas)  # a pin probes it itself
    replicas.restore(b)
    assert sample(metrics, "scorebeater_tfserving_healthy_replicas") == 3
    assert {replicas.pick().index for _ in range(6)} == {0, 1, 2}


def test_with_every_replica_ejected_requests_still_go_somewhere() -> None:
    replicas, _ = replica_set()
    for replica in replicas.replicas:
        replicas.eject(replica, "no response")
    assert replicas.healthy() == []
    assert replicas.pick(avoid={0}).index in {1, 2}
    assert replicas.survey_targets() == list(replicas.replicas)


def test_a_single_replica_is_never_ejected(metrics: Metrics) -> None:
    replicas, _ = replica_set(metrics, urls=("http://only:8501",))
    replicas.eject(replicas.replicas[0], "no response")
    assert not replicas.replicas[0].ejected
    # The series exists from the start (at 0) and stays there.
    assert sample(metrics, "scorebeater_tfserving_replica_ejections_total", replica="http://only:8501") == 0


def test_a_replica_set_needs_a_url() -> None:
    with pytest.raises(ValueError, match="at least one URL"):
        ReplicaSet((), cooldown_s=1.0)


def vs(version: int, state: str = "AVAILABLE", message: str = "") -> VersionStatus:
    return VersionStatus(version=version, state=state, error_message=message)


def test_merged_status_is_available_only_where_every_replica_has_it() -> None:
    merged = merge_statuses(
        [
            ("http://a", [vs(3), vs(2), vs(1, "END")]),
            ("http://b", [vs(2), vs(1, "LOADING")]),
        ]
    )
    assert [(s.version, s.state, s.error_code, s.error_message) for s in merged] == [
        (3, "UNKNOWN", "NOT_FOUND", "not on http://b"),
        (2, "AVAILABLE", "OK", ""),
        (1, "END", "OK", ""),
    ]
    one = [vs(2), vs(1, "END", "boom")]
    assert merge_statuses([("http://a", one)]) == one


@pytest.mark.parametrize(
    ("served", "want"),
    [
        ([{1, 2}, {2}], 2),
        ([{3}, {2}, {2}], 2),
        ([{3}, {2}], 3),
        ([set(), {1}], 1),
        ([set(), set()], None),
    ],
)
def test_most_served_breaks_ties_to_the_higher_version(served: list[set[int]], want: int | None) -> None:
    assert most_served(served) == want


# --- [tfserving] base_url as a list -----------------------------------------------------------


def test_base_url_takes_one_url_or_a_list() -> None:
    assert parse_config({}, env={}).tfserving.base_urls == ("http://127.0.0.1:8501",)
    one = parse_config({"tfserving": {"base_url": "http://tf:8501"}}, env={})
    assert one.tfserving.base_urls == ("http://tf:8501",)
    many = parse_config(
        {"tfserving": {"base_url": ["http://tf-0:8501", "http://tf-1:8501"], "eject_cooldown_s": 2.5}}, env={}
    )
    assert many.tfserving.base_urls == ("http://tf-0:8501", "http://tf-1:8501")
    assert many.tfserving.eject_cooldown_s == 2.5
    assert describe(many)["tfserving"]["base_url"] == ["http://tf-0:8501", "http://tf-1:8501"]
    assert TFServingConfig(base_url=("http://x:1",)).base_urls == ("http://x:1",)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "tfserving.base_url: must name at least one URL"),
        (["http://tf-0:8501", "ftp://tf-1"], "tfserving.base_url[1]: must be an http(s) URL with a host"),
        (["http://tf-0:8501", "HTTP://TF-0:8501/"], "tfserving.base_url[1]: repeats an earlier replica"),
        (["http://tf-0", "http://tf-0:80"], "tfserving.base_url[1]: repeats an earlier replica"),
        (["http://tf-0:8501", 5], "tfserving.base_url[1]: must be a string"),
        (["http://u:hunter2@tf-0:8501"], "tfserving.base_url[0]: must not contain credentials"),
        (5, "tfserving.base_url: must be a string"),
    ],
)
def test_bad_base_url_lists_are_refused(value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"tfserving": {"base_url": value}}, env={})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    assert "hunter2" not in str(info.value)


def test_eject_cooldown_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"tfserving\.eject_cooldown_s"):
        parse_config({"tfserving": {"eject_cooldown_s": 0}}, env={})
