"""The operator's side of the quarantine table: list, retry and skip, over HTTP and the CLI.

``GET /v1/quarantine[?season=S&state=open|retry|skipped|resolved]`` lists the entries (open
to read, like every read endpoint); ``POST /v1/quarantine/{id}:retry`` marks an entry for
another attempt (the feature stage fetches it on its next run, woken through the hand-off, and
resolves it on success) and ``POST /v1/quarantine/{id}:skip`` accepts its loss (its season
completes without it). Both need the admin bearer token and take no body. A resolved entry is
neither retried nor skipped (409).

``scorebeater quarantine list [--season S] [--state S] [--json]``, ``retry ID`` and ``skip
ID`` do the same on the configured storage directly, with or without a daemon running (a
running daemon sees a decision at its next feature run). See
:mod:`scorebeater.storage.quarantine` for the entries and their states.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import structlog
from aiohttp import web

from scorebeater.bounds import INT64_MAX, SEASON
from scorebeater.errors import ScorebeaterError, StorageError, StorageUnavailable
from scorebeater.httpsurface import ApiError, int_param, json_object_body, json_response, query_params
from scorebeater.storage.quarantine import STATES, Quarantine, QuarantineEntry, QuarantineState, check_state

if TYPE_CHECKING:
    from scorebeater.admin.app import AdminState

log = structlog.get_logger(__name__)

Action = Literal["retry", "skip"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[Handler], Handler]

_NEW_STATE: dict[Action, QuarantineState] = {"retry": "retry", "skip": "skipped"}


class DecisionRefused(ScorebeaterError):
    """An operator's retry or skip that cannot be done: no such entry (404), or resolved (409)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


async def decide(store: Quarantine, entry_id: int, action: Action) -> QuarantineEntry:
    """Apply an operator's ``retry`` or ``skip`` to entry ``entry_id``; return the entry after it.

    Idempotent: retrying an entry marked for retry (or skipping a skipped one) changes nothing.

    Raises:
        DecisionRefused: no such entry, or it is resolved already.
        StorageError: the store failed.
    """
    entry = await store.get(entry_id)
    if entry is None:
        raise DecisionRefused(404, "not_found", f"no quarantine entry {entry_id}")
    if entry.state == "resolved":
        raise DecisionRefused(
            409, "already_resolved", f"quarantine entry {entry_id} ({entry.kind} {entry.key}) is resolved"
        )
    updated = await store.set_state(entry_id, _NEW_STATE[action])
    if updated is None:  # removed meanwhile: entries are never removed, but be exact
        raise DecisionRefused(404, "not_found", f"no quarantine entry {entry_id}")
    log.info("quarantine.decided", action=action, id=entry_id, kind=entry.kind, key=entry.key)
    return updated


# --- HTTP ----------------------------------------------------------------------------------------


class QuarantineRoutes:
    """The admin API's quarantine endpoints over the daemon's :class:`AdminState`."""

    def __init__(self, state: web.AppKey[AdminState]) -> None:
        self._state = state

    def register(self, app: web.Application, guard: Guard) -> None:
        """Add the routes to ``app``; ``guard`` wraps the state-changing ones (the bearer token)."""
        app.router.add_get("/v1/quarantine", self.list_entries)
        app.router.add_post(r"/v1/quarantine/{entry_id}:retry", guard(self.retry))
        app.router.add_post(r"/v1/quarantine/{entry_id}:skip", guard(self.skip))

    async def list_entries(self, request: web.Request) -> web.Response:
        """Entries, filtered by ``season`` and ``state`` when given (no other parameter)."""
        query_params(request, ("season", "state"))
        season = None
        if "season" in request.query:
            season = int_param(request.query["season"], "season", lo=SEASON.lo, hi=SEASON.hi)
        state = request.query.get("state")
        if state is not None and state not in STATES:
            raise ApiError(
                400, "invalid_parameter", f"state must be one of {', '.join(STATES)}", param="state"
            )
        store = request.app[self._state].ctx.storage.quarantine
        try:
            entries = await store.entries(season=season, state=state)
        except StorageError as exc:
            raise _unavailable(exc) from exc
        return json_response({"entries": [e.as_json() for e in entries]})

    async def retry(self, request: web.Request) -> web.Response:
        """Mark the entry for another attempt and wake the feature stage."""
        return await self._decide(request, "retry")

    async def skip(self, request: web.Request) -> web.Response:
        """Accept the entry's loss (its season may complete) and wake the feature stage."""
        return await self._decide(request, "skip")

    async def _decide(self, request: web.Request, action: Action) -> web.Response:
        entry_id = int_param(request.match_info["entry_id"], "id", lo=0, hi=INT64_MAX)
        await json_object_body(request, {}, limit=1024)  # no body, or an empty object
        state = request.app[self._state]
        try:
            entry = await decide(state.ctx.storage.quarantine, entry_id, action)
        except DecisionRefused as exc:
            raise ApiError(exc.status, exc.code, str(exc)) from None
        except StorageError as exc:
            raise _unavailable(exc) from exc
        state.handoff.quarantine_decided()
        return json_response({"accepted": True, "entry": entry.as_json()}, status=202)


def _unavailable(exc: StorageError) -> ApiError:
    log.warning("admin.quarantine_storage_failed", error=str(exc))
    code = "storage_unavailable" if isinstance(exc, StorageUnavailable) else "storage_error"
    return ApiError(503, code, f"storage: {exc}")


# --- command line --------------------------------------------------------------------------------


async def command(args: argparse.Namespace) -> int:
    """``scorebeater quarantine list|retry|skip``: on the configured storage, directly."""
    from scorebeater.storage import open_storage  # noqa: PLC0415 - loads the chosen backend's driver

    async with open_storage(args.cfg.storage) as storage:
        if args.action == "list":
            state = None if args.state is None else check_state(args.state)
            entries = await storage.quarantine.entries(season=args.season, state=state)
            print(_render(entries, as_json=args.json))  # noqa: T201 - this command's output
            return 0
        entry = await decide(storage.quarantine, args.id, "retry" if args.action == "retry" else "skip")
    done = "marked for retry: the next features run fetches it again" if entry.state == "retry" else "skipped"
    print(f"quarantine entry {entry.entry_id} ({entry.kind} {entry.key}, season {entry.season}): {done}")  # noqa: T201
    return 0


def _render(entries: list[QuarantineEntry], *, as_json: bool) -> str:
    if as_json:
        return json.dumps([e.as_json() for e in entries], indent=2)
    if not entries:
        return "no quarantined records"
    header = ("id", "season", "kind", "key", "state", "attempts", "reason", "last_seen")
    rows = [
        (
            str(e.entry_id),
            str(e.season),
            e.kind,
            e.key,
            e.state,
            str(e.attempts),
            e.reason,
            e.last_seen.isoformat(),
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows)
    )
