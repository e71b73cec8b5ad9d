"""ScoreApiClient against the real replay server on loopback, with injected faults."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
import stamina
from structlog.testing import capture_logs

from scorebeater.clients.score_api import GameNotFinal, ScoreApiClient, SeasonNotFinal
from scorebeater.config import Secret
from scorebeater.errors import ScoreApiAuthError, ScoreApiError, ScoreApiNotFound
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.score_api import Fault, RunningReplay, running_replay, synthetic_history

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from scorebeater.metrics import Metrics

UTC = dt.UTC
MID_SEASON = dt.datetime(2013, 11, 4, 12, tzinfo=UTC)
"""Synthetic 2014: games of Nov 1-3 are final (6), Nov 4-6 scheduled (6)."""


@pytest.fixture(name="catalog", scope="module")
def _catalog() -> ReplayCatalog:
    return ReplayCatalog.build(synthetic_history())


@pytest.fixture(name="replay")
async def _replay(catalog: ReplayCatalog) -> AsyncIterator[RunningReplay]:
    async with running_replay(catalog, MID_SEASON) as replay:
        yield replay


@pytest.fixture(name="fast_retries")
def _fast_retries() -> Iterator[None]:
    """stamina's testing mode: no backoff sleeps, attempts still capped by the config."""
    stamina.set_testing(True, attempts=100, cap=True)
    try:
        yield
    finally:
        stamina.set_testing(False)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def requests(metrics: Metrics, endpoint: str, code: str) -> float:
    return sample(metrics, "scorebeater_score_api_requests_total", endpoint=endpoint, code=code)


def hits(replay: RunningReplay, prefix: str) -> list[float]:
    return [t for path, t in replay.faults.hits if path.startswith(prefix)]


async def test_reads_every_endpoint(replay: RunningReplay, metrics: Metrics) -> None:
    async with ScoreApiClient.open(replay.client_config(page_size=5), metrics=metrics) as api:
        assert await api.ping() == MID_SEASON
        assert [s.season for s in await api.seasons()] == [2011, 2012, 2013, 2014]
        info = await api.season(2014)
        assert (info.status, info.scheduled_games_per_team, info.games.final) == ("in_progress", 6, 6)
        assert not info.regular_season_final

        games = [g async for g in api.games(2014)]
        assert len(games) == 12
        assert requests(metrics, "games", "200") == 3  # pages of 5, 5, 2
        finals = [g async for g in api.games(2014, status="final")]
        assert len(finals) == 6
        assert all(g.home_pts is not None and g.final_at is not None for g in finals)

        box = await api.box_score(finals[0].game_id, season=2014)
        assert box is not None
        expected = replay.catalog.games_by_id[finals[0].game_id].lines
        assert [(p.player_id, p.ftm, p.fta) for p in box.players] == [
            (line["player_id"], line["ftm"], line["fta"]) for line in expected
        ]
        assert {box.home, box.away} == {finals[0].home, finals[0].away}

        with pytest.raises(GameNotFinal) as not_final:
            await api.box_score("201400012")
        assert (not_final.value.status, not_final.value.code) == (409, "game_not_final")
        with pytest.raises(SeasonNotFinal):
            _ = [row async for row in api.season_totals(2014)]
        with pytest.raises(ScoreApiNotFound):
            await api.season(2015)
        totals = [row async for row in api.season_totals(2013)]
        assert [t.player_id for t in totals] == sorted(t.player_id for t in totals)
        assert len(totals) == 8
        assert api.rejected == Counter()

    assert requests(metrics, "totals", "409") == 1
    assert requests(metrics, "season", "404") == 1
    assert sample(metrics, "scorebeater_score_api_request_duration_seconds_count", endpoint="boxscore") == 2
    assert sample(metrics, "scorebeater_scores_last_fetch_success_timestamp_seconds") > 0


async def test_polling_with_the_page_cursor_returns_only_changes(replay: RunningReplay) -> None:
    async with ScoreApiClient.open(replay.client_config()) as api:
        first = await api.games_page(2014, status="final")
        assert len(first.games) == 6
        again = await api.games_page(2014, status="final", cursor=first.next_cursor)
        assert again.games == ()
        replay.clock.advance(dt.timedelta(days=1))
        later = await api.games_page(2014, status="final", cursor=again.next_cursor)
        assert {g.date for g in later.games} == {dt.date(2013, 11, 4)}
        assert later.replay_time == MID_SEASON + dt.timedelta(days=1)
        since = await api.games_page(2014, updated_since=first.games[-1].updated_at)
        assert {g.game_id for g in since.games} == {g.game_id for g in later.games}


