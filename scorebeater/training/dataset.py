"""The point-in-time training set: one row per player after each game day of a season.

For season S (a season with regular-season games whose players have S-1 season totals), after
each game day d there is one row per player who has S-1 totals and has a regular-season
player-game row on or before d. The row holds :data:`~scorebeater.inputs.INPUT_NAMES` exactly as
:func:`scorebeater.inputs.as_of_inputs` builds them from what was final after day d:

- ``ftm``, ``fta``: his regular-season sums through d; ``games_with_fta``: his games through d
  with ``fta > 0``;
- ``team_games``: regular-season games his team played through d (counted from the games
  file, so games where he did not shoot count too). His team is that of his most recent
  player-game with a known team; if none is known, the larger count of the two teams of his
  most recent game;
- ``season_games``: the most regular-season games of any team in S;
- previous-season inputs from the S-1, S-2 and S-3 totals, and S-1's schedule
  (:func:`season_schedule`).

:func:`build_long_history` adds one season-start row per player-season from the season totals
alone (every season from ``first``, including those that also have per-game rows: the
season-start state is a different moment from any per-game row).

The label is ``season_totals(S).ft > season_totals(S-1).ft`` (official totals; a tie does not
beat). Player-games without a ``player_id`` are skipped (no previous season can be matched),
and so are player-seasons without S totals (no label); both are counted and logged.

Everything is vectorised with numpy (a day x player grid per season), so building every season
of the bundled history takes a second or two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import structlog

from scorebeater.config import TrainingConfig
from scorebeater.data import History, SeasonTotal
from scorebeater.errors import DataError
from scorebeater.inputs import INPUT_NAMES, games_missed, progress_buckets
from scorebeater.schedule import scheduled_games_from_totals

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Feature rows with labels, as parallel numpy arrays (one entry per row).

    ``inputs`` maps every name of ``INPUT_NAMES`` to a float32 array; ``label`` is bool;
    ``season`` int32, ``player_id`` int64, ``as_of_seq`` int32 (the last regular-season
    ``game_seq`` final at the as-of moment).
    """

    inputs: Mapping[str, np.ndarray]
    label: np.ndarray
    season: np.ndarray
    player_id: np.ndarray
    as_of_seq: np.ndarray
    skipped: Mapping[str, int] = field(default_factory=dict)
    """Why source rows did not become training rows, with counts."""
    long_history: np.ndarray | None = None
    """Per row, True for a season-start row built from season totals alone (see
    :func:`build_long_history`); ``None`` means no such row."""

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def seasons(self) -> list[int]:
        """The seasons present, ascending."""
        return sorted({int(s) for s in np.unique(self.season)})

    def take(self, rows: np.ndarray) -> TrainingSet:
        """The subset at a boolean mask or integer index array (a new object)."""
        return TrainingSet(
            inputs={k: v[rows] for k, v in self.inputs.items()},
            label=self.label[rows],
            season=self.season[rows],
            player_id=self.player_id[rows],
            as_of_seq=self.as_of_seq[rows],
            skipped=self.skipped,
            long_history=None if self.long_history is None else self.long_history[rows],
        )

    def is_long_history(self) -> np.ndarray:
        """Per row, True for a season-start row from season totals alone."""
        if self.long_history is None:
            return np.zeros(len(self), np.bool_)
        return self.long_history

    def for_seasons(self, seasons: Iterable[int]) -> TrainingSet:
        """Only the rows of ``seasons``."""
        return self.take(np.isin(self.season, np.asarray(list(seasons), dtype=np.int32)))

    def subsample(self, fraction: float, seed: int) -> TrainingSet:
        """A random share of the rows (``fraction`` in (0, 1]), reproducible by ``seed``."""
        if fraction >= 1.0:
            return self
        rng = np.random.default_rng(seed)
        return self.take(rng.random(len(self)) < fraction)

    def progress_bucket(self) -> np.ndarray:
        """Each row's season-progress bucket (``0-25`` ... ``75-100``)."""
        return progress_buckets(
            self.inputs["team_games"].astype(np.float64), self.inputs["season_games"].astype(np.float64)
        )

    def matrix(self) -> np.ndarray:
        """The inputs as a float32 ``[rows, len(INPUT_NAMES)]`` matrix in ``INPUT_NAMES`` order."""
        return np.column_stack([self.inputs[n] for n in INPUT_NAMES]).astype(np.float32)


