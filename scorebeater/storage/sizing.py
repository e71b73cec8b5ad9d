"""``backend = "auto"``: choose the backend by the measured size of what the daemon will store.

At start-up, before storage opens, :func:`sized_config` turns ``auto`` into a concrete backend
once, so every part of the process (storage, the leader election, the logs) sees the same one:

1. **Projected rows.** The feature rows the daemon will write are players x game days x
   seasons: for each followed season (``[scheduler] seasons``, else the latest season the Score
   API reports with games, as the features stage picks them), the players it will know (the
   previous season's official totals: the players the features stage loads; else teams x
   :data:`DEFAULT_ROSTER`) times the games each team plays (the season's
   ``scheduled_games_per_team``): one feature row per player and game of his team.
2. **Stored rows.** Each backend the config can reach (a local root that exists, the S3 bucket,
   the Postgres schema when it exists) is asked for its rows per table and season
   (:meth:`~scorebeater.storage.base.Storage.stored_rows`: the manifest's counts, or one
   ``GROUP BY`` on Postgres); nothing is created to find out.
3. **The estimate** is, per season, the larger of projected and stored feature rows, summed
   over every season (stored seasons the daemon no longer follows count too).
4. **The choice.** A store that already holds rows is kept (the one with most rows when
   several do): moving data is ``scorebeater storage migrate``'s job, never a silent switch
   that would leave the history behind (a warning says when the estimate has outgrown it).
   Otherwise :func:`~scorebeater.storage.choose_backend` decides on the estimate: S3 at or
   above ``auto_threshold_rows`` (with a bucket), else Postgres (with a DSN), else local.

``expected_rows`` set (non-zero) overrides the measurement: nothing is asked, as before. When
the Score API cannot be asked within :data:`SIZING_TIMEOUT_S` the projection is left out (the
stored rows still count), logged as a warning: a start-up never waits on the estimate.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from scorebeater.errors import FatalError, ScorebeaterError, StorageError
from scorebeater.storage import choose_backend, open_storage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scorebeater.config import Config, StorageConfig

log = structlog.get_logger(__name__)

Backend = Literal["local", "s3", "postgres"]

DEFAULT_ROSTER = 15
"""Players per team assumed when a season's previous totals are not available (NBA rosters
hold 13-15 players, plus two-way and mid-season signings)."""
DEFAULT_GAMES_PER_TEAM = 82
"""Games per team assumed when the Score API does not say (an NBA regular season)."""
SIZING_TIMEOUT_S = 30.0
"""The most the Score API's part of the estimate may take at start-up."""


class SeasonLike(Protocol):
    """What the estimate reads of a season (the Score API client's ``SeasonInfo``)."""

    @property
    def season(self) -> int: ...
    @property
    def has_games(self) -> bool: ...
    @property
    def scheduled_games_per_team(self) -> int | None: ...


class SeasonFeed(Protocol):
    """The Score API calls the estimate makes (:class:`~scorebeater.clients.score_api.ScoreApiClient`)."""

    async def seasons(self) -> Sequence[SeasonLike]: ...

    def season_totals(self, season: int) -> AsyncIterator[object]: ...


@dataclass(frozen=True, slots=True)
class SeasonProjection:
    """One followed season's projected feature rows: players x games per team."""

    season: int
    players: int
    games_per_team: int
    players_from: Literal["totals", "roster"]

    @property
    def rows(self) -> int:
        return self.players * self.games_per_team


@dataclass(frozen=True, slots=True)
class SizeEstimate:
    """The measured size the ``auto`` choice is made on (all counts are feature rows)."""

    projected: tuple[SeasonProjection, ...] = ()
    stored: Mapping[Backend, Mapping[int, int]] = dataclasses.field(default_factory=dict)
    """Feature rows per season in each reachable backend that holds any."""
    projection_error: str | None = None
    """Why the Score API's projection is missing (``None``: it was made)."""

    @property
    def rows(self) -> int:
        """Per season the larger of projected and stored (the largest store), summed."""
        per_season: dict[int, int] = {p.season: p.rows for p in self.projected}
        for seasons in self.stored.values():
            for season, rows in seasons.items():
                per_season[season] = max(per_season.get(season, 0), rows)
        return sum(per_season.values())

    def holder(self) -> Backend | None:
        """The backend already holding the most feature rows, or ``None`` if none holds any."""
        totals = {name: sum(seasons.values()) for name, seasons in self.stored.items()}
        held = {name: rows for name, rows in totals.items() if rows}
        return max(held.items(), key=lambda item: item[1])[0] if held else None


