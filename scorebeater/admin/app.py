"""The admin API (aiohttp): health, readiness, metrics, predictions, status and control.

Read endpoints are open (put the port behind your network policy). State-changing endpoints
(``POST /v1/refeed``, ``POST /v1/stages/{stage}:run``, ``POST /v1/quarantine/{id}:retry`` and
``:skip``, see :mod:`scorebeater.admin.quarantine`, ``POST /v1/models/promote``) require
``Authorization: Bearer <token>`` with the token from the environment variable named by
``admin.token_env``; with no token configured they answer 403, never run unauthenticated.
``openapi.yaml`` beside this module documents every endpoint and is served at ``/openapi.yaml``.

Every error is ``{"error": {"code", "message", "param"?}}``, whatever produced it (the shared
error middleware of :mod:`scorebeater.httpsurface`: unknown paths, wrong methods, bodies too
large, an unexpected exception as a logged 500). Inputs are checked strictly: ids and seasons
are ASCII digits in range, a request body is a JSON object with only the documented fields of
the documented types (``Content-Encoding: gzip``/``deflate`` decoded within
:data:`MAX_BODY_BYTES`), and an ``Authorization`` header that is not ASCII is a 401.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from scorebeater.admin.quarantine import QuarantineRoutes
from scorebeater.admin.read_api import add_read_routes
from scorebeater.admin.ui import add_ui_routes
from scorebeater.bounds import PLAYER_ID, SEASON
from scorebeater.config import Secret
from scorebeater.errors import (
    ConfigError,
    ScorebeaterError,
    StorageError,
    StorageUnavailable,
    TFServingError,
)
from scorebeater.httpsurface import (
    ApiError,
    bearer_token,
    bool_param,
    coded_error,
    int_param,
    json_object_body,
    json_response,
    query_params,
    shown,
    surface_app,
)
from scorebeater.leadership.base import LeadershipState
from scorebeater.modelserver.modelsconfig import VERSION_LABEL
from scorebeater.promotion.promoter import Promoter, PromotionRefused
from scorebeater.promotion.records import (
    ADMIN_API,
    MAX_RECORDS,
    MAX_TEXT_CHARS,
    PromotionLog,
    comparison_json,
)
from scorebeater.scheduler import StageRunner
from scorebeater.stages.base import StageContext
from scorebeater.stages.features import FeaturesStage
from scorebeater.stages.handoff import Handoff
from scorebeater.storage.base import PREDICTION_ROLES

log = structlog.get_logger(__name__)

READY_CHECK_TIMEOUT_S = 3.0
MAX_BODY_BYTES = 64 * 1024
"""Largest request body, decoded (the only body is ``POST /v1/refeed``'s small object)."""


@dataclass(frozen=True, slots=True)
class AdminState:
    """What the admin API reads and controls."""

    ctx: StageContext
    handoff: Handoff
    runners: dict[str, StageRunner]
    features: FeaturesStage
    """Read for the player lookups: the latest season, players without a previous season."""
    token: Secret | None
    started: asyncio.Event
    promoter: Promoter | None = None
    """Moves labels (``POST /v1/models/promote``) and keeps their history; ``None``: the app
    builds one over ``ctx`` (the daemon passes the promotion stage's, so both share one lock)."""
    leadership: LeadershipState | None = None
    """This replica's role and term (``/readyz``); ``None``: no election (tests, embedding)."""


STATE = web.AppKey("state", AdminState)
PROMOTER = web.AppKey("promoter", Promoter)


def _json(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status=status)


def _error(status: int, code: str, message: str) -> web.Response:
    return coded_error(ApiError(status, code, message))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _requires_token(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        token = request.app[STATE].token
        if token is None:
            return _error(
                403,
                "admin_token_not_configured",
                "state-changing endpoints are disabled: "
                "set the environment variable named by admin.token_env",
            )
        given = bearer_token(request.headers.get("Authorization", ""))
        if given is None or not hmac.compare_digest(given.encode("ascii"), token.get().encode("utf-8")):
            raise ApiError(
                401,
                "unauthorized",
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="scorebeater-admin"'},
            )
        leadership = request.app[STATE].leadership
        if leadership is not None and leadership.role != "leader":
            # A standby runs no stage and must not write: a refeed or stage run would be lost,
            # a promotion record or quarantine decision would be written outside the leader's
            # fenced term. The client retries on the leader (readyz says which replica it is).
            raise ApiError(
                409,
                "not_leader",
                f"this replica is a {leadership.role} ({leadership.backend} store): "
                "send state-changing requests to the leader (GET /readyz shows each replica's role)",
            )
        return await handler(request)

    return wrapped


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    del request
    return _json({"status": "ok"})


async def _check(name: str, probe: Awaitable[object]) -> tuple[str, str | None]:
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            await probe
    except (ScorebeaterError, OSError, TimeoutError) as exc:
        return name, f"{type(exc).__name__}: {exc}"
    return name, None


async def readyz(request: web.Request) -> web.Response:
    """Readiness: storage reachable, the model AVAILABLE, the Score API accepting our token (cached)."""
    state = request.app[STATE]
    ctx = state.ctx
    # A standby serves reads (and is ready) while the leader runs the stages.
    role = {} if state.leadership is None else {"leadership": state.leadership.as_dict()}
    if not state.started.is_set():
        return _json({"ready": False, "checks": {"daemon": "starting"}, **role}, 503)
    results = await asyncio.gather(
        _check("storage", ctx.storage.ping()),
        _check("model", ctx.model.pin_version(ctx.cfg.tfserving.version_label or None)),
        _check("score_api", ctx.scores.check_ready()),
    )
    checks = {name: (error or "ok") for name, error in results}
    ready = all(error is None for _, error in results)
    ctx.metrics.model_available.set(1 if checks["model"] == "ok" else 0)
    return _json({"ready": ready, "checks": checks, **role}, 200 if ready else 503)


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def _role_param(raw: str) -> str:
    """``?role=``: one of ``PREDICTION_ROLES``, exactly (the challenger is never served unasked)."""
    if raw not in PREDICTION_ROLES:
        raise ApiError(
            400,
            "invalid_parameter",
            f"role must be one of {', '.join(PREDICTION_ROLES)}, got {shown(raw)}",
            param="role",
        )
    return raw


async def get_predictions(request: web.Request) -> web.Response:
    """Latest probability (or the history) for one player and season, of one role (the
    champion's unless ``?role=challenger``)."""
    state = request.app[STATE]
    player_id = int_param(request.match_info["player_id"], "player_id", lo=PLAYER_ID.lo, hi=PLAYER_ID.hi)
    query = query_params(request, ("season", "history", "role"))
    season_raw = query.get("season")
    history = bool_param(query.get("history", "false"), "history")
    role = _role_param(query.get("role", "champion"))
    if season_raw is None:
        latest = state.features.latest_season()
        if latest is None:
            return _error(404, "no_season", "no season has been processed yet; pass ?season=S")
        season = latest
    else:
        season = int_param(season_raw, "season", lo=SEASON.lo, hi=SEASON.hi)
    rows: list[dict[str, Any]] = []
    async for table in state.ctx.storage.read_predictions(
        season=season, player_id=player_id, latest_only=not history, role=role
    ):
        rows.extend(table.to_pylist())
    if not rows:
        if player_id in state.features.known_without_previous(season):
            return _error(
                404,
                "no_previous_season",
                f"player {player_id} has no season {season - 1}: no prediction is made for him",
            )
        whose = "" if role == "champion" else f" by the {role}"
        return _error(404, "not_found", f"no prediction{whose} for player {player_id} in season {season}")
    rows.sort(key=lambda r: (r["as_of_seq"], r["model_version"]))
    clean = [
        {
            "probability": r["probability"],
            "as_of_seq": r["as_of_seq"],
            "as_of_time": _iso(r["as_of_time"]),
            "model_version": r["model_version"],
            "season_progress": round(float(r["progress"]), 4),
            "predicted_at": _iso(r["predicted_at"]),
        }
        for r in rows
    ]
    body: dict[str, Any] = {"player_id": player_id, "season": season, "role": role, **clean[-1]}
    if history:
        body["history"] = clean
    return _json(body)


async def get_status(request: web.Request) -> web.Response:
    """Each stage's runner state and own status, and the work in flight between them."""
    query_params(request, ())
    state = request.app[STATE]
    stages = {name: runner.status() for name, runner in state.runners.items()}
    return _json(
        {
            "stages": stages,
            "handoff": state.handoff.status(),
            "model": state.ctx.cfg.model.name,
            # The shadow stage's own status: label, pinned version, why skipped, its queue.
            "challenger": stages["shadow"]["watermark"] if "shadow" in stages else None,
        }
    )


@_requires_token
async def post_refeed(request: web.Request) -> web.Response:
    """Force a full re-prediction; ``{"clear_cache": true}`` drops the cache first."""
    state = request.app[STATE]
    body = await json_object_body(request, {"clear_cache": bool}, limit=MAX_BODY_BYTES)
    clear_cache = bool(body.get("clear_cache", False))
    state.handoff.request_refeed(clear_cache=clear_cache)
    log.info("admin.refeed_requested", clear_cache=clear_cache)
    return _json({"accepted": True, "clear_cache": clear_cache}, 202)


@_requires_token
async def post_stage_run(request: web.Request) -> web.Response:
    """Trigger one run of a stage as soon as it is free."""
    state = request.app[STATE]
    stage = request.match_info["stage"]
    runner = state.runners.get(stage)
    if runner is None:
        return _error(404, "unknown_stage", f"unknown stage {stage!r}; one of {sorted(state.runners)}")
    runner.trigger()
    log.info("admin.stage_run_requested", stage=stage)
    return _json({"accepted": True, "stage": stage}, 202)


# --- models, labels, roles and promotions ---------------------------------------------------


def _roles(state: AdminState, labels: dict[str, int], available: list[int]) -> dict[str, int | None]:
    """The champion (the version the prediction stage pinned last; before its first run, the
    ``version_label``'s in models.config, or the highest AVAILABLE) and the challenger (the
    ``challenger_label``'s, ``None`` when off or the same version as the champion)."""
    tf = state.ctx.cfg.tfserving
    predictions = state.runners.get("predictions")
    pinned = predictions.status()["watermark"].get("pinned_model_version") if predictions else None
    if pinned is None:
        pinned = labels.get(tf.version_label) if tf.version_label else max(available, default=None)
    challenger_label = getattr(tf, "challenger_label", "")
    challenger = labels.get(challenger_label) if challenger_label else None
    return {"champion": pinned, "challenger": None if challenger == pinned else challenger}


async def get_models(request: web.Request) -> web.Response:
    """The model's versions with their state, labels and roles; realized metrics; promotions."""
    state = request.app[STATE]
    promoter = request.app[PROMOTER]
    limit = int_param(query_params(request, ("limit",)).get("limit", "100"), "limit", lo=1, hi=MAX_RECORDS)
    server_error: str | None = None
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            statuses = await state.ctx.model.status()
    except (ScorebeaterError, OSError, TimeoutError) as exc:
        statuses, server_error = [], f"{type(exc).__name__}: {exc}"
    config_error: str | None = None
    try:
        labels = await promoter.labels()
    except ConfigError as exc:
        labels, config_error = {}, f"{exc.source}: " + "; ".join(exc.problems)
    try:
        history = await promoter.history.records(limit=limit)
    except StorageError as exc:
        code = "storage_unavailable" if isinstance(exc, StorageUnavailable) else "storage_error"
        raise ApiError(503, code, f"storage: {exc}") from exc
    roles = _roles(state, labels, [s.version for s in statuses if s.available])
    versions = [
        {
            "version": s.version,
            "state": s.state,
            "labels": sorted(label for label, v in labels.items() if v == s.version),
            "roles": [role for role, v in roles.items() if v == s.version],
        }
        for s in statuses
    ]
    validation = state.runners.get("validation")
    comparison = state.handoff.latest_comparison()
    return _json(
        {
            "model": state.ctx.cfg.model.name,
            "models_config": None if promoter.path is None else str(promoter.path),
            "versions": versions,
            "labels": labels,
            "roles": roles,
            "realized": {
                "comparison": comparison_json(comparison),
                "validation": validation.status().get("last_result") if validation else None,
            },
            "promotions": [r.to_json() for r in history],
            "errors": {"model_server": server_error, "models_config": config_error},
        }
    )


@_requires_token
async def post_promote(request: web.Request) -> web.Response:
    """Move a label (default ``promotion.label``) to an AVAILABLE version; recorded as ``admin-api``."""
    state = request.app[STATE]
    body = await json_object_body(
        request, {"version": int, "label": str, "reason": str}, limit=MAX_BODY_BYTES
    )
    if "version" not in body:
        raise ApiError(400, "missing_field", "version is required", param="version")
    version = int(body["version"])
    if not 0 <= version <= 2**63 - 1:
        raise ApiError(400, "bad_field", f"version must be >= 0, got {version}", param="version")
    reason = str(body.get("reason", ""))
    if len(reason) > MAX_TEXT_CHARS:
        raise ApiError(
            400,
            "bad_field",
            f"reason is longer than {MAX_TEXT_CHARS} characters ({len(reason)})",
            param="reason",
        )
    label = body.get("label") or state.ctx.cfg.promotion.label
    if not VERSION_LABEL.fullmatch(label):
        raise ApiError(400, "bad_field", f"label must be [A-Za-z0-9_]+, got {label!r}", param="label")
    try:
        record = await request.app[PROMOTER].promote(
            version,
            by=ADMIN_API,
            trigger="operator",
            label=label,
            reason=reason,
            comparison=state.handoff.latest_comparison(),
        )
    except PromotionRefused as exc:
        raise ApiError(409, exc.code, str(exc)) from exc
    except TFServingError as exc:
        raise ApiError(503, "model_server_unavailable", f"cannot ask the model server: {exc}") from exc
    except OSError as exc:
        raise ApiError(503, "models_config_unwritable", f"cannot rewrite models.config: {exc}") from exc
    except StorageError as exc:
        # The label has moved; only its record is missing.
        raise ApiError(503, "storage_unavailable", f"label moved, record not stored: {exc}") from exc
    log.info("admin.promoted", label=record.label, version=record.to_version)
    return _json({"promoted": True, **record.to_json()})


async def openapi(request: web.Request) -> web.Response:
    del request
    text = resources.files("scorebeater.admin").joinpath("openapi.yaml").read_text("utf-8")
    return web.Response(text=text, content_type="application/yaml")


def create_app(state: AdminState) -> web.Application:
    """The admin application over one daemon's state."""
    app = surface_app(coded_error, surface="admin")
    app[STATE] = state
    app[PROMOTER] = state.promoter or Promoter(
        state.ctx.cfg, state.ctx.model, PromotionLog(state.ctx.storage), metrics=state.ctx.metrics
    )
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(state.ctx.metrics.registry))
    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get(r"/v1/predictions/{player_id}", get_predictions)
    app.router.add_post("/v1/refeed", post_refeed)
    app.router.add_post(r"/v1/stages/{stage:[a-z_]+}:run", post_stage_run)
    app.router.add_get("/v1/models", get_models)
    app.router.add_post("/v1/models/promote", post_promote)
    QuarantineRoutes(STATE).register(app, _requires_token)
    add_read_routes(app, state)
    add_ui_routes(app, state)
    return app
