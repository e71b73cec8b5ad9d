"""The composition root: open every resource, wire the stages, run them, drain on stop.

``open_daemon`` opens, in order and inside one ``AsyncExitStack`` (so they close in reverse):
the embedded replay Score API and TF Serving stand-in when the config enables them, storage,
the two HTTP clients, the stages with the one :class:`~scorebeater.stages.handoff.Handoff`
they pass work through, a runner per stage, and the admin API. ``serve`` runs every runner
concurrently until ``stop`` is set: no new run starts, the in-flight runs get
``shutdown_grace_s`` to finish, then whatever is left is cancelled. Signals are
:mod:`scorebeater.lifecycle`'s (a second one cancels at once). Every stage commits its
checkpoint with its data, so a restart resumes where the last commit left off.

Replicas (``scorebeater run`` only; :mod:`scorebeater.leadership`): any number of processes
may share a Postgres or S3 store. Each opens everything above and serves the admin API at once
(``/readyz`` names its role), but runs the stages only while it leads: a standby waits for the
leadership, fences the store with its term's token before the first stage starts, and renews
the leadership beside the stages. When it is lost, the stages are cancelled and the process
ends with :class:`~scorebeater.errors.LeadershipLost` (its supervisor restarts it as a
standby); a commit that still slips out is refused by storage
(:class:`~scorebeater.errors.Fenced`). On local storage a second process refuses to start.
``once`` leads the store for its one iteration, and refuses while a daemon leads.

The stages and when each runs (the hand-off rules are in ``stages/handoff.py``):

==============  ==========================================================================
features        at start, then every ``poll_interval_s``
predictions     at start, then when the hand-off has committed rows or a final season
refeed          on ``refeed_cron`` and on request; never alongside predictions (one lock)
validation      on ``validation_cron`` and when a final season has had its last predictions
retrain         when final labels are stored (only with ``retrain_on_season_final``)
promotion       when a champion-versus-challenger comparison is recorded (always present:
                with ``promotion.auto`` off it only refreshes the label gauges)
shadow          at start, then when champion predictions are stored (a no-op without
                ``challenger_label``); its own lock and TF Serving client: never delays them
monitoring      every ``monitoring.interval_s`` and when champion predictions are stored
                (only with ``monitoring.enabled``): drift PSI and CBPE estimates
==============  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState, create_app
from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import Config
from scorebeater.errors import FatalError, LeadershipHeld
from scorebeater.leadership import Elector, LeadershipState, fence_storage, open_elector
from scorebeater.lifecycle import run_until_signal
from scorebeater.metrics import Metrics
from scorebeater.promotion.promoter import Promoter
from scorebeater.promotion.records import PromotionLog
from scorebeater.scheduler import Clock, Stage, StageRunner, SystemClock
from scorebeater.stages.base import StageContext
from scorebeater.stages.features import FeaturesStage
from scorebeater.stages.handoff import Handoff
from scorebeater.stages.monitoring import MonitoringStage
from scorebeater.stages.predictions import PredictionsStage
from scorebeater.stages.promotion import PromotionStage
from scorebeater.stages.refeed import RefeedStage
from scorebeater.stages.retrain import RetrainStage
from scorebeater.stages.scoring import Scorer
from scorebeater.stages.shadow import ShadowStage
from scorebeater.stages.validation import ValidationStage
from scorebeater.storage import choose_backend, open_storage
from scorebeater.storage.sizing import sized_config

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class Daemon:
    """One running daemon's parts, for ``run``, ``once`` and tests."""

    cfg: Config
    ctx: StageContext
    handoff: Handoff
    features: FeaturesStage
    predictions: PredictionsStage
    validation: ValidationStage
    runners: dict[str, StageRunner]
    started: asyncio.Event
    admin_url: str | None = None
    promoter: Promoter | None = None
    """Moves labels for the promotion stage and the admin API (one lock, one history)."""
    elector: Elector | None = None
    """The replicas' election on the store (``open_daemon(elect=True)``); ``None``: this
    process runs the stages unconditionally and its writes are not fenced (tests, embedding)."""
    leadership: LeadershipState | None = None


