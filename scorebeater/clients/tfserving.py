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
* **Replicas** (``base_url`` as a list, :mod:`scorebeater.clients.tfserving_replicas`): each
  attempt goes to the healthy replica with the fewest requests outstanding; a retry goes to
  another one, within the same attempts and budget. A replica that fails to connect, or
  lacks a version the others serve, is ejected for ``cfg.eject_cooldown_s`` and probed back
  in. A pin reads every replica's status and pins only a version every healthy replica has
  ``AVAILABLE`` (a label must name the same version on all), waiting up to
  ``cfg.pin_wait_s`` for them to agree.

TensorFlow is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

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
from scorebeater.clients.tfserving_replicas import Replica, ReplicaSet, merge_statuses, most_served
from scorebeater.errors import BadModelRequest, ModelNotFound, ModelUnavailable, TFServingError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from scorebeater.config import TFServingConfig
    from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)

_GZIP_OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are compressed in a worker thread, not on the event loop."""
_PIN_POLL_S = 0.5
"""How often a pin reads the replicas again while they disagree on the version."""
Api = Literal["predict", "status", "metadata"]
T = TypeVar("T")


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
        """A client over ``session``, which the caller owns and closes; :meth:`open` builds both
        (and reaps the replicas' probes: a caller of this constructor awaits
        ``client.replicas.aclose()`` itself).

        ``output`` names the output alias to read (default: the only one, else ``probability``).
        ``reports_availability``: this client's pins and predictions set ``model_available``
        and ``model_info``, and its replica set the healthy replicas gauge (the champion's
        client); a shadow challenger's client must not, so that its outage never reads as the
        served model's.
        """
        self.cfg = cfg
        self.model_name = model_name
        self.signature_name = signature_name
        self._output = output
        self._metrics = metrics
        self._reports_availability = reports_availability
        self._path = "/v1/models/" + urllib.parse.quote(model_name, safe="")
        self._session = session
        self._checked: dict[int, ModelMetadata] = {}
        self._limit = asyncio.Semaphore(cfg.max_concurrency)
        self.replicas = ReplicaSet(
            cfg.base_urls,
            cooldown_s=cfg.eject_cooldown_s,
            metrics=metrics,
            report_health=reports_availability,
        )
        self.replicas.health_check = self._health_check
        self._pins: dict[str | None, int] = {}
        """The version each label (``None``: latest) last pinned: what a probed replica must serve."""

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
            # max_concurrency bounds the predicts in flight; the health probes need a few more.
            max_connections=cfg.max_concurrency + len(cfg.base_urls),
        ) as session:
            client = cls(
                cfg,
                model_name,
                session=session,
                metrics=metrics,
                signature_name=signature_name,
                output=output,
                reports_availability=reports_availability,
            )
            try:
                yield client
            finally:
                await client.replicas.aclose()

    # --- transport ------------------------------------------------------------------------

    def _url(self, *, version: int | None = None, label: str | None = None, suffix: str = "") -> str:
        """The path (from ``/v1``) of the model, a version or a label; replicas prefix their URL."""
        url = self._path
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

    async def _attempt(
        self,
        api: Api,
        method: str,
        replica: Replica,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        fail_over: bool,
    ) -> Any:
        """One attempt on ``replica``, which is ejected when it does not answer.

        ``fail_over``: another healthy replica is left to try, so a 404 here (this replica
        may lack a version the others serve) is raised as a transient :class:`ModelUnavailable`
        caused by the :class:`ModelNotFound`, which the caller retries elsewhere.
        """
        with self.replicas.using(replica):
            try:
                return await self._once(api, method, replica.url + path, body, headers or {})
            except ModelUnavailable as exc:
                self.replicas.failed(replica)
                if exc.status is None:
                    self.replicas.eject(replica, f"no response: {exc}")
                raise
            except ModelNotFound as exc:
                if not fail_over:
                    raise
                self.replicas.failed(replica)
                raise ModelUnavailable(
                    TARGET, f"{replica.name} lacks it: {exc}", status=exc.status, transient=True
                ) from exc
            except TFServingError as exc:
                if exc.status is not None and exc.status >= 500:  # noqa: PLR2004 - HTTP 5xx
                    self.replicas.failed(replica)
                raise

    async def _call(
        self,
        api: Api,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One logical call with retries on 429/503/504 and connection failures only.

        Each attempt goes to the least loaded healthy replica this call has not tried yet. A
        replica that answered 404 is ejected once another one has served the call: it lacks
        what the others serve (when none does, the 404 is the answer and nobody is ejected).
        """
        tried: set[int] = set()
        missing: list[Replica] = []
        async for attempt in retrying(
            target=TARGET,
            attempts=self.cfg.max_attempts,
            budget_s=self.cfg.retry_budget_s,
            on_retry=self._on_retry,
        ):
            with attempt:
                replica = self.replicas.pick(avoid=tried)
                tried.add(replica.index)
                fail_over = any(r.index not in tried for r in self.replicas.healthy())
                try:
                    reply = await self._attempt(
                        api, method, replica, path, body=body, headers=headers, fail_over=fail_over
                    )
                except ModelUnavailable as exc:
                    if isinstance(exc.__cause__, ModelNotFound):
                        missing.append(replica)
                    raise
                for lagging in missing:
                    self.replicas.eject(lagging, f"answered 404 for what {replica.name} served")
                return reply
        raise AssertionError("unreachable: retrying() raises the last error")  # pragma: no cover

    async def _survey(
        self, api: Api, path: str, read: Callable[[Any], T]
    ) -> list[tuple[Replica, T | TFServingError]]:
        """Ask every replica to survey (:meth:`ReplicaSet.survey_targets`) the same GET, one
        attempt each, and retry the whole round (the usual policy) while none answers.

        Returns each answering replica's ``read(reply)``, or its 404/400 error. A replica that
        does not answer is ejected and left out.

        Raises:
            ModelUnavailable: no replica answered, after retries.
            TFServingError: a replica answered with another error (never retried).
        """

        async def one(replica: Replica) -> T | TFServingError:
            try:
                return read(await self._attempt(api, "GET", replica, path, fail_over=False))
            except (ModelNotFound, BadModelRequest) as exc:
                return exc

        async for attempt in retrying(
            target=TARGET,
            attempts=self.cfg.max_attempts,
            budget_s=self.cfg.retry_budget_s,
            on_retry=self._on_retry,
        ):
            with attempt:
                targets = self.replicas.survey_targets()
                results = await asyncio.gather(*(one(r) for r in targets), return_exceptions=True)
                answers: list[tuple[Replica, T | TFServingError]] = []
                unavailable: list[ModelUnavailable] = []
                for replica, result in zip(targets, results, strict=True):
                    if isinstance(result, ModelUnavailable):
                        unavailable.append(result)
                    elif isinstance(result, BaseException):
                        raise result
                    else:
                        answers.append((replica, result))
                if not answers:
                    raise unavailable[0]
                return answers
        raise AssertionError("unreachable: retrying() raises the last error")  # pragma: no cover

    # --- status and metadata --------------------------------------------------------------

    async def _statuses(self, version: int | None) -> list[tuple[Replica, list[VersionStatus]]]:
        """The version states of each replica worth asking (a 404 reads as no versions).

        Without ``version`` this is also a health check: while some replica has a version
        ``AVAILABLE``, one that has none is ejected, and an ejected one that has some is restored.

        Raises:
            ModelNotFound: every replica answered 404 (the first one's error).
            ModelUnavailable, TFServingError: as for :meth:`status`.
        """
        answers = await self._survey("status", self._url(version=version), parse_status)
        found = [(r, a) for r, a in answers if not isinstance(a, TFServingError)]
        if not found:
            raise next(a for _, a in answers if isinstance(a, TFServingError))
        if version is not None:
            # A replica without that version answered 404: it lists none of it.
            return [(r, [] if isinstance(a, TFServingError) else a) for r, a in answers]
        serving = [(r, a) for r, a in found if any(s.available for s in a)]
        if not serving:
            return found  # no replica is better than another: report them all
        for replica, states in found:
            if any(s.available for s in states):
                self.replicas.restore(replica)
            else:
                self.replicas.eject(replica, "no AVAILABLE version")
        return serving

    async def status(self, version: int | None = None) -> list[VersionStatus]:
        """The model's version states, highest version first (one entry when ``version`` is given).

        A 200 does not mean ready: look for ``AVAILABLE``. With several replicas, the states
        are merged over the healthy ones (:func:`merge_statuses`): a version is ``AVAILABLE``
        only when it is on every one of them.

        Raises:
            ModelNotFound: the server knows no version of the model (or not ``version``).
            ModelUnavailable: the server is unreachable or overloaded after retries.
            TFServingError: any other failure.
        """
        per_replica = await self._statuses(version)
        return merge_statuses([(r.name, states) for r, states in per_replica])

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

        With several replicas, only a version every healthy replica serves (a label must name
        the same version on each). While they disagree (a version loading, a label moving on
        some only) it reads them again for up to ``cfg.pin_wait_s`` seconds; then it pins the
        version most of them serve (ties: the higher) and ejects the others.

        Sets ``model_available`` (1 when found, 0 when not) if this client reports availability.

        Raises:
            ModelUnavailable: no version is AVAILABLE (including a model the server does not
                know yet, e.g. a model directory with no version, and an unassigned label).
            TFServingError: any other failure.
        """
        label = label or None
        try:
            version = await self._pin(label)
        except (ModelNotFound, BadModelRequest) as exc:
            self._set_available(0)
            what = f"label {label!r}" if label else "any version"
            raise ModelUnavailable(
                TARGET, f"{self.model_name}: {what} is not available: {exc}", status=exc.status
            ) from exc
        except ModelUnavailable:
            self._set_available(0)
            raise
        self._pins[label] = version
        self._set_available(1)
        if self._metrics is not None and self._reports_availability:
            self._metrics.model_info.clear()
            self._metrics.model_info.labels(self.model_name, str(version)).set(1)
        log.debug("tfserving.version_pinned", model=self.model_name, version=version, label=label)
        return version

    async def _pin(self, label: str | None) -> int:
        deadline = time.monotonic() + self.cfg.pin_wait_s
        waited = False
        while True:
            served = await (self._label_versions(label) if label else self._available_versions())
            common = frozenset.intersection(*(versions for _, versions in served))
            if common:
                if waited:
                    log.info(
                        "tfserving.replicas_agree", model=self.model_name, label=label, version=max(common)
                    )
                return max(common)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not waited:
                waited = True
                log.warning(
                    "tfserving.replicas_disagree",
                    model=self.model_name,
                    label=label,
                    versions={r.name: sorted(v) for r, v in served},
                    wait_s=self.cfg.pin_wait_s,
                )
            await asyncio.sleep(min(_PIN_POLL_S, left))  # replicas load and poll on their own clocks
        version = most_served([versions for _, versions in served])
        if version is None:  # pragma: no cover - the readers raise when no replica serves any
            raise ModelUnavailable(TARGET, f"{self.model_name}: no replica serves a version")
        lagging = [r for r, versions in served if version not in versions]
        log.warning(
            "tfserving.replicas_lagging",
            model=self.model_name,
            label=label,
            version=version,
            lagging=[r.name for r in lagging],
            waited_s=self.cfg.pin_wait_s,
        )
        for replica in lagging:
            self.replicas.eject(replica, f"does not serve version {version}")
        return version

    async def _available_versions(self) -> list[tuple[Replica, frozenset[int]]]:
        """Each healthy replica's AVAILABLE versions (at least one has some).

        Raises:
            ModelUnavailable: no replica has a version AVAILABLE.
            ModelNotFound, TFServingError: as for :meth:`_statuses`.
        """
        per_replica = await self._statuses(None)
        served = [(r, frozenset(s.version for s in states if s.available)) for r, states in per_replica]
        if not any(versions for _, versions in served):
            merged = merge_statuses([(r.name, states) for r, states in per_replica])
            summary = ", ".join(f"{s.version}:{s.state}" for s in merged) or "none"
            raise ModelUnavailable(TARGET, f"no AVAILABLE version of {self.model_name} ({summary})")
        return served

    async def _label_versions(self, label: str) -> list[tuple[Replica, frozenset[int]]]:
        """The version ``label`` names on each replica that answers (empty: unknown there).

        Raises:
            BadModelRequest, ModelNotFound: no replica resolves the label (the first one's error).
            ModelUnavailable, TFServingError: as for :meth:`status`.
        """
        answers = await self._survey(
            "metadata",
            self._url(label=label, suffix="/metadata"),
            lambda doc: parse_metadata(doc, self.signature_name).version,
        )
        served = [(r, frozenset() if isinstance(a, TFServingError) else frozenset((a,))) for r, a in answers]
        if not any(versions for _, versions in served):
            raise next(a for _, a in answers if isinstance(a, TFServingError))
        return served

    async def _health_check(self, replica: Replica) -> bool:
        """An ejected replica's probe: it answers the model status with a version AVAILABLE,
        and with every version this client pinned last (it can take this client's requests)."""
        try:
            doc = await self._attempt("status", "GET", replica, self._url(), fail_over=False)
            states = parse_status(doc)
        except TFServingError as exc:
            log.info("tfserving.replica_probe_failed", replica=replica.name, error=str(exc))
            return False
        available = {s.version for s in states if s.available}
        return bool(available) and set(self._pins.values()) <= available

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
