"""The feature stage (the design note's ``feature_updater_service``).

Each iteration polls the Score API's games feed of every followed season for games that
turned final since the watermark, fetches their box scores, updates each player's running
totals and writes one feature row per affected player as of each game: the players in the
box score and every known player of the two teams (their team played a game, so their pace
changed even without a free throw).

Exactly-once, across crashes: the feature rows of a batch of games and the season's
checkpoint (processed game ids, team game counts, watermark) commit together; on start the
running totals are rebuilt from the latest stored rows, which always match the checkpoint. A
game seen twice (a feed overlap, a restart) is skipped by id, so it is never counted twice;
games missed while the daemon was down are caught up from the watermark.

``as_of_seq`` is the game's place in the order this stage processed the season's final
regular-season games (1, 2, ...): it equals the schedule's ``game_seq`` order whenever games
finish in schedule order, and stays monotonic when a game's result arrives late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
import pyarrow as pa
import structlog

from scorebeater.errors import ScoreApiNotFound, StageError
from scorebeater.inputs import INPUT_NAMES, PreviousSeasons, RunningTotals, as_of_inputs
from scorebeater.scoreapi.records import BoxScore, GameInfo
from scorebeater.stages.base import StageContext
from scorebeater.stages.handoff import CommittedFeatures, Handoff, features_checkpoint_name
from scorebeater.storage.base import FEATURES_SCHEMA, feature_hashes

log = structlog.get_logger(__name__)

MAX_GAMES_PER_COMMIT = 200
"""Bounds one commit (and the work lost to a crash mid-batch) during a catch-up."""
BOX_SCORE_CONCURRENCY = 8
FEED_OVERLAP = timedelta(milliseconds=1)
"""The feed's ``updated_since`` is exclusive; asking from just before the watermark re-reads
the games at it, which the processed-id set then skips: overlap is cheap, a gap is data loss."""


@dataclass(slots=True)
class PlayerState:
    """A player's season so far, as the stage keeps it between games."""

    player: str
    team: str
    """His team: that of his latest box-score line with a known team ("" if none yet)."""
    totals: RunningTotals
    last_game_teams: tuple[str, str] = ("", "")
    """Home and away of his latest game: while ``team`` is unknown, his team is whichever of
    the two has played more (the same rule the training set uses)."""

    def team_games(self, counts: dict[str, int]) -> int:
        if self.team:
            return counts.get(self.team, 0)
        return max(counts.get(t, 0) for t in self.last_game_teams)

    def plays_for_one_of(self, teams: set[str]) -> bool:
        return self.team in teams if self.team else bool(teams.intersection(self.last_game_teams))


