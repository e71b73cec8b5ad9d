"""Version discovery, hot load/unload, version policy and labels, as TF Serving's manager does.

Every ``poll_interval_s`` the registry lists each model's base path for version directories
(:mod:`~scorebeater.modelserver.versions`: a whole-integer name fitting in an int64; ``.tmp-3``
or ``README`` is skipped). The policy (``latest N``, default ``latest 1``; ``all``;
``specific``) picks the *aspired* versions. Then, in this order:

1. each aspired version not yet loaded is loaded (START -> LOADING -> AVAILABLE), highest
   first, in a worker thread (:mod:`~scorebeater.modelserver.servable`); a failed load ends
   in END with an error status;
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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import structlog

from scorebeater.errors import ConfigError
from scorebeater.modelserver.jsonio import RequestError
from scorebeater.modelserver.modelsconfig import ModelSource, load_models_config
from scorebeater.modelserver.servable import LoadedModel, LoadError, load_saved_model
from scorebeater.modelserver.versions import Fingerprint, scan_versions

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from scorebeater.modelserver.metrics import ServerMetrics

log = structlog.get_logger(__name__)


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
    """TF Serving's 404 for a request naming no loaded version (``version`` ``None``: the latest)."""
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
            found = await asyncio.to_thread(scan_versions, model.source.base_path)
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
