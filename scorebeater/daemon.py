"""The composition root: open every resource, run the stages, drain on a signal.

``open_daemon`` opens, in order and inside one ``AsyncExitStack`` (so they close in reverse):
the embedded replay Score API and TF Serving stand-in when the config enables them, storage,
the two HTTP clients, the stages and their runners, and the admin API. ``run`` then serves
every stage concurrently in a ``TaskGroup`` until SIGTERM/SIGINT (or ``stop``): no new run
starts, the in-flight runs get ``shutdown_grace_s`` to finish, then whatever is left is
cancelled; a second SIGINT cancels at once. Every stage commits its checkpoint with its data,
so a restart resumes where the last commit left off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from scorebeater.admin.app import AdminState, create_app
from scorebeater.clients.score_api import ScoreApiClient
from scorebeater.clients.tfserving import TFServingClient
from scorebeater.config import Config, load_config
from scorebeater.errors import FatalError
from scorebeater.metrics import Metrics
from scorebeater.scheduler import Clock, StageFn, StageRunner, SystemClock, next_cron
from scorebeater.stages.base import StageContext
from scorebeater.stages.features import FeaturesStage
from scorebeater.stages.predictions import PredictionsStage
from scorebeater.stages.validation import ValidationStage
from scorebeater.storage import open_storage

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Daemon:
    """One running daemon's parts, for ``run``, ``once`` and tests."""

    cfg: Config
    ctx: StageContext
    features: FeaturesStage
    predictions: PredictionsStage
    validation: ValidationStage
    runners: dict[str, StageRunner]
    started: asyncio.Event
    admin_url: str | None = None
    score_api_url: str = ""
    model_server_url: str = ""
    config_path: Path | None = None
    retrain_tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)


def _has_model_version(base_path: Path) -> bool:
    return base_path.is_dir() and any(p.is_dir() and p.name.isdigit() for p in base_path.iterdir())


async def _embedded_services(cfg: Config, stack: contextlib.AsyncExitStack, data_dir: Path | None) -> Config:
    """Start the replay Score API and the TF Serving stand-in when enabled; point the clients at them."""
    replay = cfg.score_api.replay
    if replay.enabled:
        from scorebeater.data import load_history  # noqa: PLC0415 - only the embedded replay needs the files
        from scorebeater.scoreapi.replay import serve_replay  # noqa: PLC0415
        from scorebeater.scoreapi.timeline import parse_start  # noqa: PLC0415

        history = await asyncio.to_thread(load_history, data_dir or cfg.data.dir)
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
            runners=daemon.runners,
            features=daemon.features,
            predictions=daemon.predictions,
            token=cfg.token,
            started=daemon.started,
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


@contextlib.asynccontextmanager
async def open_daemon(
    cfg: Config,
    *,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    data_dir: Path | None = None,
    config_path: Path | None = None,
) -> AsyncIterator[Daemon]:
    """Open every resource of a daemon and yield it wired but not yet serving.

    Raises:
        FatalError: a resource cannot start (no model to serve, storage unavailable, ...).
    """
    clock = clock or SystemClock()
    metrics = metrics or Metrics(CollectorRegistry())
    async with contextlib.AsyncExitStack() as stack:
        cfg = await _embedded_services(cfg, stack, data_dir)
        storage = await stack.enter_async_context(open_storage(cfg.storage))
        scores = await stack.enter_async_context(ScoreApiClient(cfg.score_api, metrics=metrics))
        model = await stack.enter_async_context(
            TFServingClient(cfg.tfserving, cfg.model.name, metrics=metrics)
        )
        ctx = StageContext(cfg=cfg, storage=storage, scores=scores, model=model, metrics=metrics, clock=clock)
        sc = cfg.scheduler
        predictions = PredictionsStage(ctx)
        features = FeaturesStage(ctx)
        validation = ValidationStage(ctx, seasons=features.followed_seasons)
        runners: dict[str, StageRunner] = {}

        def runner(name: str, fn: StageFn, *, interval_s: float | None = None, cron: str = "") -> StageRunner:
            return StageRunner(
                name,
                fn,
                clock=clock,
                metrics=metrics,
                interval_s=interval_s,
                cron=cron,
                backoff_initial_s=sc.backoff_initial_s,
                backoff_max_s=sc.backoff_max_s,
            )

        # A season turning final wakes validation once a prediction run that *started after*
        # the season's last feature commit has succeeded, so the first realized metrics cover
        # every prediction of the season.
        finals: set[int] = set()

        async def predictions_run(run_id: str) -> dict[str, Any]:
            captured = set(finals)
            finals.difference_update(captured)
            try:
                result = await predictions.run(run_id)
            except BaseException:
                finals.update(captured)
                raise
            if captured:
                runners["validation"].trigger()
            return result

        runners["features"] = runner("features", features.run, interval_s=sc.poll_interval_s)
        runners["predictions"] = runner("predictions", predictions_run)
        runners["validation"] = runner("validation", validation.run, cron=sc.validation_cron)
        daemon = Daemon(
            cfg=cfg,
            ctx=ctx,
            features=features,
            predictions=predictions,
            validation=validation,
            runners=runners,
            started=asyncio.Event(),
            score_api_url=cfg.score_api.base_url,
            model_server_url=cfg.tfserving.base_url,
            config_path=config_path,
        )
        # A committed feature batch wakes the prediction stage; a failed feature write (which
        # may have committed all the same) makes it look in storage for unpredicted rows.
        features.on_commit(predictions.submit)
        features.on_commit(lambda _batch: runners["predictions"].trigger())
        features.on_reset(predictions.reconcile_next_run)

        def season_final(season: int) -> None:
            finals.add(season)
            runners["predictions"].trigger()

        features.on_season_final(season_final)
        if cfg.training.retrain_on_season_final:
            validation.on_final_labels(lambda season: _schedule_retrain(daemon, season))
        daemon.admin_url = await _start_admin(daemon, stack)
        try:
            yield daemon
        finally:
            for task in daemon.retrain_tasks:
                task.cancel()
            if daemon.retrain_tasks:
                await asyncio.gather(*daemon.retrain_tasks, return_exceptions=True)


