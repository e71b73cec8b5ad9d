"""Fuzz the TF Serving stand-in against ``scorebeater/modelserver/openapi.yaml``.

``unsupported_method`` is off: TF Serving answers a method a ``/v1`` URL does not take with
its 400 ``Malformed request``, never 405, and the stand-in keeps to that.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import schemathesis

from tests.fuzz.conftest import fuzz_config

SPEC = Path(str(resources.files("scorebeater.modelserver").joinpath("openapi.yaml")))

schema = schemathesis.openapi.from_path(SPEC, config=fuzz_config(disabled_checks=("unsupported_method",)))


@schema.parametrize()
def test_modelserver(case: schemathesis.Case[Any], standin_url: str) -> None:
    case.call_and_validate(base_url=standin_url)
