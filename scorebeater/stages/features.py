"""The feature stage (the design note's ``feature_updater_service``).

Each iteration polls the Score API's games feed of every followed season for games that
turned final since the watermark, fetches their box scores, updates each player's running
totals and writes one feature row per affected player as of each game: the players in the
box score and every known player of the two teams (their team played a game, so their pace
changed even without a free throw).

Exactly-once, across crashes: the feature rows of a batch of games and the season's
checkpoint (:mod:`~scorebeater.stages.season_state`: processed and set-aside game ids, team
game counts, watermark) commit together; on start the running totals are rebuilt from the
latest stored rows, which always match the checkpoint. A game seen twice (a feed overlap, a
restart) is skipped by id, so it is never counted twice; games missed while the daemon was
down are caught up from the watermark.

Progress is committed incrementally: the box scores are fetched in processing order
(:mod:`~scorebeater.stages.box_scores`), and when one game's fetch fails the games before it
are committed and only that game and the later ones are held back for the next run (the box
scores fetched after it are kept in memory, so the next run asks only for the games that
failed). A run that committed something returns normally (``held_back`` in its result and
status); a run whose very first game fails raises, and is backed off. A cancelled run (shutdown) commits the
games it fetched completely, in order, within ``shutdown_grace_s``, before the cancellation
goes on.

No record stops a season (:mod:`~scorebeater.stages.quarantine`): a box score that fails
validation is quarantined at once, and a game whose fetch keeps failing past its retry budget
(:data:`~scorebeater.stages.season_state.RETRY_BUDGET_RUNS` runs over
:data:`~scorebeater.stages.season_state.RETRY_BUDGET_S` seconds) is quarantined too; the
stage moves past it. A quarantined game is wholly absent until an operator's retry succeeds:
its players have no rows as of it, their totals and their teams' games played leave it out.
A season completes once each of its regular-season games is processed or quarantined and
skipped by an operator; a rejected box score is counted in ``records_rejected`` once, when
first quarantined.

What a season's players did before it (their previous seasons' totals and the previous
season's schedule: :mod:`~scorebeater.stages.previous_seasons`) is fetched when the season is
loaded. Rows stored before the current feature schema
(:data:`~scorebeater.storage.base.FEATURES_SCHEMA_VERSION`, recorded in the checkpoint) lack
the inputs added since: loading the season fills them in once, as they all come from the
previous seasons (:meth:`FeaturesStage._backfill`); rows that cannot be filled are counted,
logged and left as they are (a model taking those inputs skips them).

``as_of_seq`` is the game's place in the order this stage processed the season's final
regular-season games (1, 2, ...): it equals the schedule's ``game_seq`` order whenever games
finish in schedule order, and stays monotonic when a game's result arrives late (or is
retried after quarantine).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyarrow as pa
import structlog

from scorebeater.errors import StageError
from scorebeater.inputs import INPUT_NAMES, RunningTotals
from scorebeater.scoreapi.records import BoxScore, GameInfo
from scorebeater.stages.base import StageContext
from scorebeater.stages.box_scores import BoxScoreFetch, GameFailure, Outcome, Rejected
from scorebeater.stages.handoff import CommittedFeatures, Handoff
from scorebeater.stages.previous_seasons import previous_seasons
from scorebeater.stages.quarantine import KIND, SeasonQuarantine
from scorebeater.stages.season_state import GameFailures, PlayerState, SeasonState
from scorebeater.storage.base import FEATURES_SCHEMA_VERSION, LATE_INPUTS
from scorebeater.storage.quarantine import STATES, QuarantineEntry

log = structlog.get_logger(__name__)

MAX_GAMES_PER_COMMIT = 200
"""Bounds one commit (and the work lost to a crash mid-batch) during a catch-up."""
BOX_SCORE_CONCURRENCY = 8
FEED_OVERLAP = timedelta(milliseconds=1)
"""The feed's ``updated_since`` is exclusive; asking from just before the watermark re-reads
the games at it, which the processed-id set then skips: overlap is cheap, a gap is data loss."""
REJECTED_KIND = "boxscore"
"""``records_rejected``'s ``kind`` of a box score (the Score API client's name for it)."""
UNFILLED_KIND = "feature_row"
"""``records_rejected``'s ``kind`` of a stored feature row the backfill could not fill in
(reasons: :data:`~scorebeater.stages.season_state.UNFILLED_NO_PREVIOUS`,
:data:`~scorebeater.stages.season_state.UNFILLED_PREVIOUS_REVISED`)."""


@dataclass(frozen=True, slots=True)
class Committed:
    """What one commit of a catch-up did."""

    games: int = 0
    """Games processed (their box scores became feature rows)."""
    rows: int = 0
    quarantined: int = 0
    """Games set aside in the quarantine table."""
    held_back: int = 0
    """Games left for the next run (the failed one and every later one)."""


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
        self._fetched: dict[str, tuple[datetime, BoxScore]] = {}
        """Box scores fetched but held back (a game before them failed), by game id, with the
        game's ``updated_at``: the next run asks only for the games that failed. They are facts
        from the API, not state, so they survive a reset; a committed game's is dropped."""

    def status(self) -> dict[str, object]:
        """Per followed season: games processed and quarantined (by state), the feed
        watermark, why games were held back in the last run, whether the season is done."""
        return {
            str(season): {
                "games_processed": len(s.processed),
                "games_quarantined": dict(s.quarantine_counts) or dict.fromkeys(STATES, 0),
                "held_back": s.held_back,
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
        done: Counter[str] = Counter(games=0, rows=0, quarantined=0, held_back=0)
        try:
            listed = await self._ctx.storage.quarantine.entries(kind=KIND)
            views: dict[int, SeasonQuarantine] = {}
            try:
                for season in await self.followed_seasons():
                    state = await self._season_state(season)
                    views[season] = SeasonQuarantine(self._ctx.storage.quarantine, season, listed)
                    done.update(await self._catch_up(state, views[season]))
            finally:
                self._publish_quarantine(listed, views)
        except BaseException:
            # In-memory totals may be ahead of what committed: reload them from storage,
            # whose rows and checkpoint always agree (once abandoned commits end: _load).
            self.reset()
            raise
        return dict(done)

    def _publish_quarantine(
        self, listed: Sequence[QuarantineEntry], views: dict[int, SeasonQuarantine]
    ) -> None:
        """Set the quarantine gauge: this run's view of its seasons, the listing for the rest."""
        counts: Counter[str] = Counter(e.state for e in listed if e.season not in views)
        for season, view in views.items():
            counts.update(view.counts())
            if season in self.seasons:
                self.seasons[season].quarantine_counts = view.counts()
        for state in STATES:
            self._ctx.metrics.quarantined.labels(KIND, state).set(counts[state])

    async def _season_state(self, season: int) -> SeasonState:
        state = self.seasons.get(season)
        if state is None:
            state = SeasonState(season)
            self.seasons[season] = state
        if not state.loaded:
            await self._load(state)
        return state

    async def _load(self, state: SeasonState) -> None:
        """Restore the checkpoint and running totals; fetch previous seasons' totals once;
        fill in the inputs rows stored before the current feature schema lack."""
        ctx = self._ctx
        info = await ctx.scores.season(state.season)
        # A commit that a failed run's cancellation left going must end first, or the state
        # loaded here would be behind the store once it lands (waited for, never cancelled).
        await ctx.storage.drain_commits(timeout_s=None)
        raw = await ctx.storage.get_checkpoint(state.checkpoint_name)
        if raw is not None:
            state.restore(raw)
        if not info.scheduled_games_per_team:
            raise StageError(self.name, f"season {state.season} has no scheduled games per team yet")
        state.season_games = info.scheduled_games_per_team
        if not state.previous:  # fetched once: a reload after a failed run reuses them
            state.previous = await previous_seasons(ctx.scores, state.season)
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
        if state.feature_schema < FEATURES_SCHEMA_VERSION:
            await self._backfill(state)
        state.loaded = True
        if state.complete:
            # Completed by an earlier process, which may have stopped before the season's last
            # predictions and its validation: hand it off again (rule 4). A validation that
            # already stored the outcomes only recomputes the metrics.
            self._handoff.season_features_complete(state.season)
        log.info(
            "features.season_loaded",
            season=state.season,
            processed_games=len(state.processed),
            quarantined_games=len(state.quarantined),
            players=len(state.players),
            with_previous_season=len(state.previous),
        )

    async def _backfill(self, state: SeasonState) -> None:
        """Fill in the inputs that the season's rows stored before the current feature schema
        lack (:meth:`SeasonState.backfill`), and record the season's new version with them.

        It runs once per season: rows that cannot be filled (no previous season now, or
        previous-season totals revised since) are counted
        (``records_rejected{kind="feature_row", reason=...}``) and logged, keep their nulls,
        and the season is recorded at the current version all the same, so a later load does
        not read its history again to fail on them again. A model that takes the added inputs
        skips those rows (:mod:`~scorebeater.stages.scoring`); one that does not scores them.

        One write: the rows and the checkpoint commit together, and the rows are upserted by
        key, so a crash leaves either the old rows or the filled ones, and the next load
        redoes whatever is missing. The predictions of the old rows stay (they were made by a
        model that does not take the added inputs); a refeed scores the filled rows anew, and
        the next prediction run reconciles (filled rows no model could score yet).
        """
        storage = self._ctx.storage
        parts: list[pa.Table] = []
        unfilled: Counter[str] = Counter()
        async for table in storage.read_feature_history(seasons=[state.season]):
            filled, left = state.backfill(table)
            unfilled.update(left)
            if filled.num_rows:
                parts.append(filled)
        rows = pa.concat_tables(parts) if parts else None
        state.feature_schema = FEATURES_SCHEMA_VERSION
        checkpoint = (state.checkpoint_name, state.checkpoint())
        if rows is not None:
            await storage.write_features(rows, checkpoint=checkpoint)
            self._handoff.features_backfilled()
        else:
            await storage.put_checkpoint(*checkpoint)
        for reason, count in sorted(unfilled.items()):
            self._ctx.metrics.records_rejected.labels(UNFILLED_KIND, reason).inc(count)
        (log.warning if unfilled else log.info)(
            "features.rows_backfilled",
            season=state.season,
            rows=0 if rows is None else rows.num_rows,
            unfilled=unfilled.total(),
            unfilled_by_reason=dict(sorted(unfilled.items())),
            missing_inputs=[n for n in INPUT_NAMES if n in LATE_INPUTS] if unfilled else [],
            feature_schema=state.feature_schema,
        )

    async def _new_final_games(self, state: SeasonState, retry: set[str]) -> list[GameInfo]:
        """Final regular-season games not processed, in processing order: those turned final
        since the watermark, and quarantined ones an operator marked for retry (the whole feed
        is read then: the watermark has passed them)."""
        since = None
        if state.updated_since and not retry:
            since = datetime.fromisoformat(state.updated_since) - FEED_OVERLAP
        set_aside = state.quarantined - retry
        fresh: dict[str, GameInfo] = {}
        async for game in self._ctx.scores.games(state.season, status="final", updated_since=since):
            if game.season_type != "regular" or game.game_id in state.processed or game.game_id in set_aside:
                continue
            fresh[game.game_id] = game
        return sorted(fresh.values(), key=lambda g: (g.final_at or g.updated_at, g.game_seq, g.game_id))

    async def _catch_up(self, state: SeasonState, quarantine: SeasonQuarantine) -> dict[str, int]:
        # A crash after a commit may have left entries of processed games unresolved.
        await quarantine.put(quarantine.resolved(state.processed))
        seen_at = time.monotonic()
        games = await self._new_final_games(state, quarantine.keys("retry"))
        done: Counter[str] = Counter()
        state.held_back = None
        for start in range(0, len(games), MAX_GAMES_PER_COMMIT):
            chunk = games[start : start + MAX_GAMES_PER_COMMIT]
            known = {
                g.game_id: hit[1]
                for g in chunk
                if (hit := self._fetched.get(g.game_id)) is not None and hit[0] == g.updated_at
            }
            fetch = BoxScoreFetch(self._ctx.scores, chunk, concurrency=BOX_SCORE_CONCURRENCY, known=known)
            try:
                await fetch.run()
            except BaseException:
                self._remember(fetch)
                await self._keep_fetched(state, quarantine, fetch, seen_at)
                raise
            self._remember(fetch)
            committed = await self._commit(
                state,
                quarantine,
                prefix=fetch.prefix(),
                held=fetch.held(),
                failure=fetch.failure,
                seen_at=seen_at,
            )
            done.update(games=committed.games, rows=committed.rows, quarantined=committed.quarantined)
            if fetch.failure is not None:
                if not (done["games"] or done["quarantined"]):
                    raise fetch.failure.error  # no progress at all: back off
                # The failed game and every later one, in this chunk and the next ones.
                done["held_back"] = len(games) - start - len(fetch.games) + committed.held_back
                break
        state.quarantine_counts = quarantine.counts()
        await self._check_complete(state, quarantine)
        return dict(done)

    def _remember(self, fetch: BoxScoreFetch) -> None:
        """Keep the box scores fetched past the prefix for the next run (see ``_fetched``)."""
        for game, box in fetch.fetched_later():
            self._fetched[game.game_id] = (game.updated_at, box)

    async def _keep_fetched(
        self, state: SeasonState, quarantine: SeasonQuarantine, fetch: BoxScoreFetch, seen_at: float
    ) -> None:
        """An aborted or cancelled fetch: commit the games it completed, in order (bounded by
        ``shutdown_grace_s``), so a run cut short at shutdown keeps what it fetched."""
        prefix = fetch.prefix()
        if not prefix:
            return
        try:
            async with asyncio.timeout(self._ctx.cfg.scheduler.shutdown_grace_s):
                committed = await self._commit(
                    state, quarantine, prefix=prefix, held=fetch.held(), failure=None, seen_at=seen_at
                )
        except Exception:  # the caller re-raises the original error (or cancellation)
            # A commit the timeout cut short may still land (storage.inflight logs it); either
            # way the stage reloads its state from storage before its next run.
            log.warning(
                "features.fetched_games_not_kept", season=state.season, games=len(prefix), exc_info=True
            )
        else:
            log.info("features.fetched_games_kept", season=state.season, games=committed.games)

    async def _commit(
        self,
        state: SeasonState,
        quarantine: SeasonQuarantine,
        *,
        prefix: list[tuple[GameInfo, Outcome]],
        held: list[GameInfo],
        failure: GameFailure | None,
        seen_at: float,
    ) -> Committed:
        """Quarantine what must be, apply the prefix in order and commit it with the checkpoint.

        ``failure`` (the fetch of ``held[0]`` failed) charges that game one run of its retry
        budget; a spent budget quarantines it after the prefix. Quarantine entries are stored
        before the feature commit, resolved ones after it.
        """
        ctx = self._ctx
        now = ctx.clock.now()
        entries: list[QuarantineEntry] = []
        new: list[QuarantineEntry] = []
        order: list[tuple[GameInfo, BoxScore | None]] = []
        for game, outcome in prefix:
            if isinstance(outcome, Rejected):
                entry, first_time = quarantine.rejected(game, outcome, now)
                entries.append(entry)
                if first_time:
                    new.append(entry)
                order.append((game, None))
            else:
                order.append((game, outcome))
        if failure is not None and held:
            game, error = held[0], f"{type(failure.error).__name__}: {failure.error}"
            known = state.failures.get(game.game_id)
            failures = GameFailures(1, now, now, error) if known is None else known.charged(now, error)
            state.held_back = f"game {game.game_id}: {error}"
            if failures.budget_spent:
                entries.append(quarantine.budget_spent(game, failures))
                order.append((game, None))
                held = held[1:]
            else:
                state.failures[game.game_id] = failures
            log.warning(
                "features.games_held_back",
                season=state.season,
                game_id=game.game_id,
                failed_runs=failures.runs,
                quarantined=failures.budget_spent,
                held_back=len(held),
                error=error,
            )
        await quarantine.put(entries)
        for entry in new:
            ctx.metrics.records_rejected.labels(REJECTED_KIND, entry.reason).inc()
        processed = sum(1 for _, box in order if box is not None)
        table = state.apply(order, hold=held)
        await ctx.storage.write_features(table, checkpoint=(state.checkpoint_name, state.checkpoint()))
        for game, _ in order:
            self._fetched.pop(game.game_id, None)
        ctx.metrics.games_processed.inc(processed)
        ctx.metrics.feature_rows_written.inc(table.num_rows)
        ctx.metrics.features_last_materialized.set(time.time())
        ctx.metrics.watermark_seq.labels(self.name).set(len(state.processed))
        if state.last_final_at:
            ctx.metrics.watermark_time.labels(self.name).set(
                datetime.fromisoformat(state.last_final_at).timestamp()
            )
        if table.num_rows:
            self._handoff.features_committed(CommittedFeatures(rows=table, seen_at=seen_at))
        await quarantine.put(quarantine.resolved(state.processed))
        return Committed(
            games=processed, rows=table.num_rows, quarantined=len(order) - processed, held_back=len(held)
        )

    def reset(self) -> None:
        """Forget in-memory state so the next run reloads it from storage (after a failure)."""
        self._handoff.features_failed()
        for state in self.seasons.values():
            state.forget()

    async def _check_complete(self, state: SeasonState, quarantine: SeasonQuarantine) -> None:
        """Complete once the regular season is final and every game is processed, or set aside
        and skipped by an operator."""
        if state.complete:
            return
        info = await self._ctx.scores.season(state.season)
        skipped = state.quarantined & quarantine.keys("skipped")
        if info.regular_season_final and len(state.processed) + len(skipped) >= info.games.regular:
            state.complete = True
            await self._ctx.storage.put_checkpoint(state.checkpoint_name, state.checkpoint())
            log.info(
                "features.season_complete",
                season=state.season,
                games=len(state.processed),
                skipped=len(skipped),
            )
            self._handoff.season_features_complete(state.season)

    def known_without_previous(self, season: int) -> Iterable[int]:
        """Players seen in ``season``'s box scores who have no previous season (no prediction)."""
        state = self.seasons.get(season)
        return state.no_previous if state else ()
