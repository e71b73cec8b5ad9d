"""The ``scorebeater`` command line: the only place errors become exit codes.

Each subcommand's work lives in the module that owns it; this module parses arguments,
configures logging once, imports the owner lazily (so ``check-config`` never pays for
TensorFlow) and turns errors into one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from scorebeater import __version__
from scorebeater.config import DEFAULT_CONFIG_PATH
from scorebeater.errors import ConfigError, DataError, FatalError, Interrupted, ScorebeaterError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int | Coroutine[Any, Any, int]]

# subcommand -> "module:function"; the function takes the parsed namespace and returns an exit
# code, or is a coroutine function (run here: the only ``asyncio.run`` of the package). For a
# command with ``--config``, the namespace carries the loaded config as ``cfg`` (loaded once).
HANDLERS: dict[str, str] = {
    "run": "scorebeater.daemon:command",
    "once": "scorebeater.daemon:once_command",
    "check-config": "scorebeater.cli:check_config_command",
    "replay-api": "scorebeater.scoreapi.replay:command",
    "serve-model": "scorebeater.modelserver.app:command",
    "train": "scorebeater.training.pipeline:train_command",
    "evaluate": "scorebeater.training.pipeline:evaluate_command",
    "backtest": "scorebeater.training.backtest_report:backtest_command",
    "quarantine": "scorebeater.admin.quarantine:command",
    "promote": "scorebeater.promotion.promoter:promote_command",
    "export": "scorebeater.export:export_command",
    "predictions": "scorebeater.export:predictions_command",
    "storage": "scorebeater.storage.migrate:command",
}


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: not a directory")
    return path


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be > 0")
    return number


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"{port} is not in 0-65535")
    return port


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"TOML config file (default: {DEFAULT_CONFIG_PATH})",
    )


def _add_data(p: argparse.ArgumentParser, *, help_text: str | None = None) -> None:
    p.add_argument(
        "--data",
        type=_existing_dir,
        default=None,
        metavar="DIR",
        help=help_text
        or "data directory laid out like the bundled data (season_totals/games/player_games .csv.gz); "
        "default: the config's data.dir, else the copy bundled in the package",
    )


def _add_quarantine(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``quarantine list|retry|skip`` (its handler is :mod:`scorebeater.admin.quarantine`'s)."""
    p = sub.add_parser(
        "quarantine",
        help="list, retry or skip the records the features stage set aside",
        description="The quarantine (dead-letter) table of the configured storage: box scores that "
        "failed validation, and games whose fetch kept failing. A season completes once each of its "
        "entries is skipped, or retried and resolved. Works with or without a running daemon.",
    )
    _add_config(p)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the entries")
    listing.add_argument("--season", type=int, default=None, help="only this season (end year)")
    listing.add_argument(
        "--state", choices=("open", "retry", "skipped", "resolved"), default=None, help="only this state"
    )
    listing.add_argument("--json", action="store_true", help="print the entries as a JSON array")
    for action, text in (
        ("retry", "fetch the record again on the next features run (resolved on success)"),
        ("skip", "accept the record's loss: its season completes without it"),
    ):
        actions.add_parser(action, help=text).add_argument("id", type=int, help="the entry's id (see list)")