def _schedule_retrain(daemon: Daemon, season: int) -> None:
    task = asyncio.create_task(_retrain(daemon, season), name=f"retrain:{season}")
    daemon.retrain_tasks.add(task)
    task.add_done_callback(daemon.retrain_tasks.discard)


async def _retrain(daemon: Daemon, season: int) -> None:
    """Retrain from stored history in a child process (TensorFlow stays out of the daemon)."""
    args = [sys.executable, "-m", "scorebeater", "train", "--from-storage"]
    if daemon.config_path is not None:
        args += ["--config", str(daemon.config_path)]
    log.info("daemon.retrain_started", season=season)
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL)
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        # The daemon is stopping: a training child must not publish after it has gone.
        proc.terminate()
        await proc.wait()
        log.warning("daemon.retrain_cancelled", season=season)
        raise
    log.info("daemon.retrain_finished", season=season, exit_code=code)


async def _refeed_on_schedule(daemon: Daemon, stop: asyncio.Event) -> None:
    expr = daemon.cfg.scheduler.refeed_cron
    clock = daemon.ctx.clock
    while not stop.is_set():
        slot = next_cron(expr, clock.now())
        await clock.sleep((slot - clock.now()).total_seconds())
        if stop.is_set():
            return
        log.info("daemon.scheduled_refeed", slot=slot.isoformat())
        daemon.predictions.request_refeed()
        daemon.runners["predictions"].trigger()


async def serve(daemon: Daemon, stop: asyncio.Event) -> None:
    """Run every stage until ``stop`` is set, then drain within the grace period."""
    grace = daemon.cfg.scheduler.shutdown_grace_s
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(runner.serve(run_immediately=name != "validation"), name=f"stage:{name}")
            for name, runner in daemon.runners.items()
        ]
        refeed = (
            tg.create_task(_refeed_on_schedule(daemon, stop), name="refeed-cron")
            if daemon.cfg.scheduler.refeed_cron
            else None
        )
        daemon.started.set()
        log.info("daemon.started", stages=sorted(daemon.runners), admin=daemon.admin_url)
        await stop.wait()
        log.info("daemon.stopping", grace_s=grace)
        if refeed is not None:
            refeed.cancel()  # it only waits for its next slot: nothing to drain
        for runner in daemon.runners.values():
            runner.stop()
        pending = [t for t in tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            if still:
                log.warning("daemon.cancelled_in_flight", tasks=sorted(t.get_name() for t in still))
    log.info("daemon.stopped")


async def run(
    cfg: Config,
    *,
    handle_signals: bool = True,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    data_dir: Path | None = None,
    config_path: Path | None = None,
) -> None:
    """Run the daemon until SIGTERM/SIGINT or ``stop`` is set."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal(signum: int) -> None:
        nonlocal interrupts
        interrupts += 1
        log.info("daemon.signal", signal=signal.Signals(signum).name)
        if interrupts > 1 and signum == signal.SIGINT:
            # A second Ctrl-C: stop waiting for in-flight work.
            for task in asyncio.all_tasks(loop):
                if task.get_name().startswith("stage:"):
                    task.cancel()
        stop.set()

    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with open_daemon(cfg, clock=clock, data_dir=data_dir, config_path=config_path) as daemon:
            await serve(daemon, stop)
    finally:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def command(args: argparse.Namespace) -> int:
    """``scorebeater run``."""
    cfg = load_config(args.config)
    asyncio.run(run(cfg, data_dir=args.data, config_path=args.config))
    return 0


async def _once(cfg: Config, stage: str, data_dir: Path | None) -> dict[str, Any]:
    # One iteration serves no one: no admin port (a running daemon may hold it).
    cfg = dataclasses.replace(cfg, admin=dataclasses.replace(cfg.admin, enabled=False))
    async with open_daemon(cfg, data_dir=data_dir) as daemon:
        if stage == "refeed":
            daemon.predictions.request_refeed()
            stage = "predictions"
        return await daemon.runners[stage].run_once()


def once_command(args: argparse.Namespace) -> int:
    """``scorebeater once --stage S``: one iteration of one stage, then exit."""
    import json  # noqa: PLC0415

    cfg = load_config(args.config)
    result = asyncio.run(_once(cfg, args.stage, args.data))
    print(json.dumps(result, default=str, indent=2))  # noqa: T201 - this command's output
    return 0