def concat(parts: Sequence[TrainingSet]) -> TrainingSet:
    """Rows of several sets, in order (skip counts are summed)."""
    if not parts:
        return empty()
    skipped: dict[str, int] = {}
    for p in parts:
        for k, v in p.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    flags = [p.long_history for p in parts]
    return TrainingSet(
        inputs={n: np.concatenate([p.inputs[n] for p in parts]) for n in INPUT_NAMES},
        label=np.concatenate([p.label for p in parts]),
        season=np.concatenate([p.season for p in parts]),
        player_id=np.concatenate([p.player_id for p in parts]),
        as_of_seq=np.concatenate([p.as_of_seq for p in parts]),
        skipped=skipped,
        long_history=None
        if all(f is None for f in flags)
        else np.concatenate([p.is_long_history() for p in parts]),
    )


def empty(*, long_history: bool = False) -> TrainingSet:
    """A set with no rows (of long-history rows: ``long_history``)."""
    return TrainingSet(
        inputs={n: np.zeros(0, np.float32) for n in INPUT_NAMES},
        label=np.zeros(0, np.bool_),
        season=np.zeros(0, np.int32),
        player_id=np.zeros(0, np.int64),
        as_of_seq=np.zeros(0, np.int32),
        long_history=np.zeros(0, np.bool_) if long_history else None,
    )


def label_seasons(history: History) -> list[int]:
    """Seasons that can yield rows: regular-season games in the data and totals for S-1."""
    with_totals = {t.season for t in history.season_totals}
    return [s for s in history.game_seasons() if s - 1 in with_totals]


def build_training_set(history: History, seasons: Iterable[int] | None = None) -> TrainingSet:
    """The point-in-time rows of ``seasons`` (default: every season that can yield rows).

    Raises:
        DataError: a requested season has no regular-season games or no S-1 totals.
    """
    available = label_seasons(history)
    wanted = available if seasons is None else sorted(set(seasons))
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(
            f"{history.source}: season(s) {missing} have no regular-season games with previous-season "
            f"totals (seasons with rows: {available})"
        )
    totals = history.totals_by_season()
    parts = [_season_rows(history, s, totals) for s in wanted]
    out = concat(parts)
    log.info(
        "training.dataset_built",
        source=history.source,
        seasons=wanted,
        rows=len(out),
        positive_share=round(float(out.label.mean()), 4) if len(out) else None,
        skipped=dict(out.skipped),
    )
    return out