def _add_promote(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``promote`` (its handler is :mod:`scorebeater.promotion.promoter`'s)."""
    p = sub.add_parser(
        "promote",
        help="move a model version label (stable) to a version the model server serves",
        description="Point a label of the model at VERSION by rewriting, atomically, the models.config "
        "file TF Serving polls ([tfserving] models_config, else [model_server] models_config); the "
        "model server moves the label at its next poll. Refused (exit 2) unless the model server "
        "reports VERSION AVAILABLE. The promotion is recorded in storage (GET /v1/models lists them) "
        "and printed as JSON.",
    )
    _add_config(p)
    p.add_argument("--to", type=int, required=True, metavar="VERSION", help="the model version to promote")
    p.add_argument(
        "--label", default=None, help="the label to move, [A-Za-z0-9_]+ (default: promotion.label, 'stable')"
    )
    p.add_argument(
        "--by", default=None, type=_record_text, help="who promotes, for the record (default: the login name)"
    )
    p.add_argument(
        "--reason", default="", type=_record_text, help="why, for the record (at most 500 characters)"
    )


def _add_storage(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``storage migrate`` (its handler is :mod:`scorebeater.storage.migrate`'s)."""
    p = sub.add_parser("storage", help="copy a store to another backend (storage migrate)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = actions.add_parser(
        "migrate",
        help="copy every table and checkpoint from one store to another, then verify",
        description="Copy every table (features, predictions of every role, outcomes, the prediction "
        "cache, the quarantine) and every checkpoint (watermarks, promotion records) from the store of "
        "--from's [storage] to that of --to's (local, s3 or postgres; not auto), streaming in batches. "
        "Resumes where a cut-off run stopped; a rerun of a finished migration copies nothing. Ends by "
        "comparing row counts and a content hash per table (exit 1 if any differs). Refused while a "
        "daemon leads either store, or when the destination holds other data.",
    )
    m.add_argument("--from", dest="source", type=Path, required=True, metavar="A.toml", help="source config")
    m.add_argument("--to", dest="dest", type=Path, required=True, metavar="B.toml", help="destination config")
    m.add_argument(
        "--batch-rows",
        type=_positive_int,
        default=None,
        help="rows per batch on both sides (default: each config's storage.batch_rows)",
    )


def _record_text(value: str) -> str:
    """A promotion record's free text (``--by``, ``--reason``): bounded, as the admin API's."""
    from scorebeater.promotion.records import MAX_TEXT_CHARS  # noqa: PLC0415 - keep --help light

    if len(value) > MAX_TEXT_CHARS:
        raise argparse.ArgumentTypeError(f"at most {MAX_TEXT_CHARS} characters, got {len(value)}")
    return value


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``export``, and ``predictions`` (:func:`_add_predictions`): both :mod:`scorebeater.export`'s."""
    p = sub.add_parser(
        "export",
        help="write one season of stored features, predictions or outcomes as CSV, JSON lines, "
        "Parquet or a Delta Lake table",
        description="Read one season of one table from the configured storage (any backend), batch by "
        "batch, and write it to a file, stdout (-), a directory (FILE named WHAT_SEASON.EXT), an S3 URL "
        "(s3://bucket/prefix, at [storage.s3] endpoint_url) or, with --format delta, a Delta Lake table "
        "partitioned by season whose season partition is replaced (never duplicated). A file is written "
        "whole or not at all (stdout is streamed: a failure mid-stream leaves partial output). CSV string "
        "cells starting with = + - @ tab or CR get a leading '. Fails, writing nothing, when nothing is "
        "stored for the season.",
    )
    _add_config(p)
    p.add_argument("--season", type=int, required=True, help="season (end year)")
    p.add_argument("--what", choices=("features", "predictions", "outcomes"), required=True)
    p.add_argument("--format", choices=("csv", "parquet", "jsonl", "delta"), required=True)
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE|-|DIR|s3://...",
        help="destination (- is stdout: csv/jsonl only)",
    )
    p.add_argument(
        "--role",
        choices=("champion", "challenger", "all"),
        default=None,
        help="predictions of this role (default: champion; all: every role, not with --latest); "
        "predictions only",
    )
    p.add_argument(
        "--latest",
        action="store_true",
        help="only each player's latest row (features, predictions of one role; default: the whole "
        "history); not with outcomes, which hold one row per player",
    )
    _add_predictions(sub)


def _add_predictions(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``predictions`` (its handler is :mod:`scorebeater.export`'s)."""
    p = sub.add_parser(
        "predictions",
        help="print a season's latest predictions as a table, most likely to beat his mark first",
        description="Each player's latest prediction of the season from the configured storage: rank, "
        "name, team, probability, FTM so far against the mark (last season's FTM), team games, model "
        "version and the outcome once known, by probability descending.",
    )
    _add_config(p)
    p.add_argument("--season", type=int, required=True, help="season (end year)")
    p.add_argument("--top", type=_positive_int, default=None, metavar="N", help="only the first N rows")
    p.add_argument("--player", default=None, metavar="NAME", help="names containing NAME (any case)")
    p.add_argument(
        "--role",
        choices=("champion", "challenger"),
        default="champion",
        help="predictions of this role (default: champion; one role: the table has no role column)",
    )


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be >= 1")
    return number


def _add_backtest(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``backtest`` (its handler is :mod:`scorebeater.training.backtest_report`'s)."""
    p = sub.add_parser(
        "backtest",
        help="rolling-origin backtest: fit before each test season, score on it",
        description="For each test season S, fit the MLP recipe and the baselines on the same rows of "
        "the seasons before S-1 (per-game rows and the long history's season-start rows), early-stop "
        "the MLP on S-1, and score every model on S. Prints each model's mean and spread over the "
        "folds and writes a Markdown + JSON + PNG report.",
    )
    _add_config(p)
    _add_data(p)
    p.add_argument(
        "--seasons",
        type=int,
        nargs="+",
        required=True,
        metavar="S",
        help="test seasons (end years), one fold each; S-1 must have games too",
    )
    p.add_argument("--json", action="store_true", help="print the whole backtest as one JSON object")
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where to write the report (default: training.report_dir)",
    )


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - a flat list of subcommands
    parser = argparse.ArgumentParser(
        prog="scorebeater",
        description="Keep, for every NBA player, a live probability that he beats his previous "
        "season's free throws made.",
    )
    parser.add_argument("--version", action="version", version=f"scorebeater {__version__}")
    parser.add_argument(
        "--log-format", choices=("auto", "console", "json"), default=None, help="override logging.format"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=None,
        help="override logging.level",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run the daemon (and, per config, the embedded replay Score API and model server)",
        description="Run the long-lived daemon: the feature, prediction, refeed and validation "
        "stages, and per config the shadow challenger, monitoring, retrain and promotion stages; the "
        "admin API, web page and metrics. With the embedded defaults it also starts the replay "
        "Score API and the TF Serving stand-in over the published model in model/ (publish one "
        "with `scorebeater train`), and needs no other service.",
    )
    _add_config(p)
    _add_data(p)

    p = sub.add_parser(
        "once",
        help="run one iteration of one stage and exit",
        description="Lead the store for one iteration of one stage (fenced like a daemon), print its "
        "summary as JSON and exit. Refused while a daemon leads the store: ask it with POST "
        "/v1/stages/STAGE:run instead. A stage the config leaves out is refused, naming the enabled ones.",
    )
    _add_config(p)
    _add_data(p)
    p.add_argument(
        "--stage",
        required=True,
        # Not retrain or promotion: they act on what this process's own stages hand them (stored
        # final labels, a champion-versus-challenger comparison), which one iteration never has.
        choices=("features", "predictions", "validation", "refeed", "shadow", "monitoring"),
    )

    p = sub.add_parser("check-config", help="check a config file and print the effective settings")
    p.add_argument("file", type=Path, help="TOML config file")
    p.add_argument("--quiet", action="store_true", help="print nothing when the file is valid")

    p = sub.add_parser(
        "replay-api",
        help="serve real seasons through the Score API contract with an accelerated clock",
        description="Replay real seasons as if live: the replay clock runs SPEED times faster than "
        "real time from START; games turn final as it passes them, and a season's totals turn "
        "final after its last regular-season game.",
    )
    _add_data(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8600, help="port to listen on (default: 8600)")
    p.add_argument(
        "--speed",
        type=_positive_float,
        default=86400.0,
        help="replay seconds per real second (default: 86400)",
    )
    p.add_argument(
        "--start",
        default=None,
        metavar="DATE",
        help="ISO date the replay clock starts at (default: the day before the replayed season's first game)",
    )
    p.add_argument(
        "--season", type=int, default=None, help="season (end year) to replay (default: the last with games)"
    )
    p.add_argument(
        "--token-env",
        default=None,
        metavar="VAR",
        help="environment variable with the bearer token clients must send; naming one that is "
        "unset or empty is an error; '' serves without auth (default: SCOREBEATER_SCORE_API_TOKEN "
        "if set, else no auth; serving without auth logs a warning)",
    )
    p.add_argument(
        "--rate-limit",
        type=_positive_float,
        default=None,
        metavar="RPS",
        help="answer 429 with Retry-After beyond this many requests per second",
    )

    p = sub.add_parser(
        "serve-model",
        help="serve SavedModels over TF Serving's REST API (the embedded stand-in)",
        description="An aiohttp server over TensorFlow SavedModels that answers TF Serving's REST "
        "API: status, metadata and predict, version directories polled and hot-loaded.",
    )
    p.add_argument(
        "--model-base-path",
        type=Path,
        default=Path("model/score_beater"),
        help="directory holding integer version directories (default: model/score_beater)",
    )
    p.add_argument("--model-name", default="score_beater", help="model name in URLs (default: score_beater)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8501, help="REST port (default: 8501)")
    p.add_argument(
        "--model-config-file",
        type=Path,
        default=None,
        help="TF Serving models.config text file (version policy, labels)",
    )
    p.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=1.0,
        help="how often version directories are polled (default: 1)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=8192,
        help="largest accepted batch; larger requests get 400 as with TF Serving batching",
    )

    p = sub.add_parser(
        "train",
        help="train the score_beater MLP and publish it behind the promotion gate",
        description="Build the point-in-time rows (per game, plus season-start rows from the long "
        "history), fit the recipe without the last season (the gate fold) and judge it there against "
        "the champion; if the gate passes, refit the same recipe on every season and publish it as "
        "model/<name>/<version>/.",
    )
    _add_config(p)
    _add_data(p)
    p.add_argument(
        "--from-storage",
        action="store_true",
        help="train on the stored feature history and final outcomes, plus the data files' rows "
        "for the seasons storage does not hold",
    )
    p.add_argument("--force", action="store_true", help="publish even if the gate fails (recorded as forced)")

    p = sub.add_parser(
        "evaluate",
        help="score the current model and three baselines on some seasons",
        description="Score the current model and the pace, logistic and gradient-boosted baselines on "
        "the same rows, overall and by season progress, and write a Markdown + PNG report.",
    )
    _add_config(p)
    _add_data(p)
    p.add_argument(
        "--seasons", type=int, nargs="+", required=True, metavar="S", help="seasons (end years) to score"
    )
    p.add_argument("--json", action="store_true", help="print the metrics table as one JSON object")
    p.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where to write the report (default: training.report_dir)",
    )
    p.add_argument(
        "--model-version", type=int, default=None, help="version to evaluate (default: the latest)"
    )
    p.add_argument(
        "--rows",
        choices=("training", "daemon"),
        default="training",
        help="rows to score: 'training' (default), one per player and game day, built from the data "
        "files; 'daemon', the daemon's stored feature rows with final outcomes ([storage]), one per "
        "player and game of his team: the rows of its realized metrics on /metrics",
    )

    _add_backtest(sub)
    _add_quarantine(sub)
    _add_promote(sub)
    _add_export(sub)
    _add_storage(sub)
    return parser


def check_config_command(args: argparse.Namespace) -> int:
    """Validate a config file; print the effective settings (secrets show as ``<set>``)."""
    import json  # noqa: PLC0415 - only this command prints JSON

    from scorebeater.config import describe, load_config  # noqa: PLC0415

    cfg = load_config(args.file)
    if not args.quiet:
        print(json.dumps(describe(cfg), indent=2))  # noqa: T201 - this command's output
    print(f"{args.file}: ok", file=sys.stderr)  # noqa: T201
    return EXIT_OK


def _resolve(command: str) -> Handler:
    module, _, attr = HANDLERS[command].partition(":")
    handler: Handler = getattr(importlib.import_module(module), attr)
    return handler


def _prepare(args: argparse.Namespace) -> None:
    """Load the command's config once (as ``args.cfg``) and configure logging from it.

    Raises:
        ConfigError: the config file has problems (every one is reported).
    """
    from scorebeater.config import load_config  # noqa: PLC0415
    from scorebeater.logs import configure_logging  # noqa: PLC0415

    fmt, level = "auto", "info"
    config_path = getattr(args, "config", None)
    if config_path is not None:
        args.cfg = load_config(config_path)
        fmt, level = args.cfg.logging.format, args.cfg.logging.level
    configure_logging(args.log_format or fmt, args.log_level or level)  # type: ignore[arg-type]
    from scorebeater import failpoints  # noqa: PLC0415

    failpoints.check()


def _run(handler: Handler, args: argparse.Namespace) -> int:
    result = handler(args)
    if isinstance(result, int):
        return result
    return asyncio.run(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scorebeater`` and ``python -m scorebeater``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _prepare(args)
        return _run(_resolve(args.command), args)
    except (KeyboardInterrupt, Interrupted):
        print("scorebeater: interrupted", file=sys.stderr)  # noqa: T201
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"scorebeater: config error: {exc.source}:", file=sys.stderr)  # noqa: T201
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except (DataError, FatalError, ScorebeaterError) as exc:
        print(f"scorebeater: error: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILURE
    except OSError as exc:
        print(f"scorebeater: error: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILURE
    except Exception as exc:
        if args.debug:
            raise
        print(  # noqa: T201
            f"scorebeater: internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
