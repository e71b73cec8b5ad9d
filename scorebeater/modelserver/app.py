"""The embedded TF Serving stand-in: an aiohttp server answering TF Serving's REST API.

Routes (``reference/tfserving-rest.md`` section 2; case-insensitive, whole-path regexes)::

    POST /v1/models/{name}[/versions/{N} | /labels/{label}]:(predict|classify|regress)
    GET  /v1/models/{name}[/versions/{N} | /labels/{label}]            model status
    GET  /v1/models/{name}[/versions/{N} | /labels/{label}]/metadata   model metadata
    GET  /monitoring/prometheus/metrics                                 Prometheus text

Any other ``/v1`` request gets 400 ``Malformed request: <METHOD> <path>``; any other path a
404. Every reply but the metrics page is ``application/json``, and every error is TF Serving's
``{"error": "..."}`` with its HTTP status, whatever produced it: the shared error middleware of
:mod:`scorebeater.httpsurface` renders aiohttp's own errors and an unexpected exception (a
logged 500) in that shape too. (TF Serving answers 404s outside ``/v1`` with libevent's HTML
page; the stand-in keeps its one shape.) Version numbers are ASCII digits (``[0-9]+``, as RE2's
digit class); one beyond int64 is TF Serving's 400 ``Failed to convert version``.

Request bodies may be compressed (``Content-Encoding: gzip`` or ``deflate``). They are inflated
in the predict worker thread in bounded chunks, counting as they go (``httpsurface.inflate``): a
body that is not valid gzip is a 400, one that inflates past :data:`MAX_BODY_BYTES` a 413, and
its inflated bytes are never held (a gzip bomb costs CPU, not memory). Other encodings get 415.

A ``:predict`` runs in one worker thread from the body to the reply bytes (parse, checks in
TF Serving's order, tensors, the signature's concrete function, formatting), so the event
loop never waits on JSON or TensorFlow; model loads run in the registry's own thread.
``classify``/``regress`` are routed and checked but answer 501 (the project's models only
have predict signatures).

Embed with :func:`serve_models` (the daemon does); run alone with ``scorebeater serve-model``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from scorebeater.errors import ConfigError
from scorebeater.httpsurface import ApiError, inflate, surface_app
from scorebeater.lifecycle import run_until_signal
from scorebeater.modelserver.jsonio import RequestError, echo, error_body, parse_document
from scorebeater.modelserver.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from scorebeater.modelserver.metrics import ServerMetrics
from scorebeater.modelserver.modelsconfig import ModelSource, load_models_config
from scorebeater.modelserver.registry import ModelRegistry, ModelView, resolve
from scorebeater.modelserver.servable import CODE_BY_HTTP
from scorebeater.modelserver.tensors import (
    check_batch,
    check_shapes,
    columnar_to_arrays,
    predict_reply,
    rows_to_arrays,
)
from scorebeater.modelserver.versions import INT64_MAX

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path

log = structlog.get_logger(__name__)

METRICS_PATH = "/monitoring/prometheus/metrics"
REST_TIMEOUT_S = 30.0
"""TF Serving's ``--rest_api_timeout_in_ms`` default; past it a request gets 504."""
MAX_BODY_BYTES = 512 * 1024 * 1024
"""Largest request body, as sent and after decoding (aiohttp's default of 1 MiB is far too small)."""

_PREDICT = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(classify|regress|predict)", re.IGNORECASE
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE
)
_V1 = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_INT64_DIGITS = len(str(INT64_MAX))


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(exc: RequestError) -> web.Response:
    return _json(error_body(exc.message), exc.http_status)


def _surface_error(exc: ApiError) -> web.Response:
    """TF Serving's shape for what the shared error middleware renders."""
    return web.Response(
        body=error_body(exc.message), status=exc.status, content_type="application/json", headers=exc.headers
    )


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    # Past 19 significant digits it cannot be an int64 (and int() refuses thousands of digits).
    digits = text.lstrip("0") or "0"
    if len(digits) > _INT64_DIGITS or int(digits) > INT64_MAX:
        raise RequestError(f"Failed to convert version: {text} to numeric.")
    return int(digits)


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    version: int | None
    label: str | None


def _target(match: re.Match[str]) -> _Target:
    name, version, label = match.group(1), match.group(2), match.group(3)
    return _Target(
        name=urllib.parse.unquote(name or ""),
        version=_version(version),
        label=urllib.parse.unquote(label) if label is not None else None,
    )


