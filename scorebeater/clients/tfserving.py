"""TFServingClient: TF Serving's REST API (status, metadata, predict) for the prediction stage.

Works against the official ``tensorflow/serving`` image and the embedded stand-in alike
(``reference/tfserving-rest.md``). What it guarantees:

* **One version per job.** Every call names a version (``/versions/N``); :meth:`pin_version`
  turns "latest" or a label into that number once, so a whole refeed is scored by one model.
* **Readiness from the body.** The status endpoint answers 200 while loading or failed; a
  version is ready only when its state is ``AVAILABLE``.
* **Aliases from metadata.** Input and output names and dtypes come from ``/metadata``
  (``__saved_model_init_op`` skipped); the inputs are checked against them once per version.
* **Batches below the server's limit**, ``cfg.max_batch_size`` rows per request, at most
  ``cfg.max_concurrency`` in flight over keep-alive connections; row (``instances``) or
  columnar (``inputs``) format; optional gzip request bodies; orjson both ways (a reply holding
  the ``NaN``/``Infinity`` tokens TF Serving may print is read with the standard library);
  float inputs that hold whole numbers (counts) are written as JSON integers, the same numbers.
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
import itertools
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

import aiohttp
import numpy as np
import orjson
import structlog

from scorebeater.clients.http import make_session, parse_retry_after, retrying
from scorebeater.errors import BadModelRequest, ModelNotFound, ModelUnavailable, TFServingError
from scorebeater.inputs import OUTPUT_NAME

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from scorebeater.config import TFServingConfig
    from scorebeater.metrics import Metrics

log = structlog.get_logger(__name__)

TARGET = "tfserving"
INIT_OP = "__saved_model_init_op"
DEFAULT_SIGNATURE = "serving_default"
_GZIP_OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are compressed in a worker thread, not on the event loop."""
_NUMERIC = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64}
_INTEGER = {"DT_INT8", "DT_INT16", "DT_INT32", "DT_INT64", "DT_UINT8", "DT_UINT16", "DT_UINT32", "DT_UINT64"}
_EXACT_INT_IN_DOUBLE = 2**53
Api = Literal["predict", "status", "metadata"]


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One entry of the model status reply."""

    version: int
    state: str
    """UNKNOWN, START, LOADING, AVAILABLE, UNLOADING or END."""
    error_code: str = "OK"
    error_message: str = ""

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output alias of a signature; ``shape`` is ``None`` for an unknown rank, -1 unknown dim."""

    alias: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """A version's serving signature, read from ``/metadata``."""

    name: str
    version: int
    signature_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def _loads(body: bytes) -> Any:
    """Parse a reply; TF Serving's non-finite tokens (not strict JSON) fall back to the stdlib."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if b"NaN" not in body and b"Infinity" not in body:
            raise
    return json.loads(body)


def _floats(value: Any, rows: int) -> np.ndarray:
    """A reply tensor as float32; ``[[p], [p], ...]`` (``rows`` x 1) is read without nested lists."""
    if isinstance(value, list) and len(value) == rows and rows and isinstance(value[0], list):
        with contextlib.suppress(TypeError, ValueError):
            flat = np.fromiter(itertools.chain.from_iterable(value), dtype=np.float32)
            if flat.size == rows:
                return flat.reshape(rows, 1)
    return np.asarray(value, dtype=np.float32)


def _whole_as_int(array: np.ndarray) -> np.ndarray:
    """A float array of whole numbers as int64, else unchanged.

    JSON ``3`` and ``3.0`` are the same number, and TF Serving reads any JSON number for a
    float input, but orjson writes int64 about three times faster than float32 and shorter
    (the model's inputs are counts). Kept as floats: values beyond 2**53 (not exact as a
    double) and ``-0.0`` (its sign would be lost).
    """
    if array.size == 0 or not np.array_equal(array, np.trunc(array)):
        return array
    if np.abs(array).max() > _EXACT_INT_IN_DOUBLE or (np.signbit(array) & (array == 0)).any():
        return array
    return array.astype(np.int64)


def _error_for(status: int, message: str, retry_after_s: float | None) -> TFServingError:
    if status == 404:  # noqa: PLR2004 - HTTP status codes
        return ModelNotFound(TARGET, message, status=status)
    if status == 400:  # noqa: PLR2004
        return BadModelRequest(TARGET, message, status=status)
    if status in (429, 503, 504):
        return ModelUnavailable(TARGET, message, status=status, transient=True, retry_after_s=retry_after_s)
    return TFServingError(TARGET, message, status=status)


def _spec(alias: str, raw: Mapping[str, Any]) -> TensorSpec:
    shape_doc = raw.get("tensor_shape") or {}
    shape = (
        None
        if shape_doc.get("unknown_rank")
        else tuple(int(d.get("size", -1)) for d in shape_doc.get("dim", []))
    )
    return TensorSpec(alias=alias, dtype=str(raw.get("dtype", "DT_INVALID")), shape=shape)


def parse_metadata(doc: Mapping[str, Any], signature_name: str = DEFAULT_SIGNATURE) -> ModelMetadata:
    """The signature ``signature_name`` from a ``/metadata`` reply (TF Serving's nested layout).

    Raises:
        TFServingError: the reply lacks the signature or is not shaped as TF Serving's.
    """
    try:
        spec = doc["model_spec"]
        defs = doc["metadata"]["signature_def"]["signature_def"]
        version = int(spec["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TFServingError(TARGET, f"metadata reply is not TF Serving's shape: {exc!r}") from exc
    signatures = {k: v for k, v in defs.items() if k != INIT_OP}
    if signature_name not in signatures:
        raise TFServingError(
            TARGET, f"model has no signature {signature_name!r}; it has {sorted(signatures)}", status=200
        )
    sig = signatures[signature_name]
    return ModelMetadata(
        name=str(spec.get("name", "")),
        version=version,
        signature_name=signature_name,
        inputs={a: _spec(a, r) for a, r in (sig.get("inputs") or {}).items()},
        outputs={a: _spec(a, r) for a, r in (sig.get("outputs") or {}).items()},
    )


class TFServingClient:
    """Async client of one model on TF Serving's REST API; owns one keep-alive session.

    Use as ``async with TFServingClient(cfg, "score_beater") as client: ...``. Every method is
    idempotent (reads and predictions) and safe to call concurrently.
    """

    def __init__(
        self,
        cfg: TFServingConfig,
        model_name: str,
        *,
        metrics: Metrics | None = None,
        signature_name: str = DEFAULT_SIGNATURE,
        output: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.model_name = model_name
        self.signature_name = signature_name
        self._output = output
        self._metrics = metrics
        self._base = cfg.base_url.rstrip("/") + "/v1/models/" + urllib.parse.quote(model_name, safe="")
        self._session: aiohttp.ClientSession | None = None
        self._checked: dict[int, ModelMetadata] = {}
        self._limit = asyncio.Semaphore(cfg.max_concurrency)

    async def __aenter__(self) -> Self:
        self._session = make_session(
            timeout_s=self.cfg.timeout_s,
            connect_timeout_s=self.cfg.connect_timeout_s,
            max_connections=self.cfg.max_concurrency,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        if self._session is None:
            raise RuntimeError("TFServingClient used outside 'async with'")
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
                message = str(_loads(payload).get("error", ""))
            except (ValueError, AttributeError):
                message = payload[:200].decode("utf-8", errors="replace")
            raise _error_for(status, f"{method} {url}: {message}", retry_after)
        try:
            return _loads(payload)
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
        doc = await self._call("status", "GET", self._url(version=version))
        try:
            entries = [
                VersionStatus(
                    version=int(e["version"]),
                    state=str(e["state"]),
                    error_code=str((e.get("status") or {}).get("error_code", "OK")),
                    error_message=str((e.get("status") or {}).get("error_message", "")),
                )
                for e in doc["model_version_status"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise TFServingError(TARGET, f"status reply is not TF Serving's shape: {exc!r}") from exc
        return sorted(entries, key=lambda e: e.version, reverse=True)

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

        Sets ``model_available`` (1 when found, 0 when not).

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
        if self._metrics is not None:
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
        if self._metrics is not None:
            self._metrics.model_available.set(value)

    # --- predict ----------------------------------------------------------------------------

    async def _signature(self, version: int) -> ModelMetadata:
        meta = self._checked.get(version)
        if meta is None:
            meta = await self.metadata(version)
            if not meta.inputs:
                raise BadModelRequest(TARGET, f"{self.model_name} v{version}: signature has no inputs")
            self._checked[version] = meta
        return meta

    def _output_alias(self, meta: ModelMetadata) -> str:
        if self._output is not None:
            wanted = self._output
        elif len(meta.outputs) == 1:
            (wanted,) = meta.outputs
        else:
            wanted = OUTPUT_NAME
        if wanted not in meta.outputs:
            raise BadModelRequest(
                TARGET,
                f"{self.model_name} v{meta.version}: no output {wanted!r}; outputs: {sorted(meta.outputs)}",
            )
        return wanted

    def _prepare(self, columns: Mapping[str, Any], meta: ModelMetadata) -> tuple[dict[str, np.ndarray], int]:
        """Check names, lengths, dtypes and finiteness; returns contiguous arrays and the row count."""
        where = f"{self.model_name} v{meta.version}"
        missing = sorted(set(meta.inputs) - set(columns))
        extra = sorted(set(columns) - set(meta.inputs))
        if missing or extra:
            raise BadModelRequest(
                TARGET, f"{where}: inputs do not match the signature: missing {missing}, unexpected {extra}"
            )
        arrays: dict[str, np.ndarray] = {}
        lengths: set[int] = set()
        for name, spec in meta.inputs.items():
            dtype = _NUMERIC.get(spec.dtype)
            if dtype is None and spec.dtype not in _INTEGER and spec.dtype != "DT_BOOL":
                raise BadModelRequest(
                    TARGET, f"{where}: input {name!r} has dtype {spec.dtype}, not supported"
                )
            raw = np.asarray(columns[name])
            try:
                array = (
                    np.ascontiguousarray(raw, dtype=dtype) if dtype is not None else np.ascontiguousarray(raw)
                )
            except (TypeError, ValueError) as exc:
                raise BadModelRequest(TARGET, f"{where}: input {name!r} is not {spec.dtype}: {exc}") from exc
            if array.ndim == 0:
                raise BadModelRequest(TARGET, f"{where}: input {name!r} must have a batch dimension")
            if spec.shape is not None and array.ndim != len(spec.shape):
                raise BadModelRequest(
                    TARGET,
                    f"{where}: input {name!r} has rank {array.ndim}, the signature wants {len(spec.shape)}",
                )
            if dtype is not None:
                finite = np.isfinite(array)
                if finite.ndim > 1:
                    finite = finite.all(axis=tuple(range(1, finite.ndim)))
                bad = np.flatnonzero(~finite)
                if bad.size:
                    raise BadModelRequest(
                        TARGET,
                        f"{where}: input {name!r} is not finite at row {int(bad[0])} ({bad.size} rows)",
                    )
                array = _whole_as_int(array)
            arrays[name] = array
            lengths.add(array.shape[0])
        if len(lengths) != 1:
            raise BadModelRequest(TARGET, f"{where}: inputs have different lengths {sorted(lengths)}")
        return arrays, lengths.pop()

    def _encode(self, arrays: Mapping[str, np.ndarray], start: int, stop: int) -> bytes:
        names = list(arrays)
        single = len(names) == 1
        doc: dict[str, Any] = {"signature_name": self.signature_name}
        if self.cfg.format == "columnar":
            doc["inputs"] = (
                arrays[names[0]][start:stop] if single else {n: arrays[n][start:stop] for n in names}
            )
        elif single:
            doc["instances"] = arrays[names[0]][start:stop]
        else:
            cols = [arrays[n][start:stop].tolist() for n in names]
            doc["instances"] = [dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)]
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    def _decode(self, doc: Any, output: str, rows: int, url: str) -> np.ndarray:
        reply_key = "predictions" if self.cfg.format == "row" else "outputs"
        try:
            value = doc[reply_key]
            if isinstance(value, dict):
                value = value[output]
            elif value and isinstance(value, list) and isinstance(value[0], dict):
                value = [row[output] for row in value]
            result = _floats(value, rows)
        except (KeyError, TypeError, ValueError) as exc:
            raise TFServingError(
                TARGET, f"POST {url}: unexpected predict reply: {exc!r}", status=200
            ) from exc
        flat = result.reshape(result.shape[0], -1) if result.ndim else result.reshape(1, 1)
        if flat.shape != (rows, 1):
            raise TFServingError(
                TARGET,
                f"POST {url}: reply has shape {list(result.shape)} for {rows} rows; expected [{rows}, 1]",
                status=200,
            )
        return flat[:, 0]

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
            body = self._encode(arrays, start, stop)
            headers = {"Content-Type": "application/json"}
            if self.cfg.gzip:
                if len(body) > _GZIP_OFF_LOOP_BYTES:
                    body = await asyncio.to_thread(gzip.compress, body, 1)
                else:
                    body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            doc = await self._call("predict", "POST", url, body, headers)
        out[start:stop] = self._decode(doc, output, stop - start, url)

    async def predict(self, columns: Mapping[str, Any], *, version: int) -> np.ndarray:
        """Score ``n`` rows with ``version``: returns float64 probabilities of shape ``[n]``.

        ``columns`` maps every signature input alias to an array whose first dimension is the
        row count (``[n]`` for the score_beater model). The rows go in chunks of
        ``cfg.max_batch_size``, at most ``cfg.max_concurrency`` at a time; results keep row order.
        The values are the model's float32 outputs exactly (widened to float64).

        Raises:
            BadModelRequest: inputs do not match the signature (names, lengths, rank, dtype),
                a value is NaN/infinite, or the server answered 400 (never retried).
            ModelNotFound: ``version`` is not loaded (404; not retried: pin again).
            ModelUnavailable: 429/503/504 or connection failures after retries.
            TFServingError: any other failure, or a reply of the wrong shape.
        """
        try:
            meta = await self._signature(version)
        except ModelNotFound:
            self._set_available(0)
            raise
        arrays, n = self._prepare(columns, meta)
        output = self._output_alias(meta)
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
