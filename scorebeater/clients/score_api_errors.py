"""The Score API client's errors: what each HTTP error answer becomes, and the typed conditions.

401/403 become :class:`~scorebeater.errors.ScoreApiAuthError`, 404
:class:`~scorebeater.errors.ScoreApiNotFound`, 409 :class:`SeasonNotFinal` / :class:`GameNotFinal`,
429 and 5xx a transient :class:`~scorebeater.errors.ScoreApiError` (with ``Retry-After``), other
4xx a non-transient one. A record that fails validation in a strict call is :class:`RecordRejected`.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import structlog

from scorebeater.clients.http import is_transient_status, parse_retry_after
from scorebeater.errors import ScoreApiAuthError, ScoreApiError, ScoreApiNotFound

log = structlog.get_logger("scorebeater.clients.score_api")

TARGET = "score_api"


class ScoreApiNotFinal(ScoreApiError):
    """409: the resource exists but is not final yet; ask again later. ``code`` is the API's."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(TARGET, message, status=409, transient=False)


class SeasonNotFinal(ScoreApiNotFinal):
    """The season's regular season is not final, so its totals are not served yet."""


class GameNotFinal(ScoreApiNotFinal):
    """The game is not final, so its box score is not served yet."""


class RecordRejected(ScoreApiError):
    """A record the API served fails validation (``strict`` calls): ``kind`` and ``reason``
    say what and why (``detail``: the validation message), ``payload`` is the record as
    received (JSON). Not counted here: the caller, which knows whether it has seen the record
    before, counts it once."""

    def __init__(self, kind: str, reason: str, detail: str, *, payload: bytes) -> None:
        self.kind = kind
        self.reason = reason
        self.detail = detail
        self.payload = payload
        super().__init__(TARGET, f"{kind} rejected ({reason}): {detail}", transient=False)


def contract_error(path: str, detail: str) -> ScoreApiError:
    """A body that parses but is not the contract's shape (logged; never transient)."""
    log.error("score_api.response_invalid", path=path, detail=detail)
    return ScoreApiError(
        TARGET, f"GET {path}: response does not match the contract: {detail}", transient=False
    )


def _error_detail(body: bytes) -> tuple[str, str]:
    """``(code, message)`` from a JSON error body; empty code when the body is not one."""
    try:
        error = orjson.loads(body).get("error", {})
        return str(error.get("code", "")), str(error.get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return "", body[:200].decode("utf-8", "replace")


def status_error(  # noqa: PLR0911 - one return per status class
    path: str, status: int, body: bytes, headers: Mapping[str, str]
) -> ScoreApiError:
    """The typed error for an HTTP error answer: auth, not found, not final, transient, other."""
    code, message = _error_detail(body)
    text = f"GET {path}: {code or 'error'}: {message}"
    if status in (401, 403):
        return ScoreApiAuthError(TARGET, text, status=status)
    if status == 404:  # noqa: PLR2004
        return ScoreApiNotFound(TARGET, text, status=status)
    if status == 409:  # noqa: PLR2004
        if code == "season_not_final":
            return SeasonNotFinal(text, code=code)
        if code == "game_not_final":
            return GameNotFinal(text, code=code)
        return ScoreApiNotFinal(text, code=code)
    if is_transient_status(status):
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return ScoreApiError(TARGET, text, status=status, transient=True, retry_after_s=retry_after)
    return ScoreApiError(TARGET, text, status=status, transient=False)