def _season_rows(  # noqa: PLR0915 - one linear pass, easier to read unsplit
    history: History, season: int, totals: Mapping[int, Mapping[int, SeasonTotal]]
) -> TrainingSet:
    prev_totals = totals.get(season - 1, {})
    prev2_totals = totals.get(season - 2, {})
    prev3_totals = totals.get(season - 3, {})
    prev_schedule = season_schedule(history, totals, season - 1)
    cur_totals = totals.get(season, {})
    games = [g for g in history.games if g.season == season and g.season_type == "regular"]
    games.sort(key=lambda g: (g.date, g.game_seq))
    days = sorted({g.date for g in games})
    day_index = {d: i for i, d in enumerate(days)}
    n_days = len(days)

    teams = sorted({g.away for g in games} | {g.home for g in games})
    team_index = {t: i for i, t in enumerate(teams)}
    # team_games[d, t]: regular-season games team t has played through day d
    team_inc = np.zeros((n_days, len(teams)), np.int64)
    as_of_seq = np.zeros(n_days, np.int64)
    for g in games:
        d = day_index[g.date]
        team_inc[d, team_index[g.away]] += 1
        team_inc[d, team_index[g.home]] += 1
        as_of_seq[d] = max(as_of_seq[d], g.game_seq)
    team_games = np.cumsum(team_inc, axis=0)
    season_games = int(team_games[-1].max()) if n_days else 0
    game_teams = {g.game_id: (team_index[g.away], team_index[g.home]) for g in games}

    skipped = {"no_player_id": 0, "no_previous_season": 0, "no_season_total": 0}
    rows = []
    for pg in history.player_games:
        if pg.season != season or pg.season_type != "regular":
            continue
        if pg.player_id is None:
            skipped["no_player_id"] += 1
        elif pg.player_id not in prev_totals:
            skipped["no_previous_season"] += 1
        elif pg.player_id not in cur_totals:
            skipped["no_season_total"] += 1
        else:
            rows.append(pg)
    players = sorted({pg.player_id for pg in rows if pg.player_id is not None})
    player_index = {p: i for i, p in enumerate(players)}
    n_players = len(players)
    if n_days == 0 or n_players == 0:
        return _with_skipped(empty(), skipped)

    shape = (n_days, n_players)
    ftm_inc = np.zeros(shape, np.int64)
    fta_inc = np.zeros(shape, np.int64)
    gwf_inc = np.zeros(shape, np.int64)
    seen_inc = np.zeros(shape, np.int64)
    # latest row per (day, player): its game_seq decides which team/game is "most recent"
    last_seq = np.full(shape, -1, np.int64)
    last_team = np.full(shape, -1, np.int64)
    last_known_seq = np.full(shape, -1, np.int64)
    last_away = np.zeros(shape, np.int64)
    last_home = np.zeros(shape, np.int64)
    for pg in rows:
        d, p = day_index[pg.date], player_index[pg.player_id]  # type: ignore[index]
        ftm_inc[d, p] += pg.ftm
        fta_inc[d, p] += pg.fta
        gwf_inc[d, p] += pg.fta > 0
        seen_inc[d, p] += 1
        if pg.game_seq > last_seq[d, p]:
            last_seq[d, p] = pg.game_seq
            last_away[d, p], last_home[d, p] = game_teams[pg.game_id]
        if pg.team in team_index and pg.game_seq > last_known_seq[d, p]:
            last_known_seq[d, p] = pg.game_seq
            last_team[d, p] = team_index[pg.team]

    ftm = np.cumsum(ftm_inc, axis=0)
    fta = np.cumsum(fta_inc, axis=0)
    gwf = np.cumsum(gwf_inc, axis=0)
    appeared = np.cumsum(seen_inc, axis=0) > 0

    day_grid = np.broadcast_to(np.arange(n_days)[:, None], shape)
    # forward-fill "the latest day with a known team" and "the latest day with any row"
    known_day = np.maximum.accumulate(np.where(last_team >= 0, day_grid, -1), axis=0)
    any_day = np.maximum.accumulate(np.where(last_seq >= 0, day_grid, -1), axis=0)
    cols = np.broadcast_to(np.arange(n_players)[None, :], shape)
    team = np.where(known_day >= 0, last_team[np.maximum(known_day, 0), cols], -1)
    away = last_away[np.maximum(any_day, 0), cols]
    home = last_home[np.maximum(any_day, 0), cols]
    tg_team = team_games[day_grid, np.maximum(team, 0)]
    tg_fallback = np.maximum(team_games[day_grid, away], team_games[day_grid, home])
    tg = np.minimum(np.where(team >= 0, tg_team, tg_fallback), season_games)

    d_idx, p_idx = np.nonzero(appeared)
    pids = np.asarray(players, np.int64)[p_idx]
    per_player = _previous_inputs(players, prev_totals, prev2_totals, prev3_totals, prev_schedule)
    inputs: dict[str, np.ndarray] = {k: v[p_idx] for k, v in per_player.items()}
    inputs["ftm"] = ftm[d_idx, p_idx].astype(np.float32)
    inputs["fta"] = fta[d_idx, p_idx].astype(np.float32)
    inputs["games_with_fta"] = gwf[d_idx, p_idx].astype(np.float32)
    inputs["team_games"] = tg[d_idx, p_idx].astype(np.float32)
    inputs["season_games"] = np.full(d_idx.shape, season_games, np.float32)
    beat = np.asarray([cur_totals[int(p)].ftm > prev_totals[int(p)].ftm for p in players], np.bool_)
    return _with_skipped(
        TrainingSet(
            inputs={n: inputs[n] for n in INPUT_NAMES},
            label=beat[p_idx],
            season=np.full(d_idx.shape, season, np.int32),
            player_id=pids,
            as_of_seq=as_of_seq[d_idx].astype(np.int32),
        ),
        skipped,
    )


