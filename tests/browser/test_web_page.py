"""The web page in a real browser (headless Debian chromium), over a daemon following a replay.

Scenario (one daemon, one page, polling every 300 ms):
1. before the season's first game the page loads, shows the followed season and an empty board;
2. the first game day turns final and the stages run: without a reload, the leaderboard gains
   a row per predicted player, in the API's order, with his FTM against last season's;
3. more games: sorting by clicking the probability and change headers gives the API's orders;
   filtering by team and by name gives the API's rows;
4. the player named ``<img src=x onerror=alert(1)>`` shows as that text, in the table and in his
   view, and no element or dialog comes of it;
5. clicking a player shows his chart: one point per stored prediction, the running FTM and the
   mark to beat;
6. the season ends and validation runs: outcomes appear in the table and in the open player
   view, the model panel shows realized metrics and a reliability diagram;
7. a page of three rows at a time pages through the season with "Load more" (the cursor);
8. at no point did either page log a console error, throw, or open a dialog.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from scorebeater.daemon import Daemon
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import RunningReplay
from tests.browser.conftest import SEASON, XSS_NAME, XSS_PLAYER, Watched, watched_page

pytestmark = [pytest.mark.slow, pytest.mark.browser]

WAIT_S = 15.0
expect.set_options(timeout=WAIT_S * 1000)  # the page polls every 300 ms; CI machines are slow


async def api(daemon: Daemon, path: str, **params: Any) -> Any:
    assert daemon.admin_url is not None
    query = {k: str(v) for k, v in params.items()}
    async with aiohttp.ClientSession() as http, http.get(daemon.admin_url + path, params=query) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def api_ids(daemon: Daemon, **params: Any) -> list[int]:
    page = await api(daemon, "/v1/predictions", season=SEASON, limit=1000, **params)
    return [item["player_id"] for item in page["items"]]


async def shown_ids(page: Page) -> list[int]:
    ids: list[int] = await page.locator("#rows tr").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.playerId))"
    )
    return ids


async def until(get: Callable[[], Awaitable[Any]], want: Any, what: str) -> None:
    """Wait for ``get()`` to equal ``want`` (the page polls and fetches on its own time)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    got = await get()
    while got != want:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what}: still {got!r}, want {want!r}")
        await asyncio.sleep(0.1)
        got = await get()


async def play_until(daemon: Daemon, replay: RunningReplay, when: dt.datetime, *stages: str) -> None:
    replay.clock.set(when)
    for stage in ("features", "predictions", *stages):
        await daemon.runners[stage].run_once()


def game_day(n: int) -> dt.datetime:
    """An hour after the synthetic season's ``n``-th game day (1-6, Nov 1-6) turned final."""
    return timeline.final_at(dt.date(SEASON - 1, 11, n)) + dt.timedelta(hours=1)


