"""The replay catalog: player ids, game and season status over time, feed ordering, no leaks."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from scorebeater.errors import DataError
from scorebeater.scoreapi import timeline
from scorebeater.scoreapi.catalog import DERIVED_ID_BASE, ReplayCatalog, derived_player_id, normalise_name
from scorebeater.testing.score_api import UNMATCHED_NAME, synthetic_history

UTC = dt.UTC


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, second: int = 0) -> int:
    return timeline.epoch(dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC))


@pytest.fixture(name="catalog")
def _catalog() -> ReplayCatalog:
    return ReplayCatalog.build(synthetic_history())


def test_derived_ids_are_stable_above_real_ids_and_ignore_accents_and_case() -> None:
    a = derived_player_id("Zoë  Unmatched-Player")
    assert a == derived_player_id("ZOE UNMATCHED PLAYER")
    assert a >= DERIVED_ID_BASE
    assert a < DERIVED_ID_BASE + 2**32
    assert a != derived_player_id("Zoe Unmatched")
    assert normalise_name("  J.J.  Redick ") == "j j redick"


def test_unmatched_players_get_the_same_derived_id_in_every_season(catalog: ReplayCatalog) -> None:
    ids = {
        line["player_id"]
        for entry in catalog.games_by_id.values()
        for line in entry.lines
        if line["player"] == UNMATCHED_NAME
    }
    assert ids == {derived_player_id(UNMATCHED_NAME)}


def test_a_real_id_in_the_derived_range_is_refused() -> None:
    history = synthetic_history(game_seasons=(2014,), totals_only=())
    bad = dataclasses.replace(history.season_totals[0], player_id=DERIVED_ID_BASE + 1)
    history = dataclasses.replace(history, season_totals=(bad, *history.season_totals[1:]))
    with pytest.raises(DataError, match="derived-id range"):
        ReplayCatalog.build(history)


def test_game_turns_in_progress_at_23h_and_final_at_01h30(catalog: ReplayCatalog) -> None:
    entry = catalog.games_by_id["201400001"]  # 2013-11-01
    assert entry.status(at(2013, 11, 1, 22, 59, second=59)) == "scheduled"
    assert entry.status(at(2013, 11, 1, 23)) == "in_progress"
    assert entry.status(at(2013, 11, 2, 1, 29, second=59)) == "in_progress"
    assert entry.status(at(2013, 11, 2, 1, 30)) == "final"
    before = entry.to_json(at(2013, 11, 2, 1, 29))
    after = entry.to_json(at(2013, 11, 2, 1, 30))
    assert (before["home_pts"], before["final_at"]) == (None, None)
    assert after["home_pts"] is not None
    assert after["final_at"] == after["updated_at"] == "2013-11-02T01:30:00Z"
    assert before["updated_at"] == "2013-11-01T23:00:00Z"


def test_season_status_progression(catalog: ReplayCatalog) -> None:
    s = catalog.seasons[2014]
    assert not s.visible(at(2013, 6, 30, 23, 59))
    assert s.visible(at(2013, 7, 1))
    assert s.status(at(2013, 7, 1)) == "scheduled"
    assert s.status(at(2013, 11, 1, 23)) == "in_progress"
    # Last regular day is Nov 6: final at Nov 7 01:30; playoffs continue in April.
    assert s.status(at(2013, 11, 7, 1, 29)) == "in_progress"
    assert not s.totals_final(at(2013, 11, 7, 1, 29))
    assert s.status(at(2013, 11, 7, 1, 30)) == "regular_season_final"
    assert s.totals_final(at(2013, 11, 7, 1, 30))
    assert s.status(at(2014, 4, 22, 1, 30)) == "final"
    info = s.to_json(at(2013, 11, 3, 12))
    assert info["scheduled_games_per_team"] == 6
    assert info["regular_season_final_at"] is None
    assert info["totals_available"] is False
    assert info["games"] == {"regular": 12, "playoffs": 0, "scheduled": 8, "in_progress": 0, "final": 4}


def test_playoff_games_are_published_when_the_regular_season_ends(catalog: ReplayCatalog) -> None:
    s = catalog.seasons[2014]
    during = {
        g["season_type"]
        for g in s.games_page(at(2013, 11, 5), status=None, updated_since=None, after=None, limit=100)[0]
    }
    assert during == {"regular"}
    games, _, _ = s.games_page(
        at(2013, 11, 7, 1, 30), status="scheduled", updated_since=None, after=None, limit=100
    )
    assert [g["season_type"] for g in games] == ["playoffs", "playoffs"]
    assert {g["updated_at"] for g in games} == {"2013-11-07T01:30:00Z"}
    assert catalog.game("201400013", at(2013, 11, 7, 1, 29)) is None


def test_totals_only_seasons_appear_final_on_june_30(catalog: ReplayCatalog) -> None:
    assert 2012 not in {s.season for s in catalog.visible_seasons(at(2012, 6, 29))}
    s = catalog.season(2012, at(2012, 6, 30))
    assert s is not None
    assert s.status(at(2012, 6, 30)) == "final"
    assert s.totals_final(at(2012, 6, 30))
    assert s.to_json(at(2012, 6, 30))["has_games"] is False


def test_later_seasons_are_invisible(catalog: ReplayCatalog) -> None:
    t = at(2014, 1, 1)
    assert [s.season for s in catalog.visible_seasons(t)] == [2011, 2012, 2013, 2014]
    assert catalog.season(2015, t) is None
    assert catalog.game("201500001", t) is None


def test_games_feed_is_keyset_ordered_and_pages_without_gaps(catalog: ReplayCatalog) -> None:
    s = catalog.seasons[2014]
    t = at(2013, 11, 4, 2)  # the Nov 3 games turned final at 01:30
    seen: list[tuple[str, str]] = []
    after = None
    while True:
        page, last, more = s.games_page(t, status=None, updated_since=None, after=after, limit=5)
        seen.extend((g["updated_at"], g["game_id"]) for g in page)
        if not more:
            break
        after = last
    assert seen == sorted(seen)
    assert len(seen) == len({gid for _, gid in seen}) == 12
    since = timeline.epoch(dt.datetime(2013, 11, 3, 1, 30, tzinfo=UTC))
    newer, _, _ = s.games_page(t, status=None, updated_since=since, after=None, limit=50)
    assert {g["updated_at"] for g in newer} == {"2013-11-04T01:30:00Z"}


def test_totals_page_by_player_id(catalog: ReplayCatalog) -> None:
    s = catalog.seasons[2014]
    first, last, more = s.totals_page(after=None, limit=3)
    rest, _, more2 = s.totals_page(after=last, limit=100)
    ids = [r["player_id"] for r in first + rest]
    assert ids == sorted(ids)
    assert (more, more2) == (True, False)
    assert len(ids) == 8


def test_resolve_season_and_default_start(catalog: ReplayCatalog) -> None:
    assert catalog.resolve_season(None) == 2015
    assert catalog.resolve_season(2014) == 2014
    with pytest.raises(DataError, match="no regular-season games"):
        catalog.resolve_season(2012)
    assert catalog.default_start(2014) == dt.datetime(2013, 10, 31, tzinfo=UTC)


def test_box_score_body_is_cached_bytes(catalog: ReplayCatalog) -> None:
    entry = catalog.games_by_id["201400001"]
    body = catalog.box_score_body(entry)
    assert body is catalog.box_score_body(entry)
    assert b'"players"' in body
