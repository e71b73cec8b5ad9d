"""Screenshots of the web page over a replay of the real 2014 season: docs/ui-leaderboard.png and
docs/ui-player.png (shown in the README).

Usage (from the project root, with Debian's ``chromium`` installed: ``scripts/install-services.sh``)::

    .venv/bin/python scripts/ui_screenshots.py [--out docs] [--until 2014-02-15] [--team LAL]
        [--player "Nick Young"]

Steps, all in a temp dir:

1. the published model (the latest version under ``model/score_beater``) is served by the TF
   Serving stand-in; the real replay Score API runs over the bundled data on a manual clock;
2. a daemon (local storage, admin app on loopback; stages run one at a time by this script)
   follows season 2013, the clock stepping through it three weeks at a time, the feature and
   prediction stages running after each step, then validation (2013's outcomes: the model
   panel's realized quality); a second daemon on the same storage follows 2013 and 2014 (2014
   is published only shortly before its first game), stepping through 2014 four days at a
   time until ``--until``, so each player has a prediction trajectory;
3. headless chromium (Playwright, ``executable_path``) opens the page, filters the leaderboard
   to ``--team`` (a race within one team) and saves it, then clicks ``--player`` (default: the
   player of that team still open whose probability is nearest 50%) and saves his view.
"""

# ruff: noqa: INP001, T201, S101 - a script run by path that reports progress and asserts its data
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
from playwright.async_api import async_playwright, expect

from scorebeater.config import (
    AdminConfig,
    Config,
    LocalStorageConfig,
    ModelConfig,
    SchedulerConfig,
    StorageConfig,
    TFServingConfig,
)
from scorebeater.daemon import Daemon, open_daemon
from scorebeater.modelserver.app import serve_models
from scorebeater.scoreapi import timeline
from scorebeater.testing.score_api import bundled_catalog, running_replay

ROOT = Path(__file__).resolve().parents[1]
MODEL_BASE = ROOT / "model" / "score_beater"
SEASONS = (2013, 2014)
VIEWPORT = {"width": 1360, "height": 1000}


async def step(daemon: Daemon, *stages: str) -> None:
    for stage in ("features", "predictions", *stages):
        await daemon.runners[stage].run_once()


async def follow(
    daemon: Daemon, clock_set: Callable[[dt.datetime], None], season: int, every_days: int, until: dt.datetime
) -> None:
    """Step the replay clock through ``season`` ``every_days`` at a time up to ``until`` (or its
    end), running the feature and prediction stages after each step, then validation."""
    catalog = bundled_catalog()
    info = catalog.seasons[season]
    assert info.last_regular_date is not None
    end = min(timeline.final_at(info.last_regular_date) + dt.timedelta(hours=1), until)
    when = catalog.default_start(season)
    while when < end:
        when = min(when + dt.timedelta(days=every_days), end)
        clock_set(when)
        await step(daemon)
        print(f"  {season}: {when:%Y-%m-%d}", file=sys.stderr)
    await daemon.runners["validation"].run_once()


async def pick_player(admin: str, team: str, name: str | None) -> tuple[int, int]:
    """The player to show (``name``'s first match, else the one of ``team`` whose outcome is
    open and whose probability is nearest 50%) and the number of ``team``'s rows."""
    async with aiohttp.ClientSession(base_url=admin) as http:
        query = {"season": "2014", "limit": "1000", "team": team}
        async with http.get("/v1/predictions", params=query) as resp:
            items = (await resp.json())["items"]
        if name:
            async with http.get("/v1/predictions", params={"season": "2014", "player": name}) as resp:
                named = (await resp.json())["items"]
            if not named:
                raise SystemExit(f"no 2014 player matches {name!r}")
            return int(named[0]["player_id"]), len(items)
    open_ = [i for i in items if i["outcome"] is None] or items
    if not open_:
        raise SystemExit(f"no 2014 player of {team}")
    return int(min(open_, key=lambda i: abs(i["probability"] - 0.5))["player_id"]), len(items)


async def shoot(admin: str, out: Path, team: str, name: str | None) -> None:
    path = shutil.which("chromium")
    if path is None:
        raise SystemExit("chromium is not installed: scripts/install-services.sh")
    player, rows = await pick_player(admin, team, name)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, headless=True)
        page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        await page.goto(f"{admin}/#season=2014")
        await expect(page.locator("#rows tr").first).to_be_visible(timeout=20_000)
        await expect(page.locator("#reliability svg")).to_be_visible(timeout=20_000)
        await page.locator("#team").select_option(team)
        await expect(page.locator("#rows tr")).to_have_count(rows)
        await page.screenshot(path=out / "ui-leaderboard.png")
        if name:
            await page.locator("#name").fill(name)
        await page.locator(f'tr[data-player-id="{player}"]').click()
        await expect(page.locator("#player-chart svg")).to_be_visible()
        await page.screenshot(path=out / "ui-player.png")
        await browser.close()


async def main(args: argparse.Namespace) -> None:
    version = max(int(p.name) for p in MODEL_BASE.iterdir() if p.name.isdigit())
    until = dt.datetime.fromisoformat(args.until).replace(tzinfo=dt.UTC)
    with tempfile.TemporaryDirectory(prefix="ui-screens-") as tmp:
        base = Path(tmp) / "model" / "score_beater"
        shutil.copytree(MODEL_BASE / str(version), base / str(version))
        catalog = bundled_catalog()
        async with (
            running_replay(catalog, catalog.default_start(SEASONS[0])) as replay,
            serve_models(
                model_name="score_beater", base_path=base, host="127.0.0.1", port=0, poll_interval_s=60
            ) as models,
        ):
            cfg = Config(
                score_api=replay.client_config(),
                model=ModelConfig(name="score_beater"),
                tfserving=TFServingConfig(base_url=models.url, max_batch_size=512),
                storage=StorageConfig(backend="local", local=LocalStorageConfig(root=Path(tmp) / "store")),
                scheduler=SchedulerConfig(seasons=SEASONS[:1]),
                admin=AdminConfig(host="127.0.0.1", port=0),
            )
            print(f"replaying with model version {version}", file=sys.stderr)
            # A season is published shortly before its first game: follow 2014 from then on
            # (the second daemon resumes from the first one's checkpoints).
            async with open_daemon(cfg) as daemon:
                await follow(daemon, replay.clock.set, SEASONS[0], 21, until)
            cfg = dataclasses.replace(cfg, scheduler=SchedulerConfig(seasons=SEASONS))
            async with open_daemon(cfg) as daemon:
                daemon.started.set()
                assert daemon.admin_url is not None
                await follow(daemon, replay.clock.set, SEASONS[1], 4, until)
                args.out.mkdir(parents=True, exist_ok=True)
                await shoot(daemon.admin_url, args.out, args.team, args.player)
    print(f"wrote {args.out / 'ui-leaderboard.png'} and {args.out / 'ui-player.png'}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--until", default="2014-02-15", help="2014 replay date to stop at (UTC)")
    parser.add_argument("--team", default="LAL", help="the team the leaderboard is filtered to")
    parser.add_argument("--player", default=None, help="name (substring) of the player to show")
    asyncio.run(main(parser.parse_args()))