async def test_the_page_follows_a_replay(
    daemon: Daemon, replay: RunningReplay, browser: Browser, watched: Watched
) -> None:
    page = watched.page
    assert daemon.admin_url is not None

    # 1. before the first game
    await page.goto(f"{daemon.admin_url}/?poll_ms=300")
    await expect(page.locator("#season")).to_have_value(str(SEASON))
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#live")).to_contain_text("updated")
    assert await shown_ids(page) == []

    # 2. the first game day: rows appear without a reload
    await play_until(daemon, replay, game_day(1))
    first = await api_ids(daemon)
    assert first
    await until(lambda: shown_ids(page), first, "rows after the first game day")
    await expect(page.locator("#empty")).to_be_hidden()
    items = (await api(daemon, "/v1/predictions", season=SEASON, limit=1000))["items"]
    some = items[0]
    row = page.locator(f'tr[data-player-id="{some["player_id"]}"]')
    await expect(row.locator("td.ftm")).to_have_text(f"{some['ftm']} / {some['prev_ftm']}")
    await expect(row.locator("td.probability")).to_contain_text(f"{100 * some['probability']:.1f}%")

    # 3. more games; sorting and filtering
    await play_until(daemon, replay, game_day(3))
    await until(lambda: shown_ids(page), await api_ids(daemon), "rows after three game days")
    header = page.locator('button.sort[data-order="-probability"]')
    await header.click()
    await expect(header.locator("xpath=..")).to_have_attribute("aria-sort", "ascending")
    await until(lambda: shown_ids(page), await api_ids(daemon, order="probability"), "probability ascending")
    await header.click()
    by_probability = await api_ids(daemon, order="-probability")
    await until(lambda: shown_ids(page), by_probability, "probability descending")
    await page.locator('button.sort[data-order="-change"]').click()
    by_change = await api_ids(daemon, order="-change")
    assert by_change != by_probability
    await until(lambda: shown_ids(page), by_change, "change descending")
    await page.locator("#team").select_option("BBB")
    await until(lambda: shown_ids(page), await api_ids(daemon, order="-change", team="BBB"), "team BBB")
    assert set(await page.locator("#rows td:nth-child(3)").all_text_contents()) == {"BBB"}
    await page.locator("#team").select_option("")
    await page.locator("#name").fill("player 12")
    wanted = await api_ids(daemon, order="-change", player="player 12")
    assert 0 < len(wanted) < len(first)
    await until(lambda: shown_ids(page), wanted, "name filter")
    await page.locator("#name").fill("")
    await until(lambda: shown_ids(page), by_change, "filters cleared")

    # 4. the hostile name is text
    cell = page.locator(f'tr[data-player-id="{XSS_PLAYER}"] td.player')
    await expect(cell).to_have_text(XSS_NAME)
    assert await page.locator('img[src="x"]').count() == 0
    await cell.click()
    await expect(page.locator("#player-title")).to_have_text(XSS_NAME)
    assert await page.locator('img[src="x"]').count() == 0

    # 5. a player's chart
    player = await api(daemon, f"/v1/players/{XSS_PLAYER}", season=SEASON)
    assert len(player["history"]) >= 2  # one per prediction run he played in
    chart = page.locator("#player-chart svg")
    await expect(chart.locator("circle.prob-dot")).to_have_count(len(player["history"]))
    await expect(chart.locator("circle.ftm-dot")).to_have_count(len(player["history"]))
    await expect(chart.locator("polyline.prob")).to_have_count(1)
    await expect(chart.locator(".mark-label")).to_have_text(f"mark: {player['history'][-1]['prev_ftm']}")
    assert f"player={XSS_PLAYER}" in page.url

    # 6. the season ends: outcomes and realized quality
    season = replay.catalog.seasons[SEASON]
    assert season.last_regular_date is not None
    await play_until(
        daemon,
        replay,
        timeline.final_at(season.last_regular_date) + dt.timedelta(hours=1),
        "validation",
    )
    outcome = (await api(daemon, f"/v1/players/{XSS_PLAYER}", season=SEASON))["outcome"]
    assert outcome is not None
    await expect(page.locator("#player-facts .badge")).to_have_text("beat" if outcome["beat"] else "missed")
    await expect(page.locator("#rows .badge", has_text="open")).to_have_count(0)
    await expect(page.locator("#quality")).to_be_visible()
    await expect(page.locator("#quality-rows tr").first).to_contain_text("whole season")
    await expect(page.locator("#reliability circle.rel-dot").first).to_be_visible()
    await expect(page.locator("#model-summary")).to_contain_text("v1")

    # 7. paging: three rows at a time, "Load more" follows the cursor to the end
    paged = await watched_page(browser)
    await paged.page.goto(f"{daemon.admin_url}/?poll_ms=300&page_size=3#season={SEASON}")
    everyone = await api_ids(daemon)
    more = paged.page.locator("#more")
    for shown in range(3, len(everyone), 3):
        await until(lambda: shown_ids(paged.page), everyone[:shown], f"{shown} rows")
        await more.click()
    await until(lambda: shown_ids(paged.page), everyone, "every row")
    await expect(more).to_be_hidden()
    await paged.page.close()

    # 8. nothing went wrong in either page
    watched.check_clean()
    paged.check_clean()
