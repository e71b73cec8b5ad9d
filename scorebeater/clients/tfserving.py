"""TFServingClient: TF Serving's REST API (status, metadata, predict) for the prediction stage.

Works against the official ``tensorflow/serving`` image and the embedded stand-in alike
(``reference/tfserving-rest.md``); the messages themselves are
:mod:`scorebeater.clients.tfserving_codec`'s. What the client guarantees:

* **One version per job.** Every call names a version (``/versions/N``); :meth:`pin_version`
  turns "latest" or a label into that number once, so a whole refeed is scored by one model.
* **Readiness from the body.** The status endpoint answers 200 while loading or failed; a
  version is ready only when its state is ``AVAILABLE``.
* **Aliases from metadata.** Input and output names and dtypes come from ``/metadata``,
  read once per version (:meth:`TFServingClient.signature`); the inputs are checked against
  them on every call, and must be exactly the signature's (the caller sends what it declares).
* **Batches below the server's limit**, ``cfg.max_batch_size`` rows per request, at most
  ``cfg.max_concurrency`` in flight over keep-alive connections; row or columnar format;
  optional gzip request bodies.
* **Typed errors by HTTP status**, never by message: 404 :class:`ModelNotFound`, 400
  :class:`BadModelRequest`, 429/503/504 and connection failures :class:`ModelUnavailable`
  (the only ones retried, with backoff, bounded by ``cfg.max_attempts`` and
  ``cfg.retry_budget_s``), anything else :class:`TFServingError`.

TensorFlow is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Literal, Self

import aiohttp
import numpy as np
import structlog

from scorebeater.clients.http import make_session, parse_retry_after, retrying
from scorebeater.clients.tfserving_codec import (
    DEFAULT_SIGNATURE,
    TARGET,
    ModelMetadata,
    VersionStatus,
    decode_predict,
    encode_predict,
    error_for,
    loads,
    output_alias,
    parse_metadata,
    parse_status,
    prepare_inputs,
)
from scorebeater.errors import BadModelRequest, ModelNotFound, ModelUnavailable, TFServingError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from scorebeater.config import TFServingConfig
    from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)

_GZIP_OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are compressed in a worker thread, not on the event loop."""
Api = Literal["predict", "status", "metadata"]


