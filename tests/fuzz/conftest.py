"""Property-based fuzzing of the three HTTP surfaces with schemathesis: shared servers and settings.

Each surface runs for real on a loopback port: the replay Score API (over the synthetic
league), the TF Serving stand-in (over two versions of a small score_beater model, label
``stable``) and the admin API of a daemon whose stages are opened but never served (so its
state-changing POSTs only record requests). schemathesis drives them with ``requests`` from
synchronous tests, so each server runs on an event loop of its own in a background thread.

What every fuzz test asserts (:func:`fuzz_config`): no 5xx, status codes, content types,
headers and bodies as the surface's OpenAPI document says, invalid input rejected with a
4xx; and (:func:`still_healthy`, in each server fixture's teardown) the server still answers
afterwards. Examples per operation are bounded so the whole fuzz stays under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis

from scorebeater.testing.savedmodel import cached_models, publish, standin_thread

MAX_EXAMPLES = 25
"""Per operation and generation mode, beside the coverage phase's own cases."""

MODELS_CONFIG = """\
model_config_list {
  config {
    name: 'score_beater'
    base_path: '{root}/score_beater'
    model_platform: 'tensorflow'
    model_version_policy { all {} }
    version_labels { key: 'stable' value: 1 }
  }
}
"""


def fuzz_config(
    *, disabled_checks: tuple[str, ...] = (), max_examples: int = MAX_EXAMPLES
) -> schemathesis.Config:
    """Valid and invalid inputs, reproducible, with every response check but the ``disabled_checks``.

    ``positive_data_acceptance`` is always off: schema-valid is not the same as acceptable
    (an opaque cursor, a model name, a season that does not exist), and those answers are
    documented 4xx, which the other checks hold the servers to.
    """
    checks: dict[str, Any] = {
        name: {"enabled": False} for name in ("positive_data_acceptance", *disabled_checks)
    }
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
            },
            "checks": checks,
        }
    )


def still_healthy(url: str) -> None:
    """The server answers a cheap request with 200 after the fuzzing."""
    reply = requests.get(url, timeout=10)
    assert reply.status_code == 200, (url, reply.status_code, reply.text[:500])


@pytest.fixture(name="standin_url", scope="session")
def _standin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The TF Serving stand-in over score_beater versions 1 and 2 (label ``stable`` -> 1)."""
    cache = cached_models(Path("/tmp/scorebeater-test-models"))  # noqa: S108 - a per-machine cache
    root = tmp_path_factory.mktemp("fuzz-models")
    publish(cache.score(1), root / "score_beater", 1)
    publish(cache.score(2), root / "score_beater", 2)
    config = root / "models.config"
    config.write_text(MODELS_CONFIG.replace("{root}", str(root)), encoding="utf-8")
    with standin_thread(
        model_name="score_beater", base_path=None, port=0, poll_interval_s=60.0, models_config=config
    ) as url:
        yield url
        still_healthy(f"{url}/v1/models/score_beater")
