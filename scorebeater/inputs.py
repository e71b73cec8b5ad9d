"""The model's raw inputs, defined once.

The served model takes these raw counting stats as named float32 inputs, each of shape
``[batch]``; every derived feature (rates, pace projections, remaining games, scaling) is
computed inside the Keras graph, so training and serving cannot disagree. The training code,
the feature stage, the storage schemas and the exported signature all read this tuple.

Everything here is known at the as-of moment: previous seasons are final, and the in-season
counts include only games that are final at that moment. ``as_of_inputs`` is the single
function that turns running totals into an input vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One named model input; ``unit`` says what one unit of the value means."""

    name: str
    unit: str
    description: str


MODEL_INPUTS: tuple[InputSpec, ...] = (
    InputSpec("prev_ftm", "free throws", "free throws made in the previous regular season (official)"),
    InputSpec("prev_fta", "free throws", "free throws attempted in the previous regular season"),
    InputSpec("prev_games", "games", "games played in the previous regular season"),
    InputSpec("prev_season_games", "games", "regular-season games scheduled per team in the previous season"),
    InputSpec(
        "prev_games_missed",
        "games",
        "games he missed last season: the previous season's scheduled games minus his games, at least 0",
    ),
    InputSpec("prev_minutes", "minutes", "minutes played in the previous regular season (0 if unrecorded)"),
    InputSpec("prev2_ftm", "free throws", "free throws made two seasons back (0 if he did not play)"),
    InputSpec("prev2_games", "games", "games played two seasons back (0 if he did not play)"),
    InputSpec("prev3_ftm", "free throws", "free throws made three seasons back (0 if he did not play)"),
    InputSpec("prev3_games", "games", "games played three seasons back (0 if he did not play)"),
    InputSpec("experience", "seasons", "season number in his career this season (1 = rookie)"),
    InputSpec("age", "years", "age this season (previous season's age + 1)"),
    InputSpec("ftm", "free throws", "free throws made so far this regular season"),
    InputSpec("fta", "free throws", "free throws attempted so far this regular season"),
    InputSpec("games_with_fta", "games", "games so far this season in which he attempted a free throw"),
    InputSpec("team_games", "games", "regular-season games his team has played so far"),
    InputSpec("season_games", "games", "regular-season games scheduled per team this season"),
)

INPUT_NAMES: tuple[str, ...] = tuple(spec.name for spec in MODEL_INPUTS)
OUTPUT_NAME = "probability"
"""The served model's single output alias: P(beat), shape ``[batch, 1]``."""


@dataclass(frozen=True, slots=True)
class PreviousSeasons:
    """What a player's earlier seasons say, known before season S starts."""

    ftm: int
    fta: int
    games: int
    minutes: int | None
    age: int | None
    experience: int
    season_games: int
    """Regular-season games scheduled per team in the previous season."""
    prev2_ftm: int = 0
    prev2_games: int = 0
    prev3_ftm: int = 0
    prev3_games: int = 0


@dataclass(frozen=True, slots=True)
class RunningTotals:
    """A player's season-so-far counts after the games final at the as-of moment."""

    ftm: int = 0
    fta: int = 0
    games_with_fta: int = 0
    team_games: int = 0


def games_missed(scheduled: int, played: int) -> int:
    """Games of a season's schedule he did not play (0 for a player traded into more games)."""
    return max(scheduled - played, 0)


def as_of_inputs(prev: PreviousSeasons, now: RunningTotals, season_games: int) -> dict[str, float]:
    """The raw input vector for one player as of one moment, keyed by input name.

    Raises:
        ValueError: ``season_games`` or the previous season's is not positive, or a count is negative.
    """
    if season_games <= 0:
        raise ValueError(f"season_games must be positive, got {season_games}")
    if prev.season_games <= 0:
        raise ValueError(f"the previous season's scheduled games must be positive, got {prev.season_games}")
    values = {
        "prev_ftm": prev.ftm,
        "prev_fta": prev.fta,
        "prev_games": prev.games,
        "prev_season_games": prev.season_games,
        "prev_games_missed": games_missed(prev.season_games, prev.games),
        "prev_minutes": prev.minutes or 0,
        "prev2_ftm": prev.prev2_ftm,
        "prev2_games": prev.prev2_games,
        "prev3_ftm": prev.prev3_ftm,
        "prev3_games": prev.prev3_games,
        "experience": prev.experience + 1,
        "age": (prev.age + 1) if prev.age is not None else 0,
        "ftm": now.ftm,
        "fta": now.fta,
        "games_with_fta": now.games_with_fta,
        "team_games": min(now.team_games, season_games),
        "season_games": season_games,
    }
    negative = [k for k, v in values.items() if v < 0]
    if negative:
        raise ValueError(f"negative input(s): {', '.join(negative)}")
    return {k: float(v) for k, v in values.items()}


PROGRESS_BUCKETS: tuple[str, ...] = ("0-25", "25-50", "50-75", "75-100")
"""Season-progress buckets: progress is the share of his team's scheduled games played; a
boundary belongs to the upper bucket except 100%, which is in ``75-100``."""


def progress_bucket_index(share: np.ndarray) -> np.ndarray:
    """The index into :data:`PROGRESS_BUCKETS` of each progress share (0..1; clipped)."""
    n = len(PROGRESS_BUCKETS)
    index: np.ndarray = np.clip(np.floor(np.asarray(share, dtype=np.float64) * n).astype(int), 0, n - 1)
    return index


def progress_buckets(team_games: np.ndarray, season_games: np.ndarray) -> np.ndarray:
    """The bucket name of each row (team games played, scheduled games per team)."""
    share = np.divide(
        team_games, season_games, out=np.zeros_like(team_games, dtype=float), where=season_games > 0
    )
    buckets: np.ndarray = np.asarray(PROGRESS_BUCKETS, dtype=object)[progress_bucket_index(share)]
    return buckets
