"""Version discovery, hot load/unload, version policy and labels, as TF Serving's manager does.

Every ``poll_interval_s`` the registry lists each model's base path. A child directory whose
whole name is a decimal integer (fitting in an int64) is a version; anything else (``.tmp-3``,
``README``) is skipped. The policy (``latest N``, default ``latest 1``; ``all``; ``specific``)
picks the *aspired* versions. Then, in this order:

1. each aspired version not yet loaded is loaded (START -> LOADING -> AVAILABLE), highest
   first, in a worker thread; a failed load ends in END with an error status;
2. each loaded version no longer aspired is unloaded (UNLOADING -> END), but only once some
   aspired version is AVAILABLE: like TF Serving's ``AvailabilityPreservingPolicy``, a new
   version is loaded before the old one goes, and a model never loses its last servable
   version because a newer one failed to load;
3. labels from ``models.config`` are applied: a label may only point at an AVAILABLE version;
   until its version is available a new label stays unassigned and a moved label keeps its
   old version.

A version that failed to load is retried on a later poll only if its directory changed (inode,
mtime, or ``saved_model.pb``'s size/mtime): publish versions atomically (write ``.tmp-N``, then
rename to ``N``), and a partial copy that failed is picked up again once completed. Files
overwritten inside a version directory that loaded are *not* reloaded (publish a new version).

With a ``models.config`` file, it is re-read when its mtime or size changes; an invalid file is
logged and the previous one stays in force; a model removed from it is unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from scorebeater.errors import ConfigError
from scorebeater.modelserver.jsonio import RequestError
from scorebeater.modelserver.modelsconfig import ModelSource, load_models_config
from scorebeater.modelserver.tensors import DTYPES, TensorInfo

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from scorebeater.modelserver.metrics import ServerMetrics

log = structlog.get_logger(__name__)

INT64_MAX = 2**63 - 1
_VERSION_DIR = re.compile(r"[0-9]+")

# TensorFlow error codes (tf.errors.*) by number, and how TF Serving maps them to HTTP.
ERROR_CODE_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
HTTP_BY_CODE = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
CODE_BY_HTTP = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class LoadError(Exception):
    """A version directory could not be loaded; ``code`` is a TF error-code name."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature of a loaded SavedModel; ``fn`` takes the inputs as keyword tensors."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    fn: Callable[..., Any] | None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A loaded version: its signatures and the ``signature_def`` JSON served by ``/metadata``."""

    path: Path
    signatures: Mapping[str, Signature]
    signature_def_json: Mapping[str, Any]
    handle: Any = None
    """Keeps the loaded TensorFlow object (and so its variables) alive while served."""

    def run(self, signature: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call the signature's concrete function (blocking; run in a worker thread).

        Raises:
            RequestError: TensorFlow rejected the call; the HTTP status follows its error code.
        """
        import tensorflow as tf  # noqa: PLC0415 - TensorFlow is imported only when a model runs

        fn = self.signatures[signature].fn
        if fn is None:
            raise RequestError(f"Signature {signature} cannot be run", http_status=500)
        try:
            result = fn(**{name: tf.constant(value) for name, value in arrays.items()})
        except tf.errors.OpError as exc:
            code = ERROR_CODE_NAMES.get(exc.error_code, "UNKNOWN")
            raise RequestError(exc.message, http_status=HTTP_BY_CODE[code]) from exc
        except (TypeError, ValueError) as exc:
            raise RequestError(str(exc)) from exc
        return {alias: result[alias].numpy() for alias in self.signatures[signature].outputs}


def _tensor_info(alias: str, proto: Any) -> TensorInfo:
    from tensorflow.core.framework import types_pb2  # noqa: PLC0415 - TensorFlow only when loading

    shape = None if proto.tensor_shape.unknown_rank else tuple(int(d.size) for d in proto.tensor_shape.dim)
    return TensorInfo(
        alias=alias, dtype=types_pb2.DataType.Name(proto.dtype), shape=shape, tensor_name=proto.name
    )


def _warm_up(signatures: Mapping[str, Signature]) -> None:
    """Run each numeric signature once on a one-row zero batch, so the first request pays no setup."""
    for sig in signatures.values():
        if sig.fn is None or not sig.inputs:
            continue
        arrays: dict[str, np.ndarray] = {}
        for alias, info in sig.inputs.items():
            if info.shape is None or not info.shape or any(d < 0 for d in info.shape[1:]):
                break
            dtype = DTYPES.get(info.dtype)
            if dtype is None or dtype.kind == "string":
                break
            arrays[alias] = np.zeros((1, *info.shape[1:]), dtype=dtype.numpy)
        else:
            with contextlib.suppress(Exception):  # warm-up is best effort; real requests report errors
                LoadedModel(Path(), {sig.name: sig}, {}).run(sig.name, arrays)


