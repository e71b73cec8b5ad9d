"""Logging never shows secrets held in stack frames."""

from __future__ import annotations

import logging

import pytest
import structlog

from scorebeater.logs import configure_logging


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_do_not_show_local_variables(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt, "info")  # type: ignore[arg-type]
    log = structlog.get_logger("test")

    def call_with_a_secret_in_scope() -> None:
        headers = {"Authorization": "Bearer SUPERSECRET123"}
        raise ConnectionError(f"refused ({len(headers)} headers)")

    try:
        call_with_a_secret_in_scope()
    except ConnectionError:
        log.exception("upstream.failed")
    logging.getLogger().handlers[0].flush()
    err = capsys.readouterr().err
    assert "upstream.failed" in err
    assert "ConnectionError" in err
    assert "SUPERSECRET123" not in err