async def test_429_retry_after_is_honoured(replay: RunningReplay, metrics: Metrics) -> None:
    """Real backoff here: the client must wait the server's Retry-After (1 s), not its own."""
    replay.faults.add("/v1/seasons", Fault("status", status=429, headers={"Retry-After": "1"}))
    async with ScoreApiClient.open(replay.client_config(), metrics=metrics) as api:
        seasons = await api.seasons()
    assert len(seasons) == 4
    first, second = hits(replay, "/v1/seasons")
    assert second - first >= 1.0
    assert api.retries == 1
    assert sample(metrics, "scorebeater_score_api_retries_total") == 1
    assert requests(metrics, "seasons", "429") == 1
    assert requests(metrics, "seasons", "200") == 1


async def test_burst_of_500s_then_success(
    replay: RunningReplay, metrics: Metrics, fast_retries: None
) -> None:
    replay.faults.add("/v1/games", *[Fault("status", status=500)] * 3)
    async with ScoreApiClient.open(replay.client_config(max_attempts=4), metrics=metrics) as api:
        games = [g async for g in api.games(2014)]
    assert len(games) == 12
    assert requests(metrics, "games", "500") == 3
    assert sample(metrics, "scorebeater_score_api_retries_total") == 3


async def test_persistent_5xx_gives_up_after_max_attempts(replay: RunningReplay, fast_retries: None) -> None:
    replay.faults.add("/v1/seasons/2014", *[Fault("status", status=503)] * 10)
    async with ScoreApiClient.open(replay.client_config(max_attempts=4)) as api:
        with pytest.raises(ScoreApiError) as failure:
            await api.season(2014)
    assert (failure.value.status, failure.value.transient) == (503, True)
    assert len(hits(replay, "/v1/seasons/2014")) == 4


