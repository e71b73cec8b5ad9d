"""The models.config text-proto subset: syntax, semantics, every problem reported at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from scorebeater.errors import ConfigError
from scorebeater.modelserver.modelsconfig import (
    VersionPolicy,
    load_models_config,
    parse_models_config,
    parse_text_proto,
)

REPO = Path(__file__).resolve().parents[2]


def test_full_example() -> None:
    text = """
    # comment
    model_config_list: {
      config: {
        name: "a", base_path: '/models/a'; model_platform: 'tensorflow'
        model_version_policy < specific { versions: 3 versions: 4 } >
        version_labels { key: 'stable' value: 3 }
        version_labels { key: "canary" value: 4 }
      }
      config { name: 'b' base_path: 'rel/b' model_version_policy { all {} } }
      config { name: 'c' base_path: '/c' model_version_policy { latest { num_versions: 2 } } }
    }
    """
    a, b, c = parse_models_config(text, base_dir=Path("/anchor"))
    assert a.name == "a"
    assert a.base_path == Path("/models/a")
    assert a.policy == VersionPolicy(kind="specific", versions=(3, 4))
    assert dict(a.labels) == {"stable": 3, "canary": 4}
    assert b.base_path == Path("/anchor/rel/b")
    assert b.policy.kind == "all"
    assert c.policy == VersionPolicy(kind="latest", num_versions=2)


def test_default_policy_is_latest_one_and_relative_paths_use_the_cwd() -> None:
    (model,) = parse_models_config("model_config_list { config { name: 'm' base_path: 'x/m' } }")
    assert model.policy == VersionPolicy(kind="latest", num_versions=1)
    assert model.base_path == Path.cwd() / "x/m"


@pytest.mark.parametrize(
    ("policy", "found", "aspired"),
    [
        (VersionPolicy(), [1, 5, 3], {5}),
        (VersionPolicy(num_versions=2), [1, 5, 3], {5, 3}),
        (VersionPolicy(num_versions=5), [1], {1}),
        (VersionPolicy(kind="all"), [1, 2], {1, 2}),
        (VersionPolicy(kind="specific", versions=(2, 9)), [1, 2, 3], {2}),
        (VersionPolicy(), [], set()),
    ],
)
def test_policy_selection(policy: VersionPolicy, found: list[int], aspired: set[int]) -> None:
    assert policy.select(found) == aspired


def test_every_problem_is_reported_with_its_line() -> None:
    text = """model_config_list {
  config { name: 'a' }
  config {
    name: 'b' base_path: '/b'
    model_platform: 'onnx'
    model_version_policy { latest { num_versions: 0 } }
    version_labels { key: 'x/y' value: 1 }
    logging_config {}
  }
  config { name: 'b' base_path: '/b2' }
}
custom_model_config {}
"""
    with pytest.raises(ConfigError) as exc:
        parse_models_config(text, source="m.config")
    problems = exc.value.problems
    assert exc.value.source == "m.config"
    assert any(p.startswith("line 2:") and "needs a name and a base_path" in p for p in problems)
    assert any(p.startswith("line 5:") and "only 'tensorflow'" in p for p in problems)
    assert any(p.startswith("line 6:") and "must be >= 1" in p for p in problems)
    assert any(p.startswith("line 7:") and "cannot appear in a URL" in p for p in problems)
    assert any(p.startswith("line 8:") and "logging_config: not supported" in p for p in problems)
    assert any(p.startswith("line 10:") and "declared twice" in p for p in problems)
    assert any(p.startswith("line 12:") and "custom_model_config" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("model_config_list { config { name: 'a' ", "line 1: expected '}' before the end of the file"),
        ("model_config_list { config { name: } }", "line 1: field 'name' has an unexpected value '}'"),
        ("model_config_list {\n config { name: 'a' base_path: '/a' } @", "line 2: unexpected character '@'"),
        ("model_config_list {\n  = }", "line 2: unexpected character '='"),
    ],
)
def test_syntax_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_models_config(text)
    assert exc.value.problems == (problem,)


def test_text_proto_escapes_and_numbers() -> None:
    node = parse_text_proto(r"""a: 'it\'s' b: "tab\t" c: -3 d: 0x10 e: 1.5f""")
    assert [(k, v) for k, v, _ in node] == [("a", "it's"), ("b", "tab\t"), ("c", -3), ("d", 16), ("e", 1.5)]


def test_the_repos_models_config() -> None:
    (model,) = load_models_config(REPO / "tfserving" / "models.config")
    assert model.name == "score_beater"
    assert model.base_path == Path("/models/score_beater")
    assert model.policy == VersionPolicy(kind="latest", num_versions=2)
    assert dict(model.labels) == {"stable": 1}


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_models_config(tmp_path / "missing.config")