class TFServingClient:
    """Async client of one model on TF Serving's REST API, over one keep-alive session.

    Use as ``async with TFServingClient.open(cfg, "score_beater") as client: ...``. Every
    method is idempotent (reads and predictions) and safe to call concurrently.
    """

    def __init__(
        self,
        cfg: TFServingConfig,
        model_name: str,
        *,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
        signature_name: str = DEFAULT_SIGNATURE,
        output: str | None = None,
        reports_availability: bool = True,
    ) -> None:
        """A client over ``session``, which the caller owns and closes; :meth:`open` builds both.

        ``output`` names the output alias to read (default: the only one, else ``probability``).
        ``reports_availability``: this client's pins and predictions set ``model_available``
        and ``model_info`` (the champion's client); a shadow challenger's client must not, so
        that its outage never reads as the served model's.
        """
        self.cfg = cfg
        self.model_name = model_name
        self.signature_name = signature_name
        self._output = output
        self._metrics = metrics
        self._reports_availability = reports_availability
        self._base = cfg.base_url.rstrip("/") + "/v1/models/" + urllib.parse.quote(model_name, safe="")
        self._session = session
        self._checked: dict[int, ModelMetadata] = {}
        self._limit = asyncio.Semaphore(cfg.max_concurrency)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        cfg: TFServingConfig,
        model_name: str,
        *,
        metrics: Metrics | None = None,
        signature_name: str = DEFAULT_SIGNATURE,
        output: str | None = None,
        reports_availability: bool = True,
    ) -> AsyncIterator[Self]:
        """A ready client for the duration of the block; its session closes on exit.

        Opening makes no request (the server may still be loading: calls retry or report it).
        """
        async with make_session(
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            max_connections=cfg.max_concurrency,
        ) as session:
            yield cls(
                cfg,
                model_name,
                session=session,
                metrics=metrics,
                signature_name=signature_name,
                output=output,
                reports_availability=reports_availability,
            )

    # --- transport ------------------------------------------------------------------------

    def _url(self, *, version: int | None = None, label: str | None = None, suffix: str = "") -> str:
        url = self._base
        if version is not None:
            url += f"/versions/{int(version)}"
        elif label:
            url += "/labels/" + urllib.parse.quote(label, safe="")
        return url + suffix

    def _record(self, api: Api, code: int, started: float) -> None:
        if self._metrics is not None:
            self._metrics.tfserving_requests.labels(api, str(code)).inc()
            self._metrics.tfserving_duration.labels(api).observe(time.perf_counter() - started)

    async def _once(
        self, api: Api, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Any:
        """One HTTP attempt: the parsed JSON reply, or a typed error."""
        started = time.perf_counter()
        try:
            async with self._session.request(method, url, data=body, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            self._record(api, 0, started)
            message = f"{method} {url}: {type(exc).__name__}: {exc}"
            raise ModelUnavailable(TARGET, message, transient=True) from exc
        self._record(api, status, started)
        if status != 200:  # noqa: PLR2004 - HTTP OK
            try:
                message = str(loads(payload).get("error", ""))
            except (ValueError, AttributeError):
                message = payload[:200].decode("utf-8", errors="replace")
            raise error_for(status, f"{method} {url}: {message}", retry_after)
        try:
            return loads(payload)
        except ValueError as exc:
            raise TFServingError(TARGET, f"{method} {url}: reply is not JSON: {exc}", status=status) from exc

    def _on_retry(self, _exc: Exception) -> None:
        if self._metrics is not None:
            self._metrics.tfserving_retries.inc()

    async def _call(
        self,
        api: Api,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One logical call with retries on 429/503/504 and connection failures only."""
        async for attempt in retrying(
            target=TARGET,
            attempts=self.cfg.max_attempts,
            budget_s=self.cfg.retry_budget_s,
            on_retry=self._on_retry,
        ):
            with attempt:
                return await self._once(api, method, url, body, headers or {})
        raise AssertionError("unreachable: retrying() raises the last error")  # pragma: no cover

    # --- status and metadata --------------------------------------------------------------

    async def status(self, version: int | None = None) -> list[VersionStatus]:
        """The model's version states, highest version first (one entry when ``version`` is given).

        A 200 does not mean ready: look for ``AVAILABLE``.

        Raises:
            ModelNotFound: the server knows no version of the model (or not ``version``).
            ModelUnavailable: the server is unreachable or overloaded after retries.
            TFServingError: any other failure.
        """
        return parse_status(await self._call("status", "GET", self._url(version=version)))

    async def metadata(self, version: int | None = None, *, label: str | None = None) -> ModelMetadata:
        """The serving signature of ``version`` (or of ``label``, or the latest when neither).

        Raises:
            ModelNotFound: the version is not loaded (404).
            BadModelRequest: the label is unknown (400).
            ModelUnavailable, TFServingError: as for :meth:`status`.
        """
        doc = await self._call("metadata", "GET", self._url(version=version, label=label, suffix="/metadata"))
        return parse_metadata(doc, self.signature_name)

    async def pin_version(self, label: str | None) -> int:
        """The version to score a whole job with: ``label``'s, or the highest AVAILABLE one.

        Sets ``model_available`` (1 when found, 0 when not) if this client reports availability.

        Raises:
            ModelUnavailable: no version is AVAILABLE (including a model the server does not
                know yet, e.g. a model directory with no version, and an unassigned label).
            TFServingError: any other failure.
        """
        try:
            version = (await self.metadata(label=label)).version if label else await self._latest_available()
        except (ModelNotFound, BadModelRequest) as exc:
            self._set_available(0)
            what = f"label {label!r}" if label else "any version"
            raise ModelUnavailable(
                TARGET, f"{self.model_name}: {what} is not available: {exc}", status=exc.status
            ) from exc
        except ModelUnavailable:
            self._set_available(0)
            raise
        self._set_available(1)
        if self._metrics is not None and self._reports_availability:
            self._metrics.model_info.clear()
            self._metrics.model_info.labels(self.model_name, str(version)).set(1)
        log.debug("tfserving.version_pinned", model=self.model_name, version=version, label=label or None)
        return version

    async def _latest_available(self) -> int:
        states = await self.status()
        available = [s.version for s in states if s.available]
        if not available:
            summary = ", ".join(f"{s.version}:{s.state}" for s in states) or "none"
            raise ModelUnavailable(TARGET, f"no AVAILABLE version of {self.model_name} ({summary})")
        return max(available)

    def _set_available(self, value: int) -> None:
        if self._metrics is not None and self._reports_availability:
            self._metrics.model_available.set(value)

    # --- predict ----------------------------------------------------------------------------

    async def signature(self, version: int) -> ModelMetadata:
        """``version``'s serving signature (:attr:`signature_name`), read from ``/metadata``
        once per version and cached: a version number names one immutable SavedModel.

        Raises:
            BadModelRequest: the signature has no inputs.
            ModelNotFound, ModelUnavailable, TFServingError: as for :meth:`metadata`.
        """
        meta = self._checked.get(version)
        if meta is None:
            meta = await self.metadata(version)
            if not meta.inputs:
                raise BadModelRequest(TARGET, f"{self.model_name} v{version}: signature has no inputs")
            self._checked[version] = meta
        return meta

    async def _predict_chunk(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        start: int,
        stop: int,
        url: str,
        output: str,
        out: np.ndarray,
    ) -> None:
        async with self._limit:
            body = encode_predict(
                arrays, start, stop, signature_name=self.signature_name, fmt=self.cfg.format
            )
            headers = {"Content-Type": "application/json"}
            if self.cfg.gzip:
                if len(body) > _GZIP_OFF_LOOP_BYTES:
                    body = await asyncio.to_thread(gzip.compress, body, 1)
                else:
                    body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            doc = await self._call("predict", "POST", url, body, headers)
        out[start:stop] = decode_predict(doc, output, stop - start, fmt=self.cfg.format, url=url)

    async def predict(self, columns: Mapping[str, Any], *, version: int) -> np.ndarray:
        """Score ``n`` rows with ``version``: returns float64 probabilities of shape ``[n]``.

        ``columns`` maps every signature input alias (and nothing else: see :meth:`signature`)
        to an array whose first dimension is the row count (``[n]`` for the score_beater
        model). The rows go in chunks of ``cfg.max_batch_size``, at most
        ``cfg.max_concurrency`` at a time; results keep row order.
        The values are the model's float32 outputs exactly (widened to float64).

        Raises:
            BadModelRequest: inputs do not match the signature (names, lengths, rank, dtype),
                a value is NaN/infinite, or the server answered 400 (never retried).
            ModelNotFound: ``version`` is not loaded (404; not retried: pin again).
            ModelUnavailable: 429/503/504 or connection failures after retries.
            TFServingError: any other failure, or a reply of the wrong shape.
        """
        try:
            meta = await self.signature(version)
        except ModelNotFound:
            self._set_available(0)
            raise
        where = f"{self.model_name} v{meta.version}"
        arrays, n = prepare_inputs(columns, meta, where=where)
        output = output_alias(meta, self._output, where=where)
        out = np.empty(n, dtype=np.float32)
        if n == 0:
            return out.astype(np.float64)
        url = self._url(version=version, suffix=":predict")
        step = self.cfg.max_batch_size
        tasks = [
            asyncio.create_task(
                self._predict_chunk(
                    arrays, start=start, stop=min(start + step, n), url=url, output=output, out=out
                )
            )
            for start in range(0, n, step)
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            if isinstance(exc, ModelNotFound):
                self._set_available(0)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return out.astype(np.float64)
