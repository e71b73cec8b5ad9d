"""Fetching a run's box scores in processing order, keeping the longest prefix that completed.

The feature stage must apply games in order (each game's rows include every earlier game), so
what it can commit after a failure is the games before the first failed one. A
:class:`BoxScoreFetch` fetches up to ``concurrency`` box scores at a time and sorts what
happens to each game into three kinds:

- an **outcome**: the box score, or :class:`Rejected` (the API served a record that fails
  validation: the stage quarantines it and moves on);
- a **game failure** (:class:`GameFailure`): any other Score API error for that game (5xx or
  timeouts after the client's retries, 404, 409, ...). The earliest failed game is the one
  reported. Later games are still fetched while the API answers (the stage keeps their box
  scores for its next run, so a run after a failure re-fetches only the games that failed);
  once ``concurrency`` games have failed no new fetch starts (an outage costs a few requests,
  not one per game);
- an **abort**: a refused token, a bug, or a cancellation of the caller. Every fetch is
  cancelled at once and the error raised (the first one, not a group).

Whatever happened, :meth:`BoxScoreFetch.prefix` is the games up to the first one without an
outcome, which the stage can commit (also while a cancellation propagates), and
:meth:`BoxScoreFetch.fetched_later` the box scores fetched after it. Box scores passed in as
``known`` (fetched by an earlier run) are not asked for again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scorebeater.clients.score_api import RecordRejected
from scorebeater.errors import ScoreApiAuthError, UpstreamError
from scorebeater.scoreapi.records import BoxScore, GameInfo

if TYPE_CHECKING:
    from scorebeater.clients.score_api import ScoreApiClient


@dataclass(frozen=True, slots=True)
class Rejected:
    """A box score that fails validation: why, and what the API served."""

    reason: str
    detail: str
    payload: bytes


Outcome = BoxScore | Rejected


@dataclass(frozen=True, slots=True)
class GameFailure:
    """The earliest game whose fetch failed (``index`` into the fetched games)."""

    index: int
    error: UpstreamError


class BoxScoreFetch:
    """The box scores of ``games`` (in processing order), fetched ``concurrency`` at a time.

    Call :meth:`run` once; it returns normally unless the fetch is aborted. ``results`` holds
    each game's outcome (``None``: none yet); ``failure`` the earliest game failure.
    """

    def __init__(
        self,
        scores: ScoreApiClient,
        games: list[GameInfo],
        *,
        concurrency: int,
        known: Mapping[str, BoxScore] | None = None,
    ) -> None:
        self.games = games
        self.results: list[Outcome | None] = [(known or {}).get(g.game_id) for g in games]
        self.failure: GameFailure | None = None
        self._failures = 0
        self._scores = scores
        self._concurrency = concurrency

    def prefix(self) -> list[tuple[GameInfo, Outcome]]:
        """The games up to the first one without an outcome, with their outcomes."""
        done: list[tuple[GameInfo, Outcome]] = []
        for game, result in zip(self.games, self.results, strict=True):
            if result is None:
                break
            done.append((game, result))
        return done

    def held(self) -> list[GameInfo]:
        """The games after the prefix: the failed (or unfinished) game and every later one."""
        return self.games[len(self.prefix()) :]

    def fetched_later(self) -> list[tuple[GameInfo, BoxScore]]:
        """The box scores of held games that were fetched (worth keeping for the next run)."""
        start = len(self.prefix())
        return [
            (game, result)
            for game, result in zip(self.games[start:], self.results[start:], strict=True)
            if isinstance(result, BoxScore)
        ]

    async def run(self) -> None:
        """Fetch every game, stopping early at a game failure; raise an abort's error."""
        semaphore = asyncio.Semaphore(self._concurrency)

        async def fetch(index: int, game: GameInfo) -> None:
            if self.results[index] is not None:
                return  # known from an earlier run
            async with semaphore:
                if self._failures >= self._concurrency:
                    return  # the API is failing: spare it the rest of the requests
                try:
                    box = await self._scores.box_score(game.game_id, season=game.season, strict=True)
                except RecordRejected as exc:
                    self.results[index] = Rejected(exc.reason, exc.detail, exc.payload)
                except ScoreApiAuthError:
                    raise
                except UpstreamError as exc:
                    self._failures += 1
                    if self.failure is None or index < self.failure.index:
                        self.failure = GameFailure(index, exc)
                else:
                    if box is None:  # pragma: no cover - a strict call raises instead
                        raise AssertionError("a strict box_score call returned None")
                    self.results[index] = box

        try:
            async with asyncio.TaskGroup() as group:
                for index, game in enumerate(self.games):
                    group.create_task(fetch(index, game))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
