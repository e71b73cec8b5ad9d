"""Fuzz the replay Score API against its contract (``scorebeater/scoreapi/openapi.yaml``).

The server has a token and the synthetic league (2011-2015) at the start of 2014; every
request carries the token (schemathesis also sends requests without it and with broken
values, which must be 401s).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import schemathesis

from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.score_api import RunningReplay, running_replay, synthetic_history
from scorebeater.testing.threads import serving_in_thread
from tests.fuzz.conftest import fuzz_config, still_healthy

TOKEN = "fuzz-t0ken"
SPEC = Path(str(resources.files("scorebeater.scoreapi").joinpath("openapi.yaml")))

schema = schemathesis.openapi.from_path(SPEC, config=fuzz_config())


@pytest.fixture(name="replay_url", scope="module")
def _replay_url() -> Iterator[str]:
    catalog = ReplayCatalog.build(synthetic_history())
    start = catalog.default_start(2014)
    replay: RunningReplay
    with serving_in_thread(lambda: running_replay(catalog, start, token=TOKEN), name="fuzz-replay") as replay:
        yield replay.url
        still_healthy(f"{replay.url}/healthz")


@schema.parametrize()
def test_replay_api(case: schemathesis.Case[Any], replay_url: str) -> None:
    case.call_and_validate(base_url=replay_url, headers={"Authorization": f"Bearer {TOKEN}"})