async def project(feed: SeasonFeed, followed: Iterable[int] = ()) -> tuple[SeasonProjection, ...]:
    """Projected feature rows of the followed seasons (configured ones, else the latest with
    games), from the season list and the previous seasons' totals.

    Raises:
        ScoreApiError: the Score API failed (after its retries).
    """
    from scorebeater.clients.score_api_errors import ScoreApiNotFinal  # noqa: PLC0415 - start-up only
    from scorebeater.errors import ScoreApiNotFound  # noqa: PLC0415

    seasons = {s.season: s for s in await feed.seasons()}
    chosen = sorted(followed) or [max((s for s, i in seasons.items() if i.has_games), default=0)]
    out = []
    for season in (s for s in chosen if s):
        info = seasons.get(season)
        games = (info.scheduled_games_per_team if info else None) or DEFAULT_GAMES_PER_TEAM
        try:
            players = await _count(feed.season_totals(season - 1))
        except (ScoreApiNotFound, ScoreApiNotFinal):  # no previous season, or not final yet
            players = 0
        source: Literal["totals", "roster"] = "totals"
        if not players:
            # No previous totals (the first season served): 30 teams' rosters, as the NBA has.
            players, source = 30 * DEFAULT_ROSTER, "roster"
        out.append(SeasonProjection(season, players, games, source))
    return tuple(out)


async def _count(rows: AsyncIterator[object]) -> int:
    count = 0
    async for _ in rows:
        count += 1
    return count


async def stored_features(cfg: StorageConfig) -> dict[Backend, dict[int, int]]:
    """Feature rows per season in each backend ``cfg`` can reach and that already exists.

    Nothing is created: a local root is read only if it has a manifest directory, a Postgres
    schema only if its ``features`` table exists; an S3 prefix with no manifest counts as
    empty. A backend that cannot be reached is logged and left out.
    """
    found: dict[Backend, dict[int, int]] = {}
    candidates: list[Backend] = []
    if (cfg.local.root / "_manifest").is_dir():
        candidates.append("local")
    if cfg.s3.bucket:
        candidates.append("s3")
    if cfg.postgres.dsn is not None and await _postgres_schema_exists(cfg):
        candidates.append("postgres")
    for name in candidates:
        try:
            async with open_storage(dataclasses.replace(cfg, backend=name)) as storage:
                rows = (await storage.stored_rows()).get("features", {})
        except StorageError as exc:
            log.warning("storage.auto.store_unreachable", backend=name, error=str(exc))
            continue
        if rows:
            found[name] = rows
    return found


async def _postgres_schema_exists(cfg: StorageConfig) -> bool:
    """Whether the configured schema has a ``features`` table (one short connection)."""
    import asyncpg  # noqa: PLC0415 - an extra, loaded only with a DSN

    from scorebeater.storage.base import check_schema_name  # noqa: PLC0415
    from scorebeater.storage.postgres.connection import CONNECT_ERRORS  # noqa: PLC0415

    pg = cfg.postgres
    if pg.dsn is None:
        return False
    table = f'"{check_schema_name(pg.schema)}".features'
    failures: tuple[type[BaseException], ...] = (*CONNECT_ERRORS, TimeoutError)
    try:
        conn = await asyncpg.connect(pg.dsn.get(), timeout=pg.command_timeout_s)
        try:
            found = await conn.fetchval("SELECT to_regclass($1)", table, timeout=pg.command_timeout_s)
        finally:
            await conn.close()
    except failures as exc:
        # The type only: a driver's message may quote the DSN.
        log.warning("storage.auto.store_unreachable", backend="postgres", error=type(exc).__name__)
        return False
    return found is not None


def choose(cfg: StorageConfig, estimate: SizeEstimate) -> tuple[Backend, str]:
    """The backend for ``estimate`` and why: the store already holding rows, else the
    threshold rule of :func:`~scorebeater.storage.choose_backend` on the estimate."""
    holder = estimate.holder()
    if holder is not None:
        return holder, "existing_store"
    return choose_backend(dataclasses.replace(cfg, expected_rows=estimate.rows)), "estimate"