async def test_retry_budget_bounds_total_time(replay: RunningReplay) -> None:
    """Real backoff: with a 1.5 s budget the client stops although attempts remain."""
    replay.faults.add("/v1/seasons/2014", *[Fault("status", status=503, headers={"Retry-After": "1"})] * 10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with ScoreApiClient.open(replay.client_config(max_attempts=10, retry_budget_s=1.5)) as api:
        with pytest.raises(ScoreApiError):
            await api.season(2014)
    assert loop.time() - started < 4.0
    assert len(hits(replay, "/v1/seasons/2014")) <= 3


async def test_timeout_is_retried(replay: RunningReplay, metrics: Metrics, fast_retries: None) -> None:
    replay.faults.add("/v1/games/201400001/boxscore", Fault("delay", delay_s=5.0))
    async with ScoreApiClient.open(replay.client_config(timeout_s=0.3), metrics=metrics) as api:
        box = await api.box_score("201400001")
    assert box is not None
    assert requests(metrics, "boxscore", "0") == 1
    assert requests(metrics, "boxscore", "200") == 1


async def test_malformed_json_is_retried(replay: RunningReplay, fast_retries: None) -> None:
    replay.faults.add("/v1/games", Fault("malformed"))
    async with ScoreApiClient.open(replay.client_config()) as api:
        page = await api.games_page(2014)
    assert len(page.games) == 12
    assert len(hits(replay, "/v1/games")) == 2


async def test_malformed_json_every_time_is_a_transient_error(
    replay: RunningReplay, fast_retries: None
) -> None:
    replay.faults.add("/v1/games", *[Fault("malformed")] * 5)
    async with ScoreApiClient.open(replay.client_config(max_attempts=3)) as api:
        with pytest.raises(ScoreApiError, match="not valid JSON") as failure:
            await api.games_page(2014)
    assert failure.value.transient
    assert len(hits(replay, "/v1/games")) == 3


async def test_truncated_page_is_retried(replay: RunningReplay, metrics: Metrics, fast_retries: None) -> None:
    replay.faults.add("/v1/games", Fault("truncated"))
    with capture_logs() as logs:
        async with ScoreApiClient.open(replay.client_config(), metrics=metrics) as api:
            games = [g async for g in api.games(2014)]
    assert len(games) == 12
    retried = [e["error"] for e in logs if e["event"] == "upstream.retry_scheduled"]
    assert len(retried) == 1
    assert "truncated response body" in retried[0]
    assert len(hits(replay, "/v1/games")) == 2
    assert sample(metrics, "scorebeater_score_api_retries_total") == 1


async def test_bad_token_is_an_auth_error_without_retry(catalog: ReplayCatalog, fast_retries: None) -> None:
    async with running_replay(catalog, MID_SEASON, token="right-token") as replay:
        for token in (Secret("wrong-token"), None):
            with capture_logs() as logs:
                async with ScoreApiClient.open(replay.client_config(token=token)) as api:
                    with pytest.raises(ScoreApiAuthError) as failure:
                        await api.seasons()
            assert failure.value.status == 401
            assert "wrong-token" not in repr(logs)
        assert len(hits(replay, "/v1/seasons")) == 2
        async with ScoreApiClient.open(replay.client_config(token=Secret("right-token"))) as api:
            assert len(await api.seasons()) == 4
        assert "right-token" not in repr(replay.client_config(token=Secret("right-token")))


async def test_bad_request_is_not_retried(replay: RunningReplay, fast_retries: None) -> None:
    async with ScoreApiClient.open(replay.client_config()) as api:
        with pytest.raises(ScoreApiError) as failure:
            await api.games_page(2014, cursor="not-a-cursor")
    assert (failure.value.status, failure.value.transient) == (400, False)
    assert "invalid_cursor" in str(failure.value)
    assert len(hits(replay, "/v1/games")) == 1


async def test_a_response_off_contract_is_an_error_not_retried(
    replay: RunningReplay, fast_retries: None
) -> None:
    replay.faults.add("/v1/games", Fault("body", body=b'{"data": {}, "has_more": false}'))
    async with ScoreApiClient.open(replay.client_config()) as api:
        with pytest.raises(ScoreApiError, match="does not match the contract") as failure:
            await api.games_page(2014)
    assert not failure.value.transient
    assert len(hits(replay, "/v1/games")) == 1


def _break_games(body: dict[str, Any]) -> dict[str, Any]:
    games = body["data"]
    games[0]["home_pts"] = -3
    games[1]["season"] = 2013
    del games[2]["updated_at"]
    games[3]["final_at"] = None
    return body


def _break_box_score(body: dict[str, Any]) -> dict[str, Any]:
    first = body["players"][0]
    body["players"] += [
        {**first, "player_id": 9001, "ftm": 5, "fta": 3},
        {**first, "player_id": 9002, "ftm": 0, "fta": -1},
        {**first},
        {**first, "player_id": 9003, "team": "ZZZ"},
        {"player_id": 9004, "player": "No Counts", "team": None},
    ]
    return body


async def test_invalid_records_are_rejected_counted_and_skipped(
    replay: RunningReplay, metrics: Metrics
) -> None:
    replay.faults.add("/v1/games", Fault("mutate", mutate=_break_games))
    replay.faults.add("/v1/games/201400001/boxscore", Fault("mutate", mutate=_break_box_score))
    replay.faults.add(
        "/v1/games/201400002/boxscore", Fault("mutate", mutate=lambda b: {**b, "game_id": "201400003"})
    )
    replay.faults.add(
        "/v1/seasons/2013/player-totals",
        Fault(
            "mutate", mutate=lambda b: {**b, "data": [{**b["data"][0], "ftm": 99, "fta": 1}, *b["data"][1:]]}
        ),
    )
    with capture_logs() as logs:
        async with ScoreApiClient.open(replay.client_config(), metrics=metrics) as api:
            games = [g async for g in api.games(2014, status="final")]
            box = await api.box_score("201400001", season=2014)
            other = await api.box_score("201400002", season=2014)
            totals = [row async for row in api.season_totals(2013)]

    assert len(games) == 2  # 6 final games, 4 broken
    assert box is not None
    assert len(box.players) == len(replay.catalog.games_by_id["201400001"].lines)
    assert other is None
    assert len(totals) == 7
    expected = Counter(
        {
            ("game", "negative_count"): 1,
            ("game", "wrong_season"): 1,
            ("game", "missing_field"): 1,
            ("game", "inconsistent_status"): 1,
            ("boxscore_line", "ftm_gt_fta"): 1,
            ("boxscore_line", "negative_count"): 1,
            ("boxscore_line", "duplicate"): 1,
            ("boxscore_line", "unknown_team"): 1,
            ("boxscore_line", "missing_field"): 1,
            ("boxscore", "unknown_game"): 1,
            ("player_total", "ftm_gt_fta"): 1,
        }
    )
    assert api.rejected == expected
    for (kind, reason), count in expected.items():
        assert sample(metrics, "scorebeater_records_rejected_total", kind=kind, reason=reason) == count
    events = Counter((e["kind"], e["reason"]) for e in logs if e["event"] == "score_api.record_rejected")
    assert events == expected


async def test_the_client_exists_only_inside_its_block(replay: RunningReplay) -> None:
    """open() builds the session on entry and closes it on exit: there is no half-open client."""
    async with ScoreApiClient.open(replay.client_config()) as api:
        assert len(await api.seasons()) == 4
    with pytest.raises(RuntimeError, match="Session is closed"):
        await api.seasons()
