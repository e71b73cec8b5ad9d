"""The exception tree. Imports nothing from the package.

Data goes in attributes (``target``, ``status``, ``stage``), not only in the message, so
callers can branch on kind and value without parsing text.
"""

from __future__ import annotations

from collections.abc import Sequence


class ScorebeaterError(Exception):
    """Base of every error this package raises on purpose."""


class FatalError(ScorebeaterError):
    """An error that must stop the daemon (bad config, unrecoverable state)."""


class ConfigError(FatalError):
    """A configuration file has one or more problems.

    ``problems`` holds every problem found, each prefixed with its key path, so a user
    fixes a file in one pass instead of one error at a time.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "; ".join(self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s): {lines}")


class Interrupted(ScorebeaterError):
    """A command was cancelled by a second SIGTERM/SIGINT before it finished draining."""


class DataError(ScorebeaterError):
    """A data file or directory cannot be used (missing file, wrong columns)."""


class StageError(ScorebeaterError):
    """A stage iteration failed; ``stage`` names it."""

    def __init__(self, stage: str, message: str) -> None:
        self.stage = stage
        super().__init__(f"{stage}: {message}")


class StorageError(ScorebeaterError):
    """A storage backend failed."""


class StorageNotFound(StorageError, KeyError):
    """The requested object does not exist."""

    def __str__(self) -> str:
        # KeyError quotes its argument; keep the plain message.
        return str(self.args[0]) if self.args else ""


class StorageUnavailable(StorageError, ConnectionError):
    """The backend cannot be reached (network, auth, server down)."""


class Fenced(FatalError):
    """A commit carried a fencing token older than the store's current leadership term.

    Another replica has become leader since this process was: the commit is rejected whole and
    the daemon must stop (never retried). ``token`` is the writer's, ``current`` the store's.
    """

    def __init__(self, token: int, current: int, *, holder: str | None = None) -> None:
        self.token = token
        self.current = current
        self.holder = holder
        by = f" (held by {holder})" if holder else ""
        super().__init__(
            f"commit rejected by fencing: this process leads term {token}, the store is at term {current}{by}"
        )


class LeadershipLost(FatalError):
    """This process was leader and no longer is (lease expired, lock connection lost)."""


class LeadershipHeld(FatalError):
    """Another live process leads this store; ``holder`` describes it (``pid 123 on host h, term 7``)."""

    def __init__(self, message: str, *, holder: str) -> None:
        self.holder = holder
        super().__init__(message)


class UpstreamError(ScorebeaterError):
    """An HTTP service we call answered with an error or could not be reached.

    ``target`` names the service (``score_api``, ``tfserving``), ``status`` is the HTTP
    status (``None`` when no response arrived) and ``transient`` says whether retrying
    the same idempotent call may succeed (timeouts, connection errors, 429, 5xx).
    """

    def __init__(
        self,
        target: str,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        self.target = target
        self.status = status
        self.transient = transient
        self.retry_after_s = retry_after_s
        where = f"{target} HTTP {status}" if status is not None else target
        super().__init__(f"{where}: {message}")


class ScoreApiError(UpstreamError):
    """The Score API failed."""


class ScoreApiAuthError(ScoreApiError):
    """The Score API refused our credentials (401/403); retrying will not help."""


class ScoreApiNotFound(ScoreApiError):
    """The Score API has no such resource (404)."""


class TFServingError(UpstreamError):
    """TF Serving (or the stand-in) failed."""


class ModelNotFound(TFServingError):
    """Unknown model or version (404)."""


class BadModelRequest(TFServingError):
    """TF Serving rejected the request as invalid (400): our bug, never retried."""


class ModelUnavailable(TFServingError):
    """The server is overloaded, timing out or unreachable (429/503/504, connection)."""


class ValidationError(ScorebeaterError, ValueError):
    """A record from an external source is malformed or impossible; ``reason`` is a short code.

    ``key`` identifies the rejected record where known (``"201400001"`` for a game or box
    score, ``"201400001/123"`` for a box-score line), so a caller that sees the same record on
    every fetch can count and quarantine it once.
    """

    def __init__(self, reason: str, message: str, *, key: str | None = None) -> None:
        self.reason = reason
        self.key = key
        super().__init__(message)
