"""A season's scheduled games per team, when only player season totals are known.

The Score API gives ``scheduled_games_per_team`` for seasons with games; for a season known
only from official totals (every season before 2007 in the bundled data) the schedule is read
from the totals themselves. Training rows and the feature stage both use this function, so a
previous season's schedule is the same number in both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

MIN_PLAYERS = 5
"""Players who must share a games count for it to be a team's full schedule."""


def scheduled_games_from_totals(games: Iterable[int]) -> int | None:
    """The largest games count that at least ``MIN_PLAYERS`` players reached, or ``None``.

    Many players of every season play every game of their team's schedule; the few who were
    traded to a team with games in hand play up to a handful more (the 1996-97 season has
    three 83-game players against dozens at 82). With fewer than ``MIN_PLAYERS`` players in
    all (a tiny test league), the largest count. Returns ``None`` for no positive count.
    """
    counts = Counter(g for g in games if g > 0)
    if not counts:
        return None
    common = [g for g, n in counts.items() if n >= MIN_PLAYERS]
    return max(common) if common else max(counts)
