"""Fixtures of the browser tests: Debian's chromium driven by Playwright, a daemon over a replay.

Playwright never downloads a browser here: it launches the system's ``chromium`` by
``executable_path`` (``scripts/install-services.sh`` installs it). Without it the tests are
skipped locally and fail under ``make test`` (:func:`tests.conftest.service_unavailable`).

The daemon is a real one (``open_daemon``: local storage, the replay Score API over a
synthetic league with a :class:`~scorebeater.scoreapi.timeline.ManualClock`, the TF Serving
stand-in); its stages are run by the test (``run_once``) so what the page must show is known.
One player of the league is named :data:`XSS_NAME`, as the Score API's box scores spell him.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Error, Page, async_playwright

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
from scorebeater.data import History
from scorebeater.scoreapi.catalog import ReplayCatalog
from scorebeater.testing.score_api import RunningReplay, running_replay, synthetic_history
from tests.conftest import service_unavailable
from tests.integration.league import SEASON, model_url_fixture

__all__ = ["SEASON", "XSS_NAME", "XSS_PLAYER", "Watched", "model_url_fixture"]

XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_PLAYER = 111
"""Team BBB's first player (ids are 100 + 10 x team index + slot 1 or 2)."""
VIEWPORT = {"width": 1360, "height": 900}


def xss_history() -> History:
    """The synthetic league with :data:`XSS_PLAYER` named :data:`XSS_NAME` everywhere."""
    history = synthetic_history()
    return dataclasses.replace(
        history,
        player_games=tuple(
            dataclasses.replace(pg, player=XSS_NAME) if pg.player_id == XSS_PLAYER else pg
            for pg in history.player_games
        ),
        season_totals=tuple(
            dataclasses.replace(t, player=XSS_NAME) if t.player_id == XSS_PLAYER else t
            for t in history.season_totals
        ),
    )


@pytest.fixture(name="replay")
async def _replay() -> AsyncIterator[RunningReplay]:
    catalog = ReplayCatalog.build(xss_history())
    async with running_replay(catalog, catalog.default_start(SEASON)) as replay:
        yield replay


def daemon_config(replay: RunningReplay, model_url: str, root: Path, seasons: tuple[int, ...]) -> Config:
    return Config(
        score_api=replay.client_config(),
        model=ModelConfig(name="score_beater"),
        tfserving=TFServingConfig(base_url=model_url, max_batch_size=512),
        storage=StorageConfig(backend="local", local=LocalStorageConfig(root=root)),
        scheduler=SchedulerConfig(seasons=seasons, poll_interval_s=0.5),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


@pytest.fixture(name="daemon")
async def _daemon(replay: RunningReplay, model_url: str, tmp_path: Path) -> AsyncIterator[Daemon]:
    """A daemon with its admin app listening; no stage runs unless the test runs it."""
    async with open_daemon(daemon_config(replay, model_url, tmp_path / "store", (SEASON,))) as daemon:
        daemon.started.set()
        yield daemon


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        service_unavailable("chromium", "not installed (scripts/install-services.sh installs it)")
        raise AssertionError  # unreachable: service_unavailable skips or fails
    return path


@contextlib.asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """Headless Debian chromium under Playwright."""
    path = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(name="browser")
async def _browser() -> AsyncIterator[Browser]:
    async with launched() as browser:
        yield browser


@dataclass
class Watched:
    """A page with what it reported: console errors, uncaught exceptions, dialogs opened."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs


async def watched_page(browser: Browser) -> Watched:
    page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            watched.errors.append(f"console {message.type}: {message.text}")

    def on_page_error(error: Error) -> None:
        watched.errors.append(f"uncaught: {error}")

    async def on_dialog(dialog: Dialog) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    page.on("dialog", on_dialog)
    return watched


@pytest.fixture(name="watched")
async def _watched(browser: Browser) -> AsyncIterator[Watched]:
    watched = await watched_page(browser)
    yield watched
    await watched.page.close()