def _has_model_version(base_path: Path) -> bool:
    return base_path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in base_path.iterdir())


async def _embedded_services(
    cfg: Config, stack: contextlib.AsyncExitStack, data_dir: Path | None, metrics: Metrics
) -> Config:
    """Start the replay Score API and the TF Serving stand-in when enabled; point the clients at them."""
    replay = cfg.score_api.replay
    if replay.enabled:
        from scorebeater.data import load_history  # noqa: PLC0415 - only the embedded replay needs the files
        from scorebeater.scoreapi.replay import serve_replay  # noqa: PLC0415
        from scorebeater.scoreapi.timeline import parse_start  # noqa: PLC0415

        history = await asyncio.to_thread(load_history, data_dir or cfg.data.dir)
        for kind, reason, count in history.report.rejections():
            metrics.records_rejected.labels(kind, reason).inc(count)
        server = await stack.enter_async_context(
            serve_replay(
                history,
                host=replay.host,
                port=replay.port,
                speed=replay.speed,
                start=parse_start(replay.start) if replay.start else None,
                season=replay.season or None,
                token=cfg.score_api.token,
            )
        )
        cfg = dataclasses.replace(cfg, score_api=dataclasses.replace(cfg.score_api, base_url=server.url))
        log.info("daemon.replay_started", url=server.url, speed=replay.speed)
    if cfg.model_server.enabled:
        if not _has_model_version(cfg.model.base_path):
            raise FatalError(
                f"no model version under {cfg.model.base_path}: run `scorebeater train` to publish one"
            )
        from scorebeater.modelserver.app import serve_models  # noqa: PLC0415 - imports TensorFlow

        ms = cfg.model_server
        model_server = await stack.enter_async_context(
            serve_models(
                model_name=cfg.model.name,
                base_path=cfg.model.base_path,
                host=ms.host,
                port=ms.port,
                poll_interval_s=ms.poll_interval_s,
                models_config=ms.models_config,
            )
        )
        cfg = dataclasses.replace(
            cfg, tfserving=dataclasses.replace(cfg.tfserving, base_url=model_server.url)
        )
        log.info("daemon.model_server_started", url=model_server.url)
    return cfg