def predict_job(
    body: bytes,
    views: Mapping[str, ModelView],
    target: _Target,
    api: str,
    max_batch_size: int,
    *,
    content_encoding: str = "",
) -> tuple[bytes, float]:
    """Everything of one ``:predict`` after the URL: body (as sent) to reply bytes (blocking, thread-safe).

    Returns the reply and the microseconds spent in TensorFlow.

    Raises:
        RequestError: with TF Serving's status and message, checks in TF Serving's order.
    """
    try:
        body = inflate(body, content_encoding, limit=MAX_BODY_BYTES)
    except ApiError as exc:
        raise RequestError(exc.message, http_status=exc.status) from None
    doc = parse_document(body)
    if not isinstance(doc, dict):
        raise RequestError(f"JSON Value: {echo(doc)} Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise RequestError(
            f"JSON Value: {echo(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    if api == "predict":
        has_rows, has_cols = "instances" in doc, "inputs" in doc
        if has_rows == has_cols:
            if has_rows:
                raise RequestError(
                    f"JSON Value: {echo(doc)} Not formatted correctly expecting only one of 'inputs' or "
                    "'instances' keys to exist "
                )
            raise RequestError("Missing 'inputs' or 'instances' key")
    _, loaded = resolve(views, target.name, target.version, target.label)
    signature_name = signature_name or "serving_default"
    signature = loaded.signatures.get(signature_name)
    if signature is None:
        raise RequestError(f'Serving signature name: "{signature_name}" not found in signature def')
    expected_method = f"tensorflow/serving/{api}"
    if signature.method_name != expected_method:
        raise RequestError(
            f"Expected {api} signature method_name to be {expected_method}. Was: {signature.method_name}"
        )
    if api != "predict":
        raise RequestError(f"The stand-in does not implement :{api}", http_status=501)
    if not signature.inputs:
        raise RequestError(f"Failed to get input map for signature: {signature_name}")
    row_format = "instances" in doc
    # JSON true/false can only be spelled so: without either token no value is a bool (the
    # one value numpy would take for a number), and tensors are converted in one numpy pass.
    bools_possible = b"true" in body or b"false" in body
    if row_format:
        arrays = rows_to_arrays(doc["instances"], signature.inputs, bools_possible=bools_possible)
    else:
        arrays = columnar_to_arrays(doc["inputs"], signature.inputs, bools_possible=bools_possible)
    check_shapes(arrays, signature.inputs, signature_name)
    check_batch(arrays, max_batch_size)
    started = time.perf_counter()
    outputs = loaded.run(signature_name, arrays)
    runtime_us = (time.perf_counter() - started) * 1e6
    return predict_reply(outputs, row_format=row_format), runtime_us


def _status_body(states: list[Any]) -> bytes:
    doc = {
        "model_version_status": [
            {
                "version": str(s.version),
                "state": s.state,
                "status": {"error_code": s.error_code, "error_message": s.error_message},
            }
            for s in states
        ]
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


class ModelServer:
    """A running stand-in: its URL, registry and metrics. Built by :func:`serve_models`."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        *,
        max_batch_size: int,
        request_timeout_s: float,
        predict_workers: int,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.request_timeout_s = request_timeout_s
        self.url = ""
        self._executor = ThreadPoolExecutor(max_workers=predict_workers, thread_name_prefix="model-predict")

    def make_app(self) -> web.Application:
        """The aiohttp application: one catch-all route, dispatched by TF Serving's regexes."""
        app = surface_app(_surface_error, surface="modelserver", client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: web.Request) -> web.Response:
        """Dispatch one request: metrics page, ``/v1`` API, or 404 for anything else."""
        path = request.rel_url.raw_path
        method = request.method
        if path == METRICS_PATH and method == "GET":
            return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})
        if not _V1.fullmatch(path):
            return _error(
                RequestError(f"The requested URL {path} was not found on this server.", http_status=404)
            )
        try:
            return await self._route(request, method, path)
        except RequestError as exc:
            return _error(exc)

    async def _route(self, request: web.Request, method: str, path: str) -> web.Response:
        if method == "POST" and (match := _PREDICT.fullmatch(path)):
            return await self._predict(request, _target(match), match.group(4).lower())
        if method == "GET" and (match := _STATUS.fullmatch(path)):
            if not match.group(1):
                raise RequestError("Missing model name in request.")
            target = _target(match)
            if match.group(4):
                return self._metadata(target)
            # TF Serving's status handler ignores a label and reports every version.
            return _json(_status_body(self.registry.status(target.name, target.version)))
        raise RequestError(f"Malformed request: {method} {path}")

    def _metadata(self, target: _Target) -> web.Response:
        version, loaded = resolve(self.registry.views, target.name, target.version, target.label)
        doc = {
            "model_spec": {"name": target.name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": loaded.signature_def_json}},
        }
        return _json(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    async def _predict(self, request: web.Request, target: _Target, api: str) -> web.Response:
        started = time.perf_counter()
        body = await request.read()
        loop = asyncio.get_running_loop()
        runtime_us: float | None = None
        try:
            async with asyncio.timeout(self.request_timeout_s):
                job = functools.partial(
                    predict_job,
                    body,
                    self.registry.views,
                    target,
                    api,
                    self.max_batch_size,
                    content_encoding=request.headers.get("Content-Encoding", ""),
                )
                reply, runtime_us = await loop.run_in_executor(self._executor, job)
            response = _json(reply)
        except TimeoutError:
            response = _error(RequestError("Timed out waiting for notification", http_status=504))
        except RequestError as exc:
            response = _error(exc)
        # Only configured models are counted: arbitrary names in URLs must not grow the series.
        if target.name in self.registry.views:
            status = CODE_BY_HTTP.get(response.status, "UNKNOWN")
            self.metrics.count_request(target.name, status)
            self.metrics.observe_request(target.name, api, (time.perf_counter() - started) * 1e6)
            if runtime_us is not None:
                self.metrics.observe_runtime(target.name, api, runtime_us)
        return response


def _sources(model_name: str, base_path: Path | None, models_config: Path | None) -> list[ModelSource]:
    if models_config is not None:
        return load_models_config(models_config)
    if base_path is None:
        raise ValueError("serve_models needs base_path or models_config")
    return [ModelSource(name=model_name, base_path=base_path)]


@asynccontextmanager
async def serve_models(
    *,
    model_name: str = "score_beater",
    base_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8501,
    poll_interval_s: float = 1.0,
    models_config: Path | None = None,
    max_batch_size: int = 8192,
    request_timeout_s: float = REST_TIMEOUT_S,
    predict_workers: int | None = None,
) -> AsyncIterator[ModelServer]:
    """Run the stand-in on ``host:port`` (0: any free port; see ``.url``) until the block exits.

    Without ``models_config`` it serves one model, ``model_name``, from ``base_path`` with the
    default policy (latest 1). With it, the file defines every model, policy and label, and
    ``base_path`` (when given) replaces the file's ``base_path`` of ``model_name``: the same
    file then works for the official image (``/models/...``) and for local runs.
    ``max_batch_size`` <= 0 turns the batch checks off. The versions present at start are
    loaded before the port opens (as TF Serving does); later ones are polled every
    ``poll_interval_s``.

    Raises:
        ConfigError: the models config is invalid or does not declare ``model_name``.
        OSError: the port cannot be bound.
    """
    metrics = ServerMetrics()
    sources = await asyncio.to_thread(_sources, model_name, base_path, models_config)
    override = (model_name, base_path) if models_config is not None and base_path is not None else None
    registry = ModelRegistry(sources, metrics=metrics, config_path=models_config, base_path_override=override)
    server = ModelServer(
        registry,
        metrics,
        max_batch_size=max_batch_size,
        request_timeout_s=request_timeout_s,
        predict_workers=predict_workers or max(2, os.cpu_count() or 1),
    )
    runner = web.AppRunner(server.make_app(), access_log=None, handle_signals=False)
    try:
        await registry.poll_once()
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        server.url = (
            f"http://{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"http://[{bound[0]}]:{bound[1]}"
        )
        poller = asyncio.create_task(registry.run(poll_interval_s), name="modelserver:poll")
        log.info(
            "modelserver.started",
            url=server.url,
            models=registry.model_names,
            poll_interval_s=poll_interval_s,
        )
        try:
            yield server
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
    finally:
        await runner.cleanup()
        server.close()
        registry.close()
        log.info("modelserver.stopped")


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    async with serve_models(
        model_name=args.model_name,
        base_path=args.model_base_path,
        host=args.host,
        port=args.port,
        poll_interval_s=args.file_system_poll_wait_seconds,
        models_config=args.model_config_file,
        max_batch_size=args.max_batch_size,
    ):
        await stop.wait()


async def command(args: argparse.Namespace) -> int:
    """``scorebeater serve-model``: serve until SIGINT/SIGTERM, then exit 0 (see ``lifecycle``).

    Raises:
        ConfigError: an invalid ``--model-config-file`` or poll interval.
        OSError: the port cannot be bound.
    """
    if not args.file_system_poll_wait_seconds > 0:
        raise ConfigError("serve-model", ["--file-system-poll-wait-seconds must be > 0"])
    await run_until_signal(functools.partial(_serve, args), name="serve-model")
    return 0
