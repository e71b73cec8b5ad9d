"""The feature stage's quarantine rules and ordered fetching, without servers.

The Score API is faked at its client's boundary (``box_score``); everything else is the real
code: the retry budget, the season's checkpoint, the quarantine view, the ordered fetch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any, cast

import orjson
import pytest

from scorebeater import metrics
from scorebeater.clients.score_api import RecordRejected
from scorebeater.errors import ScoreApiAuthError, ScoreApiError
from scorebeater.scoreapi.records import BoxScore, GameInfo
from scorebeater.stages.box_scores import BoxScoreFetch, Rejected
from scorebeater.stages.quarantine import BUDGET_SPENT, SeasonQuarantine
from scorebeater.stages.season_state import RETRY_BUDGET_RUNS, RETRY_BUDGET_S, GameFailures, SeasonState
from scorebeater.storage import quarantine as table
from scorebeater.storage.quarantine import QuarantineEntry

T0 = dt.datetime(2014, 11, 2, 2, 30, tzinfo=dt.UTC)


def _game(n: int) -> GameInfo:
    day = dt.date(2013, 11, 1)
    return GameInfo(
        game_id=f"2014{n:05d}",
        season=2014,
        season_type="regular",
        game_seq=n,
        date=day,
        date_estimated=False,
        scheduled_at=T0,
        status="final",
        final_at=T0 + dt.timedelta(minutes=n),
        home="AAA",
        away="BBB",
        home_pts=100,
        away_pts=90,
        updated_at=T0 + dt.timedelta(minutes=n),
    )


def _box(game: GameInfo) -> BoxScore:
    return BoxScore(
        game_id=game.game_id,
        season=game.season,
        season_type="regular",
        game_seq=game.game_seq,
        date=game.date,
        final_at=T0,
        home=game.home,
        away=game.away,
        home_pts=100,
        away_pts=90,
        players=(),
    )


def test_the_metric_labels_are_the_tables_kinds_and_states() -> None:
    assert metrics.QUARANTINE_KINDS == table.KINDS
    assert metrics.QUARANTINE_STATES == table.STATES


def test_ids_are_stable_distinct_and_exact_in_json() -> None:
    a, b = table.quarantine_id("box_score", "201400001"), table.quarantine_id("box_score", "201400002")
    assert a == table.quarantine_id("box_score", "201400001")
    assert a != b
    assert 0 <= a < 2**53
    assert table.quarantine_id("other", "201400001") != a


# --- the retry budget and the checkpoint --------------------------------------------------------


@pytest.mark.parametrize(
    ("runs", "span_s", "spent"),
    [
        (RETRY_BUDGET_RUNS, RETRY_BUDGET_S, True),
        (RETRY_BUDGET_RUNS - 1, 10 * RETRY_BUDGET_S, False),  # not enough runs
        (10 * RETRY_BUDGET_RUNS, RETRY_BUDGET_S - 1, False),  # not for long enough
    ],
)
def test_a_game_is_quarantined_only_after_enough_failed_runs_over_enough_time(
    runs: int, span_s: float, spent: bool
) -> None:
    failures = GameFailures(1, T0, T0, "first")
    for i in range(1, runs):
        failures = failures.charged(T0 + dt.timedelta(seconds=span_s * i / (runs - 1)), f"run {i + 1}")
    assert failures.runs == runs
    assert failures.budget_spent is spent


def test_the_checkpoint_keeps_set_aside_and_failing_games_and_reads_older_checkpoints() -> None:
    state = SeasonState(2014, season_games=82)
    state.processed = {"201400001"}
    state.quarantined = {"201400002"}
    state.failures = {"201400003": GameFailures(2, T0, T0 + dt.timedelta(minutes=5), "HTTP 503")}
    again = SeasonState(2014)
    again.restore(state.checkpoint())
    assert (again.processed, again.quarantined, again.failures) == (
        state.processed,
        state.quarantined,
        state.failures,
    )
    older = orjson.loads(state.checkpoint())
    del older["quarantined"], older["failures"]
    before = SeasonState(2014)
    before.restore(orjson.dumps(older))
    assert (before.processed, before.quarantined, before.failures) == ({"201400001"}, set(), {})


def test_a_set_aside_game_passes_the_watermark_and_counts_for_nothing() -> None:
    state = SeasonState(2014, season_games=82)
    games = [_game(1), _game(2), _game(3)]
    state.failures[games[1].game_id] = GameFailures(3, T0, T0, "HTTP 503")
    rows = state.apply([(games[0], _box(games[0])), (games[1], None)], hold=[games[2]])
    assert rows.num_rows == 0  # no player has a previous season here
    assert state.processed == {games[0].game_id}
    assert state.quarantined == {games[1].game_id}
    assert state.failures == {}
    assert state.team_games == {"AAA": 1, "BBB": 1}
    # The watermark passed the set-aside game; the held one, later, is read again next time.
    assert state.updated_since == games[1].updated_at.isoformat()
    # A retried game that succeeds is processed, no longer set aside, with the next as-of number.
    state.apply([(games[1], _box(games[1]))], hold=[])
    assert (state.processed, state.quarantined) == ({games[0].game_id, games[1].game_id}, set())


# --- the season's quarantine view ---------------------------------------------------------------


class Store:
    """An in-memory quarantine table (the protocol's boundary)."""

    def __init__(self) -> None:
        self.puts: list[list[QuarantineEntry]] = []

    async def put(self, entries: list[QuarantineEntry]) -> None:
        self.puts.append(list(entries))


def _view(*entries: QuarantineEntry) -> tuple[SeasonQuarantine, Store]:
    store = Store()
    return SeasonQuarantine(cast("Any", store), 2014, entries), store


def test_a_rejected_box_score_is_new_once_then_counts_attempts() -> None:
    view, store = _view()
    rejected = Rejected("unknown_game", "asked for one game, got another", b"{}")
    entry, new = view.rejected(_game(1), rejected, T0)
    assert new
    assert (entry.state, entry.attempts, entry.first_seen) == ("open", 1, T0)
    asyncio.run(view.put([entry]))
    assert store.puts == [[entry]]
    later = T0 + dt.timedelta(hours=1)
    again, new = view.rejected(_game(1), rejected, later)
    assert not new
    assert (again.attempts, again.first_seen, again.last_seen) == (2, T0, later)


@pytest.mark.parametrize(("before", "after"), [("retry", "open"), ("open", "open"), ("skipped", "skipped")])
def test_a_failed_retry_reopens_the_entry_but_an_operators_skip_stands(before: Any, after: str) -> None:
    known = QuarantineEntry(
        kind="box_score", key=_game(1).game_id, season=2014, reason="bad_type", first_seen=T0, last_seen=T0
    )
    view, _ = _view(dataclasses.replace(known, state=before))
    entry, _ = view.rejected(_game(1), Rejected("bad_type", "players", b"{}"), T0)
    assert entry.state == after


def test_a_spent_budget_and_resolutions_become_entries() -> None:
    view, _ = _view(
        QuarantineEntry(
            kind="box_score",
            key=_game(2).game_id,
            season=2014,
            reason="bad_type",
            first_seen=T0,
            last_seen=T0,
        ),
        QuarantineEntry(
            kind="box_score", key="201599999", season=2015, reason="x", first_seen=T0, last_seen=T0
        ),
    )
    failures = GameFailures(3, T0, T0 + dt.timedelta(minutes=11), "ScoreApiError: HTTP 503")
    entry = view.budget_spent(_game(1), failures)
    assert (entry.reason, entry.attempts, entry.state, entry.payload) == (BUDGET_SPENT, 3, "open", b"")
    assert "HTTP 503" in entry.detail
    assert view.keys("open") == {_game(2).game_id}  # the other season's entry is not this view's
    assert [e.state for e in view.resolved({_game(2).game_id})] == ["resolved"]
    assert view.counts() == {"open": 1, "retry": 0, "skipped": 0, "resolved": 0}


# --- the ordered fetch ---------------------------------------------------------------------------


class Scores:
    """The Score API client's ``box_score``, scripted per game id (the network boundary)."""

    def __init__(self, answers: dict[str, BaseException], *, hold: str | None = None) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.hold = hold
        self.release = asyncio.Event()

    async def box_score(self, game_id: str, *, season: int | None = None, strict: bool = False) -> BoxScore:
        assert strict
        self.asked.append(game_id)
        if game_id == self.hold:
            await self.release.wait()
        if game_id in self.answers:
            raise self.answers[game_id]
        await asyncio.sleep(0)
        return _box(_game(int(game_id[-5:])))


def _fetch(scores: Scores, n: int, concurrency: int = 1) -> BoxScoreFetch:
    return BoxScoreFetch(cast("Any", scores), [_game(i) for i in range(1, n + 1)], concurrency=concurrency)


async def test_a_failed_game_holds_back_itself_and_every_later_one() -> None:
    failed = ScoreApiError("score_api", "injected", status=503, transient=True)
    scores = Scores({_game(3).game_id: failed})
    fetch = _fetch(scores, 6, concurrency=2)
    await fetch.run()
    assert [g.game_id for g, _ in fetch.prefix()] == [_game(1).game_id, _game(2).game_id]
    assert [g.game_id for g in fetch.held()] == [_game(i).game_id for i in range(3, 7)]
    assert fetch.failure is not None
    assert (fetch.failure.index, fetch.failure.error) == (2, failed)
    # The later games were still fetched, for the next run.
    assert [g.game_id for g, _ in fetch.fetched_later()] == [_game(i).game_id for i in range(4, 7)]


async def test_the_next_run_asks_only_for_what_it_does_not_know() -> None:
    scores = Scores({})
    known = {_game(i).game_id: _box(_game(i)) for i in (1, 3)}
    fetch = BoxScoreFetch(cast("Any", scores), [_game(i) for i in range(1, 5)], concurrency=2, known=known)
    await fetch.run()
    assert sorted(scores.asked) == [_game(2).game_id, _game(4).game_id]
    assert len(fetch.prefix()) == 4


async def test_fetching_stops_once_as_many_games_failed_as_run_at_once() -> None:
    errors: dict[str, BaseException] = {
        _game(i).game_id: ScoreApiError("score_api", "down", status=503, transient=True) for i in range(1, 11)
    }
    scores = Scores(errors)
    fetch = _fetch(scores, 10, concurrency=2)
    await fetch.run()
    assert len(scores.asked) == 2  # an outage costs a few requests, not one per game
    assert fetch.prefix() == []


async def test_a_rejected_record_is_an_outcome_not_a_failure() -> None:
    rejected = RecordRejected("boxscore", "unknown_game", "another game", payload=b'{"game_id": "x"}')
    fetch = _fetch(Scores({_game(2).game_id: rejected}), 3, concurrency=3)
    await fetch.run()
    assert fetch.failure is None
    outcomes = [outcome for _, outcome in fetch.prefix()]
    assert outcomes[1] == Rejected("unknown_game", "another game", b'{"game_id": "x"}')
    assert isinstance(outcomes[2], BoxScore)


async def test_the_earliest_failure_wins_among_concurrent_fetches() -> None:
    errors: dict[str, BaseException] = {
        _game(i).game_id: ScoreApiError("score_api", f"game {i}", status=500, transient=True) for i in (2, 4)
    }
    fetch = _fetch(Scores(errors), 5, concurrency=5)
    await fetch.run()
    assert fetch.failure is not None
    assert fetch.failure.index == 1
    assert len(fetch.prefix()) == 1


async def test_a_refused_token_aborts_every_fetch_and_keeps_what_completed() -> None:
    scores = Scores(
        {_game(2).game_id: ScoreApiAuthError("score_api", "refused", status=401)}, hold=_game(3).game_id
    )
    fetch = _fetch(scores, 4, concurrency=4)
    with pytest.raises(ScoreApiAuthError):
        await fetch.run()
    assert [g.game_id for g, _ in fetch.prefix()] == [_game(1).game_id]


async def test_a_cancelled_fetch_keeps_the_completed_prefix() -> None:
    scores = Scores({}, hold=_game(3).game_id)
    fetch = _fetch(scores, 5, concurrency=5)
    task = asyncio.create_task(fetch.run())
    while len(scores.asked) < 5 or sum(r is not None for r in fetch.results) < 4:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [g.game_id for g, _ in fetch.prefix()] == [_game(1).game_id, _game(2).game_id]
    assert fetch.held()[0].game_id == _game(3).game_id