async def measure(cfg: Config, feed: SeasonFeed | None = None) -> SizeEstimate:
    """The :class:`SizeEstimate` for ``cfg``: projected rows from the Score API (``feed``, else
    a client of ``cfg.score_api`` opened for the purpose) and the stored rows. A Score API that
    fails or exceeds :data:`SIZING_TIMEOUT_S` leaves the projection out (logged)."""
    projected: tuple[SeasonProjection, ...] = ()
    error: str | None = None
    try:
        async with asyncio.timeout(SIZING_TIMEOUT_S):
            if feed is not None:
                projected = await project(feed, cfg.scheduler.seasons)
            else:
                from scorebeater.clients.score_api import ScoreApiClient  # noqa: PLC0415 - start-up only

                async with ScoreApiClient.open(cfg.score_api) as client:
                    projected = await project(client, cfg.scheduler.seasons)
    except (ScorebeaterError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("storage.auto.projection_failed", error=error)
    return SizeEstimate(
        projected=projected, stored=await stored_features(cfg.storage), projection_error=error
    )


async def stored_config(storage: StorageConfig) -> StorageConfig:
    """``storage`` with ``backend = "auto"`` resolved for a reader of an existing store (the
    retrain child, tools): the configured backend that already holds rows, else the threshold
    rule on ``expected_rows`` as configured. Asks no Score API: a reader must land on the store
    the daemon writes, and :func:`sized_config` keeps a store that holds rows."""
    if storage.backend != "auto":
        return storage
    estimate = SizeEstimate(projected=(), stored=await stored_features(storage))
    chosen, reason = choose(storage, estimate)
    log.info("storage.auto_resolved", backend=chosen, reason=reason)
    return dataclasses.replace(storage, backend=chosen)


async def sized_config(cfg: Config, feed: SeasonFeed | None = None) -> Config:
    """``cfg`` with ``backend = "auto"`` resolved to a concrete backend (others unchanged).

    ``expected_rows`` (non-zero) wins without measuring; otherwise :func:`measure` and
    :func:`choose`. The returned storage config carries the backend and the estimate in
    ``expected_rows``; both are logged (``storage.auto_sized``).
    """
    storage = cfg.storage
    if storage.backend != "auto":
        return cfg
    if storage.expected_rows:
        chosen: Backend = choose_backend(storage)
        log.info(
            "storage.auto_sized",
            backend=chosen,
            reason="expected_rows",
            estimate_rows=storage.expected_rows,
            auto_threshold_rows=storage.auto_threshold_rows,
        )
        return dataclasses.replace(cfg, storage=dataclasses.replace(storage, backend=chosen))
    estimate = await measure(cfg, feed)
    if estimate.projection_error is not None and estimate.holder() is None and storage.s3.bucket:
        # Nothing stored yet and no projection: the choice between S3 and the others would
        # rest on 0 rows, and replicas starting together could each choose a different store
        # (and each lead its own). Fail closed: the supervisor retries, or the operator decides.
        raise FatalError(
            "storage.backend = auto: cannot size a new store: the Score API's projection failed "
            f"({estimate.projection_error}) and no configured backend holds rows yet; "
            "retry when the Score API answers, or set [storage] expected_rows or a backend"
        )
    chosen, reason = choose(storage, estimate)
    by_rule = choose_backend(dataclasses.replace(storage, expected_rows=estimate.rows))
    log.info(
        "storage.auto_sized",
        backend=chosen,
        reason=reason,
        estimate_rows=estimate.rows,
        auto_threshold_rows=storage.auto_threshold_rows,
        projected={
            p.season: {"players": p.players, "games_per_team": p.games_per_team, "from": p.players_from}
            for p in estimate.projected
        },
        stored={name: sum(rows.values()) for name, rows in estimate.stored.items()},
    )
    if by_rule != chosen:
        log.warning(
            "storage.auto_outgrown",
            backend=chosen,
            suggested=by_rule,
            estimate_rows=estimate.rows,
            hint="the existing store is kept; move it with `scorebeater storage migrate`",
        )
    sized = dataclasses.replace(storage, backend=chosen, expected_rows=estimate.rows)
    return dataclasses.replace(cfg, storage=sized)