@dataclass(slots=True)
class SeasonState:
    """Everything the stage knows about one season; the checkpoint part is persisted."""

    season: int
    season_games: int = 0
    processed: set[str] = field(default_factory=set)
    team_games: dict[str, int] = field(default_factory=dict)
    updated_since: str | None = None
    last_final_at: str | None = None
    complete: bool = False
    players: dict[int, PlayerState] = field(default_factory=dict)
    previous: dict[int, PreviousSeasons] = field(default_factory=dict)
    no_previous: set[int] = field(default_factory=set)
    last_game_teams: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Restored from the checkpoint; moved into ``players`` once their rows are loaded."""
    loaded: bool = False

    @property
    def checkpoint_name(self) -> str:
        return features_checkpoint_name(self.season)

    def checkpoint(self) -> bytes:
        return orjson.dumps(
            {
                "season": self.season,
                "season_games": self.season_games,
                "processed": sorted(self.processed),
                "team_games": self.team_games,
                "updated_since": self.updated_since,
                "last_final_at": self.last_final_at,
                "complete": self.complete,
                "no_previous": sorted(self.no_previous),
                # Read by the hand-off (season_complete) in any process.
                # Not derivable from the stored rows, unlike the running totals.
                "last_game_teams": {str(pid): list(ps.last_game_teams) for pid, ps in self.players.items()},
            }
        )

    def restore(self, raw: bytes) -> None:
        data = orjson.loads(raw)
        self.season_games = int(data["season_games"])
        self.processed = set(data["processed"])
        self.team_games = {str(k): int(v) for k, v in data["team_games"].items()}
        self.updated_since = data["updated_since"]
        self.last_final_at = data["last_final_at"]
        self.complete = bool(data["complete"])
        self.no_previous = {int(p) for p in data.get("no_previous", [])}
        self.last_game_teams = {
            int(p): (str(t[0]), str(t[1])) for p, t in data.get("last_game_teams", {}).items()
        }


class FeaturesStage:
    """Turns newly final games into feature rows. One instance per daemon.

    Hands off (see :mod:`scorebeater.stages.handoff`): every committed batch, a failed run
    (the prediction stage must reconcile), and a final season fully processed.
    """

    name = "features"

    def __init__(self, ctx: StageContext, handoff: Handoff) -> None:
        self._ctx = ctx
        self._handoff = handoff
        self.seasons: dict[int, SeasonState] = {}

    def status(self) -> dict[str, object]:
        """Per followed season: games processed, feed watermark, whether the season is done."""
        return {
            str(season): {
                "games_processed": len(s.processed),
                "last_final_at": s.last_final_at,
                "updated_since": s.updated_since,
                "regular_season_complete": s.complete,
            }
            for season, s in self.seasons.items()
        }

    def latest_season(self) -> int | None:
        """The latest season this stage has loaded, if any."""
        return max(self.seasons, default=None)

    async def followed_seasons(self) -> list[int]:
        """The configured seasons, else the latest season the Score API reports with games."""
        configured = self._ctx.cfg.scheduler.seasons
        if configured:
            return sorted(configured)
        seasons = [s for s in await self._ctx.scores.seasons() if s.has_games]
        if not seasons:
            return []
        latest = max(s.season for s in seasons)
        unfinished = [s for s, st in self.seasons.items() if not st.complete]
        return sorted({latest, *unfinished})

    async def run(self, run_id: str) -> dict[str, object]:
        """One iteration over every followed season; returns counts for status and logs."""
        del run_id  # bound into the log context by the runner
        games = rows = 0
        try:
            for season in await self.followed_seasons():
                state = await self._season_state(season)
                g, r = await self._catch_up(state)
                games += g
                rows += r
        except BaseException:
            # In-memory totals may be ahead of what committed: reload them from storage,
            # whose rows and checkpoint always agree.
            self.reset()
            raise
        return {"games": games, "rows": rows}

    async def _season_state(self, season: int) -> SeasonState:
        state = self.seasons.get(season)
        if state is None:
            state = SeasonState(season)
            self.seasons[season] = state
        if not state.loaded:
            await self._load(state)
        return state

    async def _load(self, state: SeasonState) -> None:
        """Restore the checkpoint and running totals; fetch previous seasons' totals once."""
        ctx = self._ctx
        info = await ctx.scores.season(state.season)
        raw = await ctx.storage.get_checkpoint(state.checkpoint_name)
        if raw is not None:
            state.restore(raw)
        if not info.scheduled_games_per_team:
            raise StageError(self.name, f"season {state.season} has no scheduled games per team yet")
        state.season_games = info.scheduled_games_per_team
        state.previous = await self._previous_seasons(state.season)
        async for batch in ctx.storage.read_latest_features(season=state.season):
            for row in batch.to_pylist():
                state.players[int(row["player_id"])] = PlayerState(
                    player=row["player"],
                    team=row["team"],
                    totals=RunningTotals(
                        ftm=round(row["ftm"]),
                        fta=round(row["fta"]),
                        games_with_fta=round(row["games_with_fta"]),
                        team_games=round(row["team_games"]),
                    ),
                    last_game_teams=state.last_game_teams.get(int(row["player_id"]), ("", "")),
                )
        state.loaded = True
        log.info(
            "features.season_loaded",
            season=state.season,
            processed_games=len(state.processed),
            players=len(state.players),
            with_previous_season=len(state.previous),
        )

    async def _previous_seasons(self, season: int) -> dict[int, PreviousSeasons]:
        prev1: dict[int, tuple[int, int, int, int | None, int | None, int]] = {}
        prev2: dict[int, tuple[int, int]] = {}
        # Only "no such season" means no previous season. Any other failure (an outage, a
        # season not final yet) must fail the run: loading on empty totals would mark this
        # season's players as having no previous season, and their games as done.
        try:
            async for t in self._ctx.scores.season_totals(season - 1):
                prev1[t.player_id] = (t.ftm, t.fta, t.games, t.minutes, t.age, t.experience)
        except ScoreApiNotFound as exc:
            log.warning("features.previous_season_unknown", season=season - 1, error=str(exc))
        try:
            async for t in self._ctx.scores.season_totals(season - 2):
                prev2[t.player_id] = (t.ftm, t.games)
        except ScoreApiNotFound as exc:
            log.info("features.second_previous_season_unknown", season=season - 2, error=str(exc))
        out: dict[int, PreviousSeasons] = {}
        for pid, (ftm, fta, games, minutes, age, experience) in prev1.items():
            p2_ftm, p2_games = prev2.get(pid, (0, 0))
            out[pid] = PreviousSeasons(
                ftm=ftm,
                fta=fta,
                games=games,
                minutes=minutes,
                age=age,
                experience=experience,
                prev2_ftm=p2_ftm,
                prev2_games=p2_games,
            )
        return out

    async def _new_final_games(self, state: SeasonState) -> list[GameInfo]:
        since = datetime.fromisoformat(state.updated_since) - FEED_OVERLAP if state.updated_since else None
        fresh: dict[str, GameInfo] = {}
        async for game in self._ctx.scores.games(state.season, status="final", updated_since=since):
            if game.season_type != "regular" or game.game_id in state.processed:
                continue
            fresh[game.game_id] = game
        return sorted(fresh.values(), key=lambda g: (g.final_at or g.updated_at, g.game_seq, g.game_id))

    async def _catch_up(self, state: SeasonState) -> tuple[int, int]:
        ctx = self._ctx
        seen_at = time.monotonic()
        games = await self._new_final_games(state)
        processed_games = rows_written = 0
        stuck: list[GameInfo] = []
        for start in range(0, len(games), MAX_GAMES_PER_COMMIT):
            chunk = games[start : start + MAX_GAMES_PER_COMMIT]
            fetched = await self._box_scores(chunk)
            ready = [(g, b) for g, b in zip(chunk, fetched, strict=True) if b is not None]
            stuck.extend(g for g, b in zip(chunk, fetched, strict=True) if b is None)
            if stuck:
                # A rejected box score stays unprocessed and is asked for again on the next
                # poll: the watermark must not pass it.
                log.warning(
                    "features.box_scores_rejected", season=state.season, games=[g.game_id for g in stuck]
                )
            table = self._apply(state, [g for g, _ in ready], [b for _, b in ready], hold=stuck)
            await ctx.storage.write_features(table, checkpoint=(state.checkpoint_name, state.checkpoint()))
            processed_games += len(chunk)
            rows_written += table.num_rows
            ctx.metrics.games_processed.inc(len(chunk))
            ctx.metrics.feature_rows_written.inc(table.num_rows)
            ctx.metrics.features_last_materialized.set(time.time())
            ctx.metrics.watermark_seq.labels(self.name).set(len(state.processed))
            if state.last_final_at:
                ctx.metrics.watermark_time.labels(self.name).set(
                    datetime.fromisoformat(state.last_final_at).timestamp()
                )
            if table.num_rows:
                self._handoff.features_committed(CommittedFeatures(rows=table, seen_at=seen_at))
        await self._check_complete(state)
        return processed_games, rows_written

    async def _box_scores(self, games: list[GameInfo]) -> list[BoxScore | None]:
        sem = asyncio.Semaphore(BOX_SCORE_CONCURRENCY)

        async def fetch(game: GameInfo) -> BoxScore | None:
            async with sem:
                return await self._ctx.scores.box_score(game.game_id, season=game.season)

        # A TaskGroup: when one fetch fails, the others are cancelled, not left running. The
        # first failure is raised as itself (a typed Score API error), not as a group.
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(fetch(g)) for g in games]
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        return [t.result() for t in tasks]

    def _apply(
        self, state: SeasonState, games: list[GameInfo], boxes: list[BoxScore], *, hold: list[GameInfo]
    ) -> pa.Table:
        """Advance the in-memory state over ``games`` and return their feature rows.

        The commit follows at once; if it fails, ``run`` resets the state so it is reloaded
        from storage: in-memory totals never outlive a failed write.
        """
        columns: dict[str, list[object]] = {f.name: [] for f in FEATURES_SCHEMA if f.name != "feature_hash"}
        for game, box in zip(games, boxes, strict=True):
            seq = len(state.processed) + 1
            state.processed.add(game.game_id)
            for team in (game.home, game.away):
                state.team_games[team] = state.team_games.get(team, 0) + 1
            affected: set[int] = set()
            for line in box.players:
                pid = line.player_id
                if pid not in state.previous:
                    state.no_previous.add(pid)
                    continue
                current = state.players.get(pid)
                team = line.team or (current.team if current else "")
                base = current.totals if current else RunningTotals()
                totals = RunningTotals(
                    ftm=base.ftm + line.ftm,
                    fta=base.fta + line.fta,
                    games_with_fta=base.games_with_fta + (1 if line.fta > 0 else 0),
                    team_games=base.team_games,
                )
                state.players[pid] = PlayerState(
                    player=line.player, team=team, totals=totals, last_game_teams=(game.home, game.away)
                )
                affected.add(pid)
            teams = {game.home, game.away}
            affected.update(pid for pid, ps in state.players.items() if ps.plays_for_one_of(teams))
            final_at = game.final_at or game.updated_at
            if state.last_final_at is not None:
                # A game whose result came late still yields rows that include every earlier
                # processed game: its knowledge time is the latest of them, never earlier.
                final_at = max(final_at, datetime.fromisoformat(state.last_final_at))
            for pid in sorted(affected):
                ps = state.players[pid]
                ps.totals = RunningTotals(
                    ftm=ps.totals.ftm,
                    fta=ps.totals.fta,
                    games_with_fta=ps.totals.games_with_fta,
                    team_games=ps.team_games(state.team_games),
                )
                values = as_of_inputs(state.previous[pid], ps.totals, state.season_games)
                columns["player_id"].append(pid)
                columns["season"].append(state.season)
                columns["as_of_seq"].append(seq)
                columns["as_of_game_id"].append(game.game_id)
                columns["as_of_time"].append(final_at)
                columns["player"].append(ps.player)
                columns["team"].append(ps.team)
                for name in INPUT_NAMES:
                    columns[name].append(values[name])
            state.updated_since = max(state.updated_since or "", game.updated_at.isoformat())
            state.last_final_at = final_at.isoformat()
        if hold:
            earliest = min(g.updated_at for g in hold).isoformat()
            if state.updated_since is None or earliest < state.updated_since:
                state.updated_since = earliest
        table = pa.table(
            columns, schema=FEATURES_SCHEMA.remove(FEATURES_SCHEMA.get_field_index("feature_hash"))
        )
        return table.append_column(
            FEATURES_SCHEMA.field("feature_hash"), pa.array(feature_hashes(table), pa.string())
        )

    def reset(self) -> None:
        """Forget in-memory state so the next run reloads it from storage (after a failure)."""
        self._handoff.features_failed()
        for state in self.seasons.values():
            state.loaded = False
            state.players.clear()
            state.last_game_teams.clear()
            state.processed.clear()
            state.team_games.clear()
            state.updated_since = state.last_final_at = None

    async def _check_complete(self, state: SeasonState) -> None:
        if state.complete:
            return
        info = await self._ctx.scores.season(state.season)
        if info.regular_season_final and len(state.processed) >= info.games.regular:
            state.complete = True
            await self._ctx.storage.put_checkpoint(state.checkpoint_name, state.checkpoint())
            log.info("features.season_complete", season=state.season, games=len(state.processed))
            self._handoff.season_features_complete(state.season)

    def known_without_previous(self, season: int) -> Iterable[int]:
        """Players seen in ``season``'s box scores who have no previous season (no prediction)."""
        state = self.seasons.get(season)
        return state.no_previous if state else ()
