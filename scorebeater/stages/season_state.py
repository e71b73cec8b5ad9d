"""What the feature stage knows about a season, how a game advances it, and its checkpoint.

The checkpoint (``features.<season>``, committed with the season's feature rows) holds the
processed game ids, the team game counts, the feed watermark, the games set aside in the
quarantine table, the games that failed in recent runs (the retry budget, which a game
that keeps failing exhausts), and the feature schema version all the season's stored rows
have. The running totals are not in it: they are rebuilt from the stored rows, which always
agree with it. Nor are the previous seasons: they are fetched again on every load.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa

from scorebeater.inputs import INPUT_NAMES, PreviousSeasons, RunningTotals, as_of_inputs
from scorebeater.scoreapi.records import BoxScore, GameInfo
from scorebeater.stages.handoff import features_checkpoint_name
from scorebeater.storage.base import (
    FEATURES_SCHEMA,
    FEATURES_SCHEMA_VERSION,
    LATE_INPUTS,
    feature_hashes,
)

_FROM_PREVIOUS_V1 = (
    "prev_ftm",
    "prev_fta",
    "prev_games",
    "prev_minutes",
    "prev2_ftm",
    "prev2_games",
    "experience",
    "age",
)
"""The inputs of feature schema version 1 that come from the previous seasons alone."""
UNFILLED_NO_PREVIOUS = "no_previous_season"
"""A stored row the backfill cannot fill: its player has no previous season now."""
UNFILLED_PREVIOUS_REVISED = "previous_season_revised"
"""A stored row the backfill cannot fill: its previous-season inputs differ from what the
previous seasons' totals say now (revised since it was stored)."""
RETRY_BUDGET_RUNS = 3
"""Runs in which a game's box score must have failed (transient or not, but not rejected as
invalid, which quarantines at once) before it is quarantined..."""
RETRY_BUDGET_S = 600.0
"""...and the least time between its first and its latest failure. A game is set aside only
when both are spent: at a 50% error rate a game fails three runs in a row now and then, but not
for ten minutes; a box score that always fails stops holding its season back after ten."""


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
class GameFailures:
    """A game whose box score failed in one or more runs and is not quarantined (yet)."""

    runs: int
    first_failed_at: dt.datetime
    last_failed_at: dt.datetime
    error: str

    def charged(self, now: dt.datetime, error: str) -> GameFailures:
        """These failures and one more run's, at ``now``."""
        return GameFailures(self.runs + 1, self.first_failed_at, max(now, self.last_failed_at), error)

    @property
    def budget_spent(self) -> bool:
        """Whether the game has failed for :data:`RETRY_BUDGET_RUNS` runs over
        :data:`RETRY_BUDGET_S` seconds: it goes to quarantine."""
        span = (self.last_failed_at - self.first_failed_at).total_seconds()
        return self.runs >= RETRY_BUDGET_RUNS and span >= RETRY_BUDGET_S

    def as_json(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "first_failed_at": self.first_failed_at.isoformat(),
            "last_failed_at": self.last_failed_at.isoformat(),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> GameFailures:
        return cls(
            runs=int(str(data["runs"])),
            first_failed_at=dt.datetime.fromisoformat(str(data["first_failed_at"])),
            last_failed_at=dt.datetime.fromisoformat(str(data["last_failed_at"])),
            error=str(data["error"]),
        )


@dataclass(slots=True)
class SeasonState:
    """Everything the stage knows about one season; the checkpoint part is persisted."""

    season: int
    season_games: int = 0
    processed: set[str] = field(default_factory=set)
    quarantined: set[str] = field(default_factory=set)
    """Games set aside (their box score is in the quarantine table), not processed: the
    watermark has passed them, and their season completes once an operator skips them."""
    failures: dict[str, GameFailures] = field(default_factory=dict)
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
    quarantine_counts: dict[str, int] = field(default_factory=dict)
    """The season's box scores in the quarantine table by state, as of the last run (status)."""
    held_back: str | None = None
    """Why the last run held games back (the failed game and its error), if it did (status)."""
    feature_schema: int = FEATURES_SCHEMA_VERSION
    """The feature schema version the season's stored rows have been brought to (checkpointed).
    A checkpoint written before versions existed is version 1: the rows stored then lack the
    inputs added since, until :meth:`backfill` fills them in. The backfill runs once: after it
    the season is at the current version, though rows it could not fill keep their nulls
    (models taking those inputs skip them)."""

    @property
    def checkpoint_name(self) -> str:
        return features_checkpoint_name(self.season)

    def checkpoint(self) -> bytes:
        return orjson.dumps(
            {
                "season": self.season,
                "season_games": self.season_games,
                "processed": sorted(self.processed),
                "quarantined": sorted(self.quarantined),
                "failures": {game: f.as_json() for game, f in sorted(self.failures.items())},
                "team_games": self.team_games,
                "updated_since": self.updated_since,
                "last_final_at": self.last_final_at,
                "complete": self.complete,
                "no_previous": sorted(self.no_previous),
                "feature_schema": self.feature_schema,
                # Read by the hand-off (season_complete) in any process.
                # Not derivable from the stored rows, unlike the running totals.
                "last_game_teams": {str(pid): list(ps.last_game_teams) for pid, ps in self.players.items()},
            }
        )

    def restore(self, raw: bytes) -> None:
        """Take the checkpointed part from ``raw`` (a checkpoint written before quarantining
        existed has no set-aside or failing games; one written before feature schema versions
        existed is version 1)."""
        data = orjson.loads(raw)
        self.season_games = int(data["season_games"])
        self.processed = set(data["processed"])
        self.quarantined = set(data.get("quarantined", []))
        self.failures = {str(g): GameFailures.from_json(f) for g, f in data.get("failures", {}).items()}
        self.team_games = {str(k): int(v) for k, v in data["team_games"].items()}
        self.updated_since = data["updated_since"]
        self.last_final_at = data["last_final_at"]
        self.complete = bool(data["complete"])
        self.no_previous = {int(p) for p in data.get("no_previous", [])}
        self.feature_schema = int(data.get("feature_schema", 1))
        self.last_game_teams = {
            int(p): (str(t[0]), str(t[1])) for p, t in data.get("last_game_teams", {}).items()
        }

    def apply(
        self, games: Sequence[tuple[GameInfo, BoxScore | None]], *, hold: Sequence[GameInfo]
    ) -> pa.Table:
        """Advance over ``games`` in order and return the feature rows of the processed ones.

        ``None`` instead of a box score sets the game aside (quarantined): the watermark passes
        it, nothing else counts it. ``hold`` are games left for a later run: the watermark
        stays before them. The caller commits the rows with :meth:`checkpoint` at once; if
        that fails, it must :meth:`forget` this state (totals never outlive a failed write).
        """
        columns: dict[str, list[object]] = {f.name: [] for f in FEATURES_SCHEMA if f.name != "feature_hash"}
        for game, box in games:
            self.failures.pop(game.game_id, None)
            self.updated_since = max(self.updated_since or "", game.updated_at.isoformat())
            if box is None:
                self.quarantined.add(game.game_id)
                continue
            self.quarantined.discard(game.game_id)
            seq = len(self.processed) + 1
            self.processed.add(game.game_id)
            final_at = self._advance(game, box)
            for pid in sorted(self._affected(game, box)):
                ps = self.players[pid]
                ps.totals = RunningTotals(
                    ftm=ps.totals.ftm,
                    fta=ps.totals.fta,
                    games_with_fta=ps.totals.games_with_fta,
                    team_games=ps.team_games(self.team_games),
                )
                values = as_of_inputs(self.previous[pid], ps.totals, self.season_games)
                columns["player_id"].append(pid)
                columns["season"].append(self.season)
                columns["as_of_seq"].append(seq)
                columns["as_of_game_id"].append(game.game_id)
                columns["as_of_time"].append(final_at)
                columns["player"].append(ps.player)
                columns["team"].append(ps.team)
                for name in INPUT_NAMES:
                    columns[name].append(values[name])
            self.last_final_at = final_at.isoformat()
        if hold:
            earliest = min(g.updated_at for g in hold).isoformat()
            if self.updated_since is None or earliest < self.updated_since:
                self.updated_since = earliest
        table = pa.table(
            columns, schema=FEATURES_SCHEMA.remove(FEATURES_SCHEMA.get_field_index("feature_hash"))
        )
        return table.append_column(
            FEATURES_SCHEMA.field("feature_hash"), pa.array(feature_hashes(table), pa.string())
        )

    def backfill(self, rows: pa.Table) -> tuple[pa.Table, Counter[str]]:
        """The stored ``rows`` of this season that lack inputs (stored before feature schema
        :data:`FEATURES_SCHEMA_VERSION`), with them filled in, and how many could not be, by
        reason (:data:`UNFILLED_NO_PREVIOUS`, :data:`UNFILLED_PREVIOUS_REVISED`).

        The inputs added since version 1 all come from the previous seasons, so they are
        derived as for a new row (:func:`as_of_inputs`) from :attr:`previous`. A row is left
        out (and counted) when its player has no previous seasons now, or when its stored
        previous-season inputs differ from what they now say (an official correction since):
        a fresh derivation would store different values for those too, and what the added
        inputs said when the row was stored (three seasons back, say) is not known, so no
        filling makes a row a derivation gives. Such a row keeps its nulls; a model taking the
        added inputs skips it (:mod:`~scorebeater.stages.scoring`). The filled rows get their
        new ``feature_hash``.
        """
        lacking = np.zeros(rows.num_rows, dtype=bool)
        for name in LATE_INPUTS:
            lacking |= rows.column(name).is_null().to_numpy(zero_copy_only=False)
        todo = rows.filter(pa.array(lacking))
        late = [n for n in INPUT_NAMES if n in LATE_INPUTS]
        keep: list[bool] = []
        unfilled: Counter[str] = Counter()
        fills: dict[str, list[float]] = {n: [] for n in late}
        for row in todo.select(["player_id", *_FROM_PREVIOUS_V1]).to_pylist():
            prev = self.previous.get(row["player_id"])
            if prev is None:
                unfilled[UNFILLED_NO_PREVIOUS] += 1
                keep.append(False)
                continue
            values = as_of_inputs(prev, RunningTotals(), self.season_games)
            if any(row[n] != values[n] for n in _FROM_PREVIOUS_V1):
                unfilled[UNFILLED_PREVIOUS_REVISED] += 1
                keep.append(False)
                continue
            keep.append(True)
            for n in late:
                fills[n].append(values[n])
        todo = todo.filter(pa.array(keep, pa.bool_()))
        for n in late:
            todo = todo.set_column(
                todo.schema.get_field_index(n), FEATURES_SCHEMA.field(n), pa.array(fills[n], pa.float32())
            )
        hashes = pa.array(feature_hashes(todo), pa.string())
        todo = todo.set_column(
            todo.schema.get_field_index("feature_hash"), FEATURES_SCHEMA.field("feature_hash"), hashes
        )
        return todo, unfilled

    def _advance(self, game: GameInfo, box: BoxScore) -> dt.datetime:
        """Count ``game`` for its teams and its players' lines; return its as-of time."""
        for team in (game.home, game.away):
            self.team_games[team] = self.team_games.get(team, 0) + 1
        for line in box.players:
            pid = line.player_id
            if pid not in self.previous:
                self.no_previous.add(pid)
                continue
            current = self.players.get(pid)
            team = line.team or (current.team if current else "")
            base = current.totals if current else RunningTotals()
            totals = RunningTotals(
                ftm=base.ftm + line.ftm,
                fta=base.fta + line.fta,
                games_with_fta=base.games_with_fta + (1 if line.fta > 0 else 0),
                team_games=base.team_games,
            )
            self.players[pid] = PlayerState(
                player=line.player, team=team, totals=totals, last_game_teams=(game.home, game.away)
            )
        final_at = game.final_at or game.updated_at
        if self.last_final_at is not None:
            # A game whose result came late still yields rows that include every earlier
            # processed game: its knowledge time is the latest of them, never earlier.
            final_at = max(final_at, dt.datetime.fromisoformat(self.last_final_at))
        return final_at

    def _affected(self, game: GameInfo, box: BoxScore) -> set[int]:
        """Players with a new row as of ``game``: its lines', and every known player of its teams."""
        affected = {line.player_id for line in box.players if line.player_id in self.previous}
        teams = {game.home, game.away}
        affected.update(pid for pid, ps in self.players.items() if ps.plays_for_one_of(teams))
        return affected

    def forget(self) -> None:
        """Drop what is reloaded from storage (after a failed run)."""
        self.loaded = False
        self.players.clear()
        self.last_game_teams.clear()
        self.processed.clear()
        self.quarantined.clear()
        self.failures.clear()
        self.team_games.clear()
        self.updated_since = self.last_final_at = None
