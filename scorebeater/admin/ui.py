"""The web page the admin app serves at ``/``: the season's race, a player's chart, the model.

Read-only. The page (``static/index.html``) and its assets (``static/*``, served at
``/ui/<name>``) ship inside the package and are read once when the app is built, so the page
works offline: no CDN, no fonts or scripts from elsewhere. Its data comes from the read API
(``/v1/predictions``, ``/v1/players/{id}``, ``/v1/models``, ``/v1/status``) and from
``GET /v1/quality``, defined here: the realized metrics the validation stage exported last
(per model version and progress bucket, with the reliability bins) and the followed seasons.

Secure defaults: every answer of this module carries a strict ``Content-Security-Policy``
(scripts and styles only from this origin, no inline script, no frames, no form posts),
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``. The script inserts
every value with ``textContent`` or DOM attributes, never as markup, so a player name such as
``<img src=x onerror=alert(1)>`` coming from the Score API shows as text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from scorebeater.httpsurface import ApiError, json_response, query_params
from scorebeater.inputs import PROGRESS_BUCKETS
from scorebeater.metrics import CALIBRATION_BINS

if TYPE_CHECKING:
    from prometheus_client import Gauge

    from scorebeater.admin.app import AdminState

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # The page and its assets change with the package: revalidate rather than go stale.
    "Cache-Control": "no-cache",
}
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"
QUALITY_METRICS = {
    "roc_auc": "eval_roc_auc",
    "brier": "eval_brier",
    "log_loss": "eval_log_loss",
    "ece": "eval_ece",
    "accuracy": "eval_accuracy",
    "rows": "eval_rows",
}
"""``/v1/quality``'s name of each realized metric -> the :class:`~scorebeater.metrics.Metrics` gauge."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """Every file of ``static/`` with a known type, by name (read once: they are small).

    Raises:
        FileNotFoundError: ``static/index.html`` is missing (a broken install).
    """
    folder = resources.files("scorebeater.admin").joinpath("static")
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets[entry.name] = Asset(entry.read_bytes(), CONTENT_TYPES[suffix])
    if INDEX not in assets:
        raise FileNotFoundError(f"{folder}/{INDEX} is missing: the package is incomplete")
    return assets


def _page(asset: Asset) -> web.Response:
    charset = None if asset.content_type == "image/svg+xml" else "utf-8"
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset=charset, headers=SECURITY_HEADERS
    )


def _samples(gauge: Gauge) -> Iterable[tuple[dict[str, str], float]]:
    """A labelled gauge's current children: ``(labels, value)``."""
    for family in gauge.collect():
        for sample in family.samples:
            yield sample.labels, sample.value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def quality_json(state: AdminState) -> dict[str, Any]:
    """The body of ``GET /v1/quality`` (see :func:`get_quality`); no I/O."""
    m = state.ctx.metrics
    versions: dict[int, dict[str, Any]] = {}

    def version(label: str) -> dict[str, Any]:
        v = int(label)
        if v not in versions:
            versions[v] = {"version": v, "buckets": {}, "reliability": {}}
        return versions[v]

    for key, attribute in QUALITY_METRICS.items():
        for labels, value in _samples(getattr(m, attribute)):
            bucket = version(labels["model_version"])["buckets"].setdefault(labels["bucket"], {})
            bucket[key] = int(value) if key == "rows" else _finite(value)
    for key, gauge in (
        ("rows", m.calibration_count),
        ("predicted", m.calibration_predicted),
        ("observed", m.calibration_observed),
    ):
        for labels, value in _samples(gauge):
            cell = version(labels["model_version"])["reliability"].setdefault(labels["bin"], {})
            cell[key] = int(value) if key == "rows" else _finite(value)
    order = {name: i for i, name in enumerate(("all", *PROGRESS_BUCKETS))}
    out: list[dict[str, Any]] = []
    for v in sorted(versions):
        entry = versions[v]
        buckets = [
            {"bucket": name, **{k: values.get(k) for k in QUALITY_METRICS}}
            for name, values in sorted(entry["buckets"].items(), key=lambda kv: order.get(kv[0], 99))
        ]
        bins = []
        for i, name in enumerate(CALIBRATION_BINS):
            cell = entry["reliability"].get(name, {})
            bins.append(
                {
                    "bin": name,
                    "lo": i / len(CALIBRATION_BINS),
                    "hi": (i + 1) / len(CALIBRATION_BINS),
                    "rows": int(cell.get("rows", 0)),
                    "predicted": cell.get("predicted"),
                    "observed": cell.get("observed"),
                }
            )
        out.append({"version": v, "buckets": buckets, "reliability": bins})
    computed = next((value for _, value in _samples(m.validation_last_success)), 0.0)
    predictions = state.runners.get("predictions")
    champion = predictions.status()["watermark"].get("pinned_model_version") if predictions else None
    return {
        "model": state.ctx.cfg.model.name,
        "seasons": sorted({*state.ctx.cfg.scheduler.seasons, *state.features.seasons}),
        "champion": champion,
        "computed_at": (datetime.fromtimestamp(computed, UTC).isoformat() if computed > 0 else None),
        "versions": out,
    }


def add_ui_routes(app: web.Application, state: AdminState) -> None:
    """Serve the page at ``/``, its assets at ``/ui/{asset}`` and ``GET /v1/quality``."""
    assets = load_assets()
    index = assets.pop(INDEX)

    async def get_index(request: web.Request) -> web.Response:
        """The page (HTML; its script fetches everything it shows)."""
        del request
        return _page(index)

    async def get_asset(request: web.Request) -> web.Response:
        """One packaged asset by name; any other name is a 404."""
        name = request.match_info["asset"]
        asset = assets.get(name)
        if asset is None:
            raise ApiError(404, "not_found", f"no such asset: {name[:80]!r}")
        return _page(asset)

    async def get_quality(request: web.Request) -> web.Response:
        """Realized quality per model version and progress bucket, reliability bins, the
        followed seasons and the champion: what the validation stage exported last (its
        gauges), empty before it has labels."""
        query_params(request, ())
        return json_response(quality_json(state))

    app.router.add_get("/", get_index)
    app.router.add_get("/ui/{asset}", get_asset)
    app.router.add_get("/v1/quality", get_quality)