def load_saved_model(path: Path) -> LoadedModel:
    """Load one SavedModel version directory (blocking: call in a worker thread).

    Reads ``saved_model.pb`` for the signature defs (what ``/metadata`` serves, as TF Serving
    does) and ``tf.saved_model.load`` for the concrete functions, then warms each signature up.

    Raises:
        LoadError: ``NOT_FOUND`` when there is no ``saved_model.pb``/``.pbtxt``; ``INVALID_ARGUMENT``
            or ``UNKNOWN`` when it cannot be parsed or loaded.
    """
    pb, pbtxt = path / "saved_model.pb", path / "saved_model.pbtxt"
    if not pb.is_file() and not pbtxt.is_file():
        raise LoadError(
            "NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}"
        )
    # TensorFlow (3 s, 600 MB) is imported by the first load, in the loader thread.
    import tensorflow as tf  # noqa: PLC0415
    from google.protobuf import json_format, text_format  # type: ignore[import-untyped]  # noqa: PLC0415
    from tensorflow.core.protobuf import saved_model_pb2  # noqa: PLC0415

    saved = saved_model_pb2.SavedModel()
    try:
        if pb.is_file():
            saved.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse(pbtxt.read_text(encoding="utf-8"), saved)
    except Exception as exc:
        raise LoadError("INVALID_ARGUMENT", f"Could not parse the SavedModel at {path}: {exc}") from exc
    if not saved.meta_graphs:
        raise LoadError("INVALID_ARGUMENT", f"The SavedModel at {path} has no MetaGraphDef")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise LoadError("UNKNOWN", f"Could not load the SavedModel at {path}: {exc}") from exc
    signature_defs = saved.meta_graphs[0].signature_def
    signatures: dict[str, Signature] = {}
    for name, sig in signature_defs.items():
        fn = loaded.signatures.get(name, None)
        signatures[name] = Signature(
            name=name,
            method_name=sig.method_name,
            inputs={alias: _tensor_info(alias, info) for alias, info in sig.inputs.items()},
            outputs={alias: _tensor_info(alias, info) for alias, info in sig.outputs.items()},
            fn=fn,
        )
    defs_json = {
        name: json_format.MessageToDict(
            sig, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        for name, sig in signature_defs.items()
    }
    _warm_up(signatures)
    return LoadedModel(path=path, signatures=signatures, signature_def_json=defs_json, handle=loaded)


# --- states -----------------------------------------------------------------------------------

Fingerprint = tuple[int, ...]


@dataclass(slots=True)
class VersionState:
    """One version's place in TF Serving's lifecycle (START, LOADING, AVAILABLE, UNLOADING, END)."""

    version: int
    state: str = "START"
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: Fingerprint = ()
    loaded: LoadedModel | None = None


@dataclass(slots=True)
class _Model:
    source: ModelSource
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    warned: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class ModelView:
    """An immutable view of one model for request threads: AVAILABLE versions and labels."""

    available: Mapping[int, LoadedModel]
    labels: Mapping[str, int]


def servable_not_found(name: str, version: int | None) -> RequestError:
    spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
    return RequestError(f"Servable not found for request: {spec}", http_status=404)


def resolve(
    views: Mapping[str, ModelView], name: str, version: int | None, label: str | None
) -> tuple[int, LoadedModel]:
    """Find the servable a request names, as TF Serving's ``ServerCore`` does.

    No version and no label: the highest AVAILABLE version.

    Raises:
        RequestError: 400 ``Unrecognized servable version label`` for an unknown label (or a
            label of an unknown model); 404 ``Servable not found for request: ...`` otherwise.
    """
    view = views.get(name)
    if label is not None:
        if view is None or label not in view.labels:
            raise RequestError(f"Unrecognized servable version label: {label}")
        version = view.labels[label]
    if view is None:
        raise servable_not_found(name, version)
    if version is None:
        if not view.available:
            raise servable_not_found(name, None)
        version = max(view.available)
    loaded = view.available.get(version)
    if loaded is None:
        raise servable_not_found(name, version)
    return version, loaded


def _scan(base_path: Path) -> dict[int, tuple[Path, Fingerprint]] | None:
    """Version directories under ``base_path`` with their fingerprints; ``None`` if it is missing."""
    try:
        entries = sorted(os.scandir(base_path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    found: dict[int, tuple[Path, Fingerprint]] = {}
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry.name) or not entry.is_dir():
            continue
        version = int(entry.name)
        if version > INT64_MAX or version in found:  # "007" and "7": the first one wins
            continue
        path = Path(entry.path)
        try:
            st = entry.stat()
            parts = [st.st_ino, st.st_mtime_ns]
            for child in ("saved_model.pb", "saved_model.pbtxt", "variables"):
                with contextlib.suppress(FileNotFoundError):
                    cst = (path / child).stat()
                    parts += [cst.st_ino, cst.st_mtime_ns, cst.st_size]
        except FileNotFoundError:  # removed while listing
            continue
        found[version] = (path, tuple(parts))
    return found


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


class ModelRegistry:
    """The models a stand-in serves and the state of each of their versions.

    Mutated only on the event loop (``poll_once``); request threads read ``views``, an
    immutable snapshot swapped whole whenever something changes.
    """

    def __init__(
        self,
        sources: list[ModelSource],
        *,
        metrics: ServerMetrics | None = None,
        config_path: Path | None = None,
        base_path_override: tuple[str, Path] | None = None,
        loader: Callable[[Path], LoadedModel] = load_saved_model,
    ) -> None:
        self._override = base_path_override
        self._models: dict[str, _Model] = {}
        self._apply_sources(self._with_override(sources))
        self._metrics = metrics
        self._config_path = config_path
        self._config_stamp = _file_stamp(config_path) if config_path is not None else None
        self._loader = loader
        # One loader thread: loads are serialised and never take a predict worker.
        self._load_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self.views: Mapping[str, ModelView] = MappingProxyType({})
        self._publish()

    def _with_override(self, sources: list[ModelSource]) -> list[ModelSource]:
        if self._override is None:
            return sources
        name, base = self._override
        if not any(s.name == name for s in sources):
            raise ConfigError(
                "models.config", [f"model {name!r} (--model-name) is not declared in the model config file"]
            )
        return [replace(s, base_path=base) if s.name == name else s for s in sources]

    def _apply_sources(self, sources: list[ModelSource]) -> list[_Model]:
        """Install new sources; returns the entries that left (to be unloaded)."""
        gone: list[_Model] = []
        new: dict[str, _Model] = {}
        for source in sources:
            old = self._models.get(source.name)
            if old is not None and old.source.base_path == source.base_path:
                old.source = source
                new[source.name] = old
            else:
                new[source.name] = _Model(source)
                if old is not None:
                    gone.append(old)
        gone += [m for name, m in self._models.items() if name not in new]
        self._models = new
        return gone

    @property
    def model_names(self) -> list[str]:
        return sorted(self._models)

    def status(self, name: str, version: int | None) -> list[VersionState]:
        """Version states of a model, highest version first (all of them, or just ``version``).

        Raises:
            RequestError: 404 ``Could not find any versions of model m`` or
                ``Could not find version N of model m``.
        """
        model = self._models.get(name)
        if model is None or not model.versions:
            raise RequestError(f"Could not find any versions of model {name}", http_status=404)
        if version is not None:
            state = model.versions.get(version)
            if state is None:
                raise RequestError(f"Could not find version {version} of model {name}", http_status=404)
            return [state]
        return [model.versions[v] for v in sorted(model.versions, reverse=True)]

    def _publish(self) -> None:
        self.views = MappingProxyType(
            {
                name: ModelView(
                    available=MappingProxyType(
                        {v: s.loaded for v, s in m.versions.items() if s.state == "AVAILABLE" and s.loaded}
                    ),
                    labels=MappingProxyType(dict(m.labels)),
                )
                for name, m in self._models.items()
            }
        )

    def _set(self, name: str, state: VersionState, new_state: str) -> None:
        state.state = new_state
        log.info(
            "modelserver.version_state",
            model=name,
            version=state.version,
            state=new_state,
            error_code=state.error_code,
            error=state.error_message or None,
        )

    async def _reload_config(self) -> list[_Model]:
        if self._config_path is None:
            return []
        stamp = await asyncio.to_thread(_file_stamp, self._config_path)
        if stamp == self._config_stamp:
            return []
        self._config_stamp = stamp
        try:
            sources = await asyncio.to_thread(load_models_config, self._config_path)
            sources = self._with_override(sources)
        except ConfigError as exc:
            log.error(  # noqa: TRY400 - the problems say it all; a traceback would not help
                "modelserver.config_invalid", path=str(self._config_path), problems=list(exc.problems)
            )
            return []
        log.info("modelserver.config_reloaded", path=str(self._config_path), models=[s.name for s in sources])
        return self._apply_sources(sources)

    async def poll_once(self) -> None:
        """One discovery pass over every model: load, unload, label (see the module docstring).

        Idempotent when nothing changed on disk. Never raises for a bad version directory
        (that version goes to END with the error); cancellation stops between steps.
        """
        gone = await self._reload_config()
        for model in list(self._models.values()):
            found = await asyncio.to_thread(_scan, model.source.base_path)
            if found is None:
                if "base_path" not in model.warned:
                    model.warned.add("base_path")
                    log.error(
                        "modelserver.base_path_missing",
                        model=model.source.name,
                        base_path=str(model.source.base_path),
                    )
                found = {}
            else:
                model.warned.discard("base_path")
            await self._sync(model, found)
        for model in gone:
            for state in model.versions.values():
                if state.state == "AVAILABLE":
                    self._unload(model.source.name, state)
            log.info("modelserver.model_removed", model=model.source.name)
        self._publish()

    async def _sync(self, model: _Model, found: dict[int, tuple[Path, Fingerprint]]) -> None:
        name = model.source.name
        aspired = model.source.policy.select(found)
        if not found and "no_versions" not in model.warned:
            model.warned.add("no_versions")
            log.warning("modelserver.no_versions", model=name, base_path=str(model.source.base_path))
        elif found:
            model.warned.discard("no_versions")
        for version in sorted(aspired, reverse=True):
            path, fingerprint = found[version]
            state = model.versions.get(version)
            if state is not None and state.state == "AVAILABLE":
                continue
            if state is not None and state.error_code != "OK" and state.fingerprint == fingerprint:
                continue  # failed before and unchanged since: wait for a new copy
            await self._load(model, version, path, fingerprint)
        any_aspired_available = any(
            model.versions[v].state == "AVAILABLE" for v in aspired if v in model.versions
        )
        for version, state in sorted(model.versions.items()):
            if state.state == "AVAILABLE" and version not in aspired:
                if any_aspired_available:
                    self._unload(name, state)
                elif f"keep:{version}" not in model.warned:
                    model.warned.add(f"keep:{version}")
                    log.warning("modelserver.unload_deferred", model=name, version=version)
        self._label(model)

    async def _load(self, model: _Model, version: int, path: Path, fingerprint: Fingerprint) -> None:
        name = model.source.name
        state = VersionState(version=version, fingerprint=fingerprint)
        model.versions[version] = state
        self._set(name, state, "START")
        self._set(name, state, "LOADING")
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(self._load_executor, self._loader, path)
        except LoadError as exc:
            state.error_code, state.error_message = exc.code, exc.message
        except Exception as exc:  # noqa: BLE001 - any failure of a load is that version's status
            state.error_code, state.error_message = "UNKNOWN", f"{type(exc).__name__}: {exc}"
        else:
            state.loaded = loaded
        elapsed_us = (time.perf_counter() - started) * 1e6
        if self._metrics is not None:
            self._metrics.count_load(str(path), ok=state.loaded is not None, latency_us=elapsed_us)
        self._set(name, state, "AVAILABLE" if state.loaded is not None else "END")
        # Make each new version servable at once, before older ones are unloaded.
        self._publish()

    def _unload(self, name: str, state: VersionState) -> None:
        self._set(name, state, "UNLOADING")
        state.loaded = None
        self._set(name, state, "END")

    def _label(self, model: _Model) -> None:
        name = model.source.name
        wanted = dict(model.source.labels)
        for label in list(model.labels):
            if label not in wanted:
                del model.labels[label]
        for label, version in wanted.items():
            state = model.versions.get(version)
            if state is not None and state.state == "AVAILABLE":
                if model.labels.get(label) != version:
                    model.labels[label] = version
                    log.info("modelserver.label_assigned", model=name, label=label, version=version)
                model.warned.discard(f"label:{label}")
            elif f"label:{label}" not in model.warned:
                model.warned.add(f"label:{label}")
                log.warning(
                    "modelserver.label_pending",
                    model=name,
                    label=label,
                    version=version,
                    current=model.labels.get(label),
                )

    async def run(self, poll_interval_s: float) -> None:
        """Poll forever every ``poll_interval_s`` (until cancelled); a failed pass is logged, not fatal."""
        while True:
            await asyncio.sleep(poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("modelserver.poll_failed")

    def close(self) -> None:
        """Release every loaded version and the loader thread (a load in progress is abandoned)."""
        for model in self._models.values():
            for state in model.versions.values():
                state.loaded = None
        self.views = MappingProxyType({})
        self._load_executor.shutdown(wait=False, cancel_futures=True)