async def _start_admin(daemon: Daemon, stack: contextlib.AsyncExitStack) -> str | None:
    cfg = daemon.cfg.admin
    if not cfg.enabled:
        return None
    app = create_app(
        AdminState(
            ctx=daemon.ctx,
            handoff=daemon.handoff,
            runners=daemon.runners,
            features=daemon.features,
            token=cfg.token,
            started=daemon.started,
            promoter=daemon.promoter,
            leadership=daemon.leadership,
        )
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    port = cfg.port
    for sock in getattr(site._server, "sockets", None) or ():  # noqa: SLF001 - the port bound for port 0
        port = sock.getsockname()[1]
    url = f"http://{cfg.host}:{port}"
    if cfg.token is None:
        log.warning("admin.token_not_configured", env=cfg.token_env, effect="POST endpoints answer 403")
    log.info("daemon.admin_started", url=url)
    return url


async def _refuse_beside_a_local_holder(cfg: Config) -> None:
    """On local storage, raise :class:`LeadershipHeld` now if another process holds the root.

    Before the embedded servers start: beside a running daemon their ports would clash first,
    hiding the reason (this store has its process) behind "address already in use".
    """
    # Only a backend configured as local: "auto" is resolved after sizing, which may choose S3.
    if cfg.storage.backend == "local":
        from scorebeater.leadership.local import check_root_free  # noqa: PLC0415 - local only

        await check_root_free(cfg.storage.local.root)


@contextlib.asynccontextmanager
async def open_daemon(  # noqa: PLR0915 - every resource wired in order, one linear story
    cfg: Config,
    *,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    data_dir: Path | None = None,
    config_path: Path | None = None,
    elect: bool = False,
) -> AsyncIterator[Daemon]:
    """Open every resource of a daemon and yield it wired but not yet serving.

    ``config_path`` is handed to the retrain child process (``train --config``). ``elect``:
    take part in the election among replicas of the store (``run`` and ``once`` do); on local
    storage the root is locked here, so a second process stops before opening anything else.

    Raises:
        LeadershipHeld: (``elect``, local storage) another process holds the root.
        FatalError: a resource cannot start (no model to serve, storage unavailable, ...).
    """
    clock = clock or SystemClock()
    metrics = metrics or Metrics(CollectorRegistry())
    if elect:
        await _refuse_beside_a_local_holder(cfg)
    async with contextlib.AsyncExitStack() as stack:
        cfg = await _embedded_services(cfg, stack, data_dir, metrics)
        cfg = await sized_config(cfg)  # backend = "auto" measured once: storage and election agree
        storage = await stack.enter_async_context(open_storage(cfg.storage))
        elector: Elector | None = None
        leadership: LeadershipState | None = None
        if elect:
            # Entered after storage, so leadership is given up before storage closes.
            elector = await stack.enter_async_context(open_elector(cfg.storage, cfg.leadership))
            backend = choose_backend(cfg.storage)
            leadership = LeadershipState(backend)
            metrics.leader.labels(backend).set(0)
            metrics.leadership_term.labels(backend).set(0)
            if backend == "local":
                await elector.try_acquire()  # one process per root: refuse now, naming the holder
        scores = await stack.enter_async_context(ScoreApiClient.open(cfg.score_api, metrics=metrics))
        model = await stack.enter_async_context(
            TFServingClient.open(cfg.tfserving, cfg.model.name, metrics=metrics)
        )
        ctx = StageContext(cfg=cfg, storage=storage, scores=scores, model=model, metrics=metrics, clock=clock)
        runners: dict[str, StageRunner] = {}

        def wake(stage: str) -> None:
            if (runner := runners.get(stage)) is not None:
                runner.trigger()

        handoff = Handoff(
            wake,
            retrain_on_final_labels=cfg.training.retrain_on_season_final,
            shadow=bool(cfg.tfserving.challenger_label),
        )
        # The challenger's own client: its connections and concurrency limit are its own, so a
        # hung challenger never holds a request slot the champion needs; it reports no
        # availability (model_available/model_info are the served model's).
        challenger_model = await stack.enter_async_context(
            TFServingClient.open(cfg.tfserving, cfg.model.name, metrics=metrics, reports_availability=False)
        )
        shadow_ctx = dataclasses.replace(ctx, model=challenger_model)
        scorer = Scorer(ctx)
        features = FeaturesStage(ctx, handoff)
        predictions = PredictionsStage(ctx, handoff, scorer)
        validation = ValidationStage(ctx, handoff, seasons=features.followed_seasons)
        sc = cfg.scheduler

        def runner(stage: Stage, **kwargs: Any) -> StageRunner:
            return StageRunner(
                stage,
                clock=clock,
                metrics=metrics,
                backoff_initial_s=sc.backoff_initial_s,
                backoff_max_s=sc.backoff_max_s,
                **kwargs,
            )

        # Both write predictions and the cache: a refeed and a diff run never overlap (a commit
        # a cancelled run left going still ends before the next run's first: storage.inflight).
        scoring = asyncio.Lock()
        runners["features"] = runner(features, interval_s=sc.poll_interval_s, run_at_start=True)
        runners["predictions"] = runner(predictions, run_at_start=True, lock=scoring)
        runners["refeed"] = runner(RefeedStage(ctx, handoff, scorer), cron=sc.refeed_cron, lock=scoring)
        runners["validation"] = runner(validation, cron=sc.validation_cron)
        runners["shadow"] = runner(
            ShadowStage(shadow_ctx, handoff, Scorer(shadow_ctx, role="challenger")), run_at_start=True
        )
        if cfg.training.retrain_on_season_final:
            runners["retrain"] = runner(RetrainStage(handoff, config_path=config_path))
        promoter = Promoter(cfg, model, PromotionLog(storage), metrics=metrics)
        runners["promotion"] = runner(PromotionStage(ctx, handoff, promoter))
        if cfg.monitoring.enabled:
            monitoring = MonitoringStage(
                ctx, seasons=features.followed_seasons, champion_version=lambda: predictions.pinned_version
            )
            runners["monitoring"] = runner(monitoring, interval_s=cfg.monitoring.interval_s)
        daemon = Daemon(
            cfg=cfg,
            ctx=ctx,
            handoff=handoff,
            features=features,
            predictions=predictions,
            validation=validation,
            runners=runners,
            started=asyncio.Event(),
            promoter=promoter,
            elector=elector,
            leadership=leadership,
        )
        daemon.admin_url = await _start_admin(daemon, stack)
        yield daemon


def _first_fatal(group: BaseExceptionGroup[BaseException]) -> FatalError | None:
    for exc in group.exceptions:
        found = _first_fatal(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(found, FatalError):
            return found
    return None


@contextlib.contextmanager
def _unwrap_fatal() -> Iterator[None]:
    """Re-raise a task group's ``FatalError`` (lost leadership, fenced) as itself, so the
    command line reports it as an error rather than an internal failure."""
    try:
        yield
    except BaseExceptionGroup as group:
        fatal = _first_fatal(group)
        if fatal is None:
            raise
        raise fatal from None


async def _wait_for_leadership(daemon: Daemon, elector: Elector, stop: asyncio.Event) -> int | None:
    """Stand by until this replica leads (its fencing token) or ``stop`` is set (``None``)."""
    leadership = daemon.leadership
    if leadership is not None:
        leadership.role, leadership.term = "standby", None
    daemon.started.set()  # a standby serves reads and /metrics at once
    log.info("daemon.standby", admin=daemon.admin_url)
    acquire = asyncio.ensure_future(elector.acquire())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (acquire, stopping):
            task.cancel()
        await asyncio.gather(acquire, stopping, return_exceptions=True)
    if acquire.cancelled():
        return None
    return acquire.result()  # raises what acquire raised


async def _become_leader(daemon: Daemon, elector: Elector, token: int) -> None:
    """Fence the store with ``token`` (before any stage runs) and report the new role."""
    token = await fence_storage(daemon.ctx.storage, elector, token)
    if daemon.leadership is not None:
        daemon.leadership.role, daemon.leadership.term = "leader", token
        backend = daemon.leadership.backend
        daemon.ctx.metrics.leader.labels(backend).set(1)
        daemon.ctx.metrics.leadership_term.labels(backend).set(token)
    log.info("daemon.leading", term=token)


async def _hold(daemon: Daemon, elector: Elector) -> None:
    """Renew leadership; once it is lost, no stage starts another run.

    The task group then cancels the stages, but a cancellation that arrives inside a driver
    call can come out as that driver's error, which a stage loop counts as a failed run and
    goes on: stopping the runners too makes every loop end after its current run.
    """
    try:
        await elector.hold()
    finally:
        for runner in daemon.runners.values():
            runner.stop()


async def serve(daemon: Daemon, stop: asyncio.Event) -> None:
    """Run every stage until ``stop`` is set, then drain within the grace period.

    With an elector, stand by first (serving reads) until this replica leads, and run the
    stages only while it does: the leadership is renewed beside them, and when it is lost
    the stages are cancelled at once and :class:`~scorebeater.errors.LeadershipLost` ends
    the daemon (a supervisor restarts it as a standby).

    Raises:
        LeadershipLost: leadership was lost. Fenced: a commit was rejected (a newer term).
        FatalError: a stage met an unrecoverable error.
    """
    elector = daemon.elector
    if elector is not None:
        token = await _wait_for_leadership(daemon, elector, stop)
        if token is None:
            log.info("daemon.stopped", role="standby")
            return
        await _become_leader(daemon, elector, token)
    grace = daemon.cfg.scheduler.shutdown_grace_s
    try:
        with _unwrap_fatal():
            async with asyncio.TaskGroup() as tg:
                holding = (
                    None if elector is None else tg.create_task(_hold(daemon, elector), name="leadership")
                )
                tasks = [
                    tg.create_task(runner.serve(), name=f"stage:{name}")
                    for name, runner in daemon.runners.items()
                ]
                daemon.started.set()
                log.info("daemon.started", stages=sorted(daemon.runners), admin=daemon.admin_url)
                await stop.wait()
                log.info("daemon.stopping", grace_s=grace)
                for runner in daemon.runners.values():
                    runner.stop()
                pending = [t for t in tasks if not t.done()]
                if pending:
                    _done, still = await asyncio.wait(pending, timeout=grace)
                    for task in still:
                        task.cancel()
                    if still:
                        log.warning("daemon.cancelled_in_flight", tasks=sorted(t.get_name() for t in still))
                if holding is not None:
                    holding.cancel()  # stages drained: stop renewing, release below
    finally:
        if elector is not None:
            # Commits abandoned by cancelled stages end (landed or fenced) before a standby
            # may take over, rather than being fenced by it.
            try:
                await daemon.ctx.storage.drain_commits()
            finally:
                await elector.release()  # stages drained or cancelled: a standby may take over now
        if daemon.leadership is not None:
            daemon.leadership.role, daemon.leadership.term = "standby", None
            daemon.ctx.metrics.leader.labels(daemon.leadership.backend).set(0)
            daemon.ctx.metrics.leadership_term.labels(daemon.leadership.backend).set(0)
    log.info("daemon.stopped")


async def _while_leading(elector: Elector, work: Awaitable[T]) -> T:
    """Await ``work`` while renewing leadership; a loss cancels it (``LeadershipLost``)."""
    with _unwrap_fatal():
        async with asyncio.TaskGroup() as tg:
            holding = tg.create_task(elector.hold(), name="leadership")
            result = await work
            holding.cancel()
    return result


async def run(
    cfg: Config,
    stop: asyncio.Event,
    *,
    clock: Clock | None = None,
    data_dir: Path | None = None,
    config_path: Path | None = None,
) -> None:
    """Open a daemon and serve it until ``stop`` is set."""
    async with open_daemon(
        cfg, clock=clock, data_dir=data_dir, config_path=config_path, elect=True
    ) as daemon:
        await serve(daemon, stop)


async def command(args: argparse.Namespace) -> int:
    """``scorebeater run``: serve until SIGTERM/SIGINT (a second one cancels at once)."""
    cfg: Config = args.cfg

    async def main(stop: asyncio.Event) -> None:
        await run(cfg, stop, data_dir=args.data, config_path=args.config)

    await run_until_signal(main, name="run")
    return 0


async def once_command(args: argparse.Namespace) -> int:
    """``scorebeater once --stage S``: one iteration of one stage, then exit."""
    # One iteration serves no one: no admin port (a running daemon may hold it).
    cfg: Config = dataclasses.replace(args.cfg, admin=dataclasses.replace(args.cfg.admin, enabled=False))
    async with open_daemon(cfg, data_dir=args.data, config_path=args.config, elect=True) as daemon:
        runner = daemon.runners.get(args.stage)
        if runner is None:
            # A stage the config leaves out (monitoring disabled, retrain off).
            enabled = ", ".join(sorted(daemon.runners))
            raise FatalError(f"stage {args.stage!r} is not enabled by this config (enabled: {enabled})")
        # One iteration leads the store briefly, fenced like a daemon: beside a leading
        # daemon it would race that daemon's writes, so it refuses instead.
        elector = daemon.elector
        assert elector is not None  # noqa: S101 - elect=True
        # Waiting one lease lets a dead daemon's lease expire (S3); a live leader keeps it.
        lease = cfg.leadership
        try:
            async with asyncio.timeout(lease.lease_ttl_s + 2 * lease.poll_s):
                token: int | None = await elector.acquire()
        except TimeoutError:
            token = None
        if token is None:
            holder = await elector.holder()
            who = holder.describe() if holder is not None else "another replica"
            raise LeadershipHeld(
                f"a daemon leads this store ({who}): `once` does not run beside it; "
                f"ask it with POST /v1/stages/{args.stage}:run instead",
                holder=who,
            )
        await _become_leader(daemon, elector, token)
        result = await _while_leading(elector, runner.run_once())
    print(json.dumps(result, default=str, indent=2))  # noqa: T201 - this command's output
    return 0