def _with_skipped(ts: TrainingSet, skipped: Mapping[str, int]) -> TrainingSet:
    return TrainingSet(
        inputs=ts.inputs,
        label=ts.label,
        season=ts.season,
        player_id=ts.player_id,
        as_of_seq=ts.as_of_seq,
        skipped=dict(skipped),
        long_history=ts.long_history,
    )


def season_schedule(history: History, totals: Mapping[int, Mapping[int, SeasonTotal]], season: int) -> int:
    """Regular-season games scheduled per team in ``season``: the most games of any team in
    the games file (what the Score API reports), else read from the season totals (what the
    feature stage falls back to for a season known only from totals); 0 if unknown."""
    per_team: dict[str, int] = {}
    for g in history.games:
        if g.season == season and g.season_type == "regular":
            per_team[g.away] = per_team.get(g.away, 0) + 1
            per_team[g.home] = per_team.get(g.home, 0) + 1
    if per_team:
        return max(per_team.values())
    return scheduled_games_from_totals(t.games for t in totals.get(season, {}).values()) or 0


def _previous_inputs(
    players: Sequence[int],
    prev_totals: Mapping[int, SeasonTotal],
    prev2_totals: Mapping[int, SeasonTotal],
    prev3_totals: Mapping[int, SeasonTotal],
    prev_schedule: int,
) -> dict[str, np.ndarray]:
    """The previous-season inputs of each player (float32 arrays in ``players`` order), exactly
    as :func:`scorebeater.inputs.as_of_inputs` derives them from ``PreviousSeasons``."""
    prev = [prev_totals[int(p)] for p in players]
    prev2 = [prev2_totals.get(int(p)) for p in players]
    prev3 = [prev3_totals.get(int(p)) for p in players]
    per_player = {
        "prev_ftm": [t.ftm for t in prev],
        "prev_fta": [t.fta for t in prev],
        "prev_games": [t.games for t in prev],
        "prev_season_games": [prev_schedule for _ in prev],
        "prev_games_missed": [games_missed(prev_schedule, t.games) for t in prev],
        "prev_minutes": [t.minutes or 0 for t in prev],
        "prev2_ftm": [t.ftm if t is not None else 0 for t in prev2],
        "prev2_games": [t.games if t is not None else 0 for t in prev2],
        "prev3_ftm": [t.ftm if t is not None else 0 for t in prev3],
        "prev3_games": [t.games if t is not None else 0 for t in prev3],
        "experience": [t.experience + 1 for t in prev],
        "age": [(t.age + 1) if t.age is not None else 0 for t in prev],
    }
    return {k: np.asarray(v, np.float32) for k, v in per_player.items()}


LONG_HISTORY_FROM = TrainingConfig().long_history_from
"""Default first season of the season-start rows: ``training.long_history_from``'s default."""


