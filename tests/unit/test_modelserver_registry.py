"""Version discovery, hot load/unload order, failed loads, labels and config reloads.

Real SavedModels (exported once per session) and a real directory; each test polls by hand.
"""

from __future__ import annotations

import shutil
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from scorebeater.errors import ConfigError
from scorebeater.modelserver.jsonio import RequestError
from scorebeater.modelserver.modelsconfig import ModelSource, VersionPolicy
from scorebeater.modelserver.registry import ModelRegistry, resolve
from scorebeater.testing.savedmodel import ModelCache, cached_models, publish


@pytest.fixture(name="model_cache", scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return cached_models(tmp_path_factory.getbasetemp() / "savedmodels")


def states(registry: ModelRegistry, name: str = "m") -> dict[int, str]:
    return {s.version: s.state for s in registry.status(name, None)}


def transitions(logs: list[MutableMapping[str, Any]]) -> list[tuple[object, object]]:
    return [(e["version"], e["state"]) for e in logs if e["event"] == "modelserver.version_state"]


async def test_new_version_loads_before_the_old_one_unloads(model_cache: ModelCache, tmp_path: Path) -> None:
    base = tmp_path / "m"
    publish(model_cache.score(1), base, 1)
    (base / "not-a-version").mkdir()
    (base / "README").write_text("x")
    registry = ModelRegistry([ModelSource("m", base)])
    try:
        await registry.poll_once()
        assert states(registry) == {1: "AVAILABLE"}
        publish(model_cache.score(2), base, 2)
        with capture_logs() as logs:
            await registry.poll_once()
        assert transitions(logs) == [
            (2, "START"),
            (2, "LOADING"),
            (2, "AVAILABLE"),
            (1, "UNLOADING"),
            (1, "END"),
        ]
        assert states(registry) == {2: "AVAILABLE", 1: "END"}
        assert resolve(registry.views, "m", None, None)[0] == 2
        with pytest.raises(RequestError, match=r"Specific\(m, 1\)"):
            resolve(registry.views, "m", 1, None)
        with capture_logs() as logs:
            await registry.poll_once()
        assert transitions(logs) == []  # nothing changed: idempotent
    finally:
        registry.close()


async def test_failed_version_ends_with_its_error_and_keeps_the_old_one(
    model_cache: ModelCache, tmp_path: Path
) -> None:
    base = tmp_path / "m"
    publish(model_cache.score(1), base, 1)
    registry = ModelRegistry([ModelSource("m", base)])
    try:
        await registry.poll_once()
        (base / "2").mkdir()  # an incomplete copy: no saved_model.pb
        await registry.poll_once()
        v2, v1 = registry.status("m", None)
        assert (v2.version, v2.state, v2.error_code) == (2, "END", "NOT_FOUND")
        assert "Could not find SavedModel .pb or .pbtxt" in v2.error_message
        assert (v1.version, v1.state) == (1, "AVAILABLE")  # never left without a servable version
        with capture_logs() as logs:
            await registry.poll_once()
        assert transitions(logs) == []  # unchanged directory: not retried
        shutil.rmtree(base / "2")
        shutil.copytree(model_cache.score(2), base / "2")
        await registry.poll_once()
        assert states(registry) == {2: "AVAILABLE", 1: "END"}
        assert registry.status("m", 2)[0].error_code == "OK"
    finally:
        registry.close()


async def test_policies_and_version_names(model_cache: ModelCache, tmp_path: Path) -> None:
    base = tmp_path / "m"
    for v in (1, 2, 3):
        publish(model_cache.score(v), base, v)
    publish(model_cache.score(1), base, 10)
    registry = ModelRegistry(
        [
            ModelSource("all", base, policy=VersionPolicy(kind="all")),
            ModelSource("two", base, policy=VersionPolicy(num_versions=2)),
            ModelSource("pick", base, policy=VersionPolicy(kind="specific", versions=(2, 99))),
        ]
    )
    try:
        await registry.poll_once()
        assert states(registry, "all") == {10: "AVAILABLE", 3: "AVAILABLE", 2: "AVAILABLE", 1: "AVAILABLE"}
        assert states(registry, "two") == {10: "AVAILABLE", 3: "AVAILABLE"}
        assert states(registry, "pick") == {2: "AVAILABLE"}
        assert [s.version for s in registry.status("all", None)] == [10, 3, 2, 1]
    finally:
        registry.close()


async def test_status_errors(tmp_path: Path) -> None:
    registry = ModelRegistry([ModelSource("m", tmp_path / "missing")])
    try:
        with capture_logs() as logs:
            await registry.poll_once()
        assert [e["event"] for e in logs] == ["modelserver.base_path_missing", "modelserver.no_versions"]
        with pytest.raises(RequestError, match="Could not find any versions of model m") as exc:
            registry.status("m", None)
        assert exc.value.http_status == 404
        with pytest.raises(RequestError, match=r"Servable not found for request: Latest\(m\)"):
            resolve(registry.views, "m", None, None)
        with pytest.raises(RequestError, match="Unrecognized servable version label: x") as exc:
            resolve(registry.views, "other", None, "x")
        assert exc.value.http_status == 400
    finally:
        registry.close()


async def test_labels_only_point_at_available_versions(model_cache: ModelCache, tmp_path: Path) -> None:
    base = tmp_path / "m"
    publish(model_cache.score(1), base, 1)
    config = tmp_path / "models.config"

    def write(label_version: int) -> None:
        config.write_text(
            f"model_config_list {{ config {{ name: 'm' base_path: '{base}' "
            f"model_version_policy {{ latest {{ num_versions: 2 }} }} "
            f"version_labels {{ key: 'stable' value: {label_version} }} }} }}"
        )

    write(2)
    registry = ModelRegistry([ModelSource("m", base, labels={"stable": 2})], config_path=config)
    try:
        with capture_logs() as logs:
            await registry.poll_once()
        assert any(e["event"] == "modelserver.label_pending" for e in logs)
        with pytest.raises(RequestError, match="Unrecognized servable version label: stable"):
            resolve(registry.views, "m", None, "stable")
        publish(model_cache.score(2), base, 2)
        await registry.poll_once()
        assert resolve(registry.views, "m", None, "stable")[0] == 2
        write(5)  # a version that does not exist: the label stays where it is
        await registry.poll_once()
        assert resolve(registry.views, "m", None, "stable")[0] == 2
        write(1)
        await registry.poll_once()
        assert resolve(registry.views, "m", None, "stable")[0] == 1
        config.write_text("model_config_list { config { name: 'm' ")  # broken: the old config stays
        with capture_logs() as logs:
            await registry.poll_once()
        assert [e["event"] for e in logs] == ["modelserver.config_invalid"]
        assert resolve(registry.views, "m", None, "stable")[0] == 1
    finally:
        registry.close()


async def test_a_model_removed_from_the_config_is_unloaded(model_cache: ModelCache, tmp_path: Path) -> None:
    publish(model_cache.score(1), tmp_path / "a", 1)
    publish(model_cache.score(1), tmp_path / "b", 1)
    config = tmp_path / "models.config"
    both = (
        f"config {{ name: 'a' base_path: '{tmp_path}/a' }} config {{ name: 'b' base_path: '{tmp_path}/b' }}"
    )
    config.write_text(f"model_config_list {{ {both} }}")
    sources = [ModelSource("a", tmp_path / "a"), ModelSource("b", tmp_path / "b")]
    registry = ModelRegistry(sources, config_path=config)
    try:
        await registry.poll_once()
        assert set(registry.views) == {"a", "b"}
        config.write_text(f"model_config_list {{ config {{ name: 'a' base_path: '{tmp_path}/a' }} }}  ")
        await registry.poll_once()
        assert set(registry.views) == {"a"}
        assert registry.model_names == ["a"]
    finally:
        registry.close()


def test_the_override_must_name_a_configured_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'x' .* is not declared"):
        ModelRegistry([ModelSource("m", tmp_path)], base_path_override=("x", tmp_path))