def build_long_history(
    history: History, seasons: Iterable[int] | None = None, *, first: int = LONG_HISTORY_FROM
) -> TrainingSet:
    """One row per player-season *as of the season's start*, from season totals alone.

    For each season S from ``first`` (default: every season from ``first`` with totals for S
    and S-1), one row per player with S-1 and S totals: previous-season inputs as in the
    per-game rows, current-season counts and team games zero, ``season_games`` S's schedule
    (:func:`season_schedule`), ``as_of_seq`` 0 and the same label. Nothing about season S
    but its schedule is in the inputs, which is known before its first game.

    Raises:
        DataError: a requested season lacks totals for S or S-1.
    """
    totals = history.totals_by_season()
    available = [s for s in sorted(totals) if s >= first and s - 1 in totals]
    wanted = available if seasons is None else sorted(set(seasons))
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(
            f"{history.source}: season(s) {missing} have no season totals for S and S-1 from {first} "
            f"(seasons with totals: {available[:1]}..{available[-1:]})"
        )
    parts = []
    for season in wanted:
        prev_totals, cur_totals = totals[season - 1], totals[season]
        players = sorted(p for p in prev_totals if p in cur_totals)
        if not players:
            continue
        inputs = _previous_inputs(
            players,
            prev_totals,
            totals.get(season - 2, {}),
            totals.get(season - 3, {}),
            season_schedule(history, totals, season - 1),
        )
        n = len(players)
        for name in ("ftm", "fta", "games_with_fta", "team_games"):
            inputs[name] = np.zeros(n, np.float32)
        inputs["season_games"] = np.full(n, season_schedule(history, totals, season), np.float32)
        parts.append(
            TrainingSet(
                inputs={k: inputs[k] for k in INPUT_NAMES},
                label=np.asarray([cur_totals[p].ftm > prev_totals[p].ftm for p in players], np.bool_),
                season=np.full(n, season, np.int32),
                player_id=np.asarray(players, np.int64),
                as_of_seq=np.zeros(n, np.int32),
                long_history=np.ones(n, np.bool_),
            )
        )
    out = concat(parts) if parts else empty(long_history=True)
    log.info("training.long_history_built", source=history.source, seasons=len(wanted), rows=len(out))
    return out


def from_arrow(tables: Iterable[pa.Table]) -> TrainingSet:
    """A training set from storage export batches (``TRAINING_SCHEMA``).

    Only rows whose outcome resolution is ``final`` are used: an ``early`` outcome is known
    only to be positive so far and would bias the labels (``skipped["not_final"]``). Rows
    stored before an input existed (null there: a season not followed since the upgrade
    that added it) cannot be fitted on and are dropped (``skipped["missing_inputs"]``).

    Raises:
        DataError: a batch lacks a required column.
    """
    parts = []
    not_final = 0
    missing_inputs = 0
    required = ("player_id", "season", "as_of_seq", "beat", "resolution", *INPUT_NAMES)
    for table in tables:
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise DataError(f"training export batch lacks column(s) {missing}")
        final = np.asarray(table.column("resolution").to_numpy(zero_copy_only=False)) == "final"
        not_final += int((~final).sum())
        complete = np.ones(table.num_rows, np.bool_)
        for name in INPUT_NAMES:
            column = table.column(name)
            if column.null_count:
                complete &= ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), np.bool_)
        missing_inputs += int((final & ~complete).sum())
        keep = final & complete

        def col(name: str, keep: np.ndarray = keep, table: pa.Table = table) -> np.ndarray:
            values: np.ndarray = np.asarray(table.column(name).to_numpy(zero_copy_only=False))[keep]
            return values

        parts.append(
            TrainingSet(
                inputs={n: col(n).astype(np.float32) for n in INPUT_NAMES},
                label=col("beat").astype(np.bool_),
                season=col("season").astype(np.int32),
                player_id=col("player_id").astype(np.int64),
                as_of_seq=col("as_of_seq").astype(np.int32),
            )
        )
    out = concat(parts)
    if missing_inputs:
        log.warning("training.stored_rows_missing_inputs", rows=missing_inputs)
    return _with_skipped(out, {"not_final": not_final, "missing_inputs": missing_inputs})
