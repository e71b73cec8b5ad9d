"""The shared field parser: every reason code, in both dialects (JSON objects, CSV rows)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from scorebeater import bounds
from scorebeater.errors import ValidationError
from scorebeater.fields import Dialect, Fields

JSON, CSV = Dialect.JSON, Dialect.CSV
Read = Callable[[Fields], object]


def reason(record: object, read: Read, dialect: Dialect = JSON) -> str:
    with pytest.raises(ValidationError) as failure:
        read(Fields(record, "game 1", dialect=dialect))
    return failure.value.reason


@pytest.mark.parametrize(
    ("record", "read", "expected"),
    [
        pytest.param({}, lambda f: f.integer("n"), "missing_field", id="absent-integer"),
        pytest.param({}, lambda f: f.opt_text("team"), "missing_field", id="absent-optional"),
        pytest.param({}, lambda f: f.raw("n"), "missing_field", id="absent-raw"),
        pytest.param({"n": "3"}, lambda f: f.integer("n"), "bad_type", id="integer-as-string"),
        pytest.param({"n": 3.0}, lambda f: f.integer("n"), "bad_type", id="integer-as-float"),
        pytest.param({"n": True}, lambda f: f.integer("n"), "bad_type", id="integer-as-boolean"),
        pytest.param({"n": None}, lambda f: f.integer("n"), "bad_type", id="required-null"),
        pytest.param({"s": ""}, lambda f: f.text("s"), "bad_type", id="empty-string"),
        pytest.param({"s": ""}, lambda f: f.opt_text("s"), "bad_type", id="empty-optional-string"),
        pytest.param({"b": 1}, lambda f: f.flag("b"), "bad_type", id="flag-as-integer"),
        pytest.param({"d": "2013-13-01"}, lambda f: f.date("d"), "bad_type", id="impossible-date"),
        pytest.param({"d": None}, lambda f: f.date("d"), "bad_type", id="null-date"),
        pytest.param({"t": "yesterday"}, lambda f: f.time("t"), "bad_type", id="unparsable-time"),
        pytest.param({"t": "2013-11-01T12:00:00"}, lambda f: f.time("t"), "bad_type", id="naive-time"),
        pytest.param({"t": 5}, lambda f: f.time("t"), "bad_type", id="time-as-number"),
        pytest.param({"n": 0}, lambda f: f.integer("n", lo=1), "bad_value", id="below-positive-bound"),
        pytest.param({"n": 9}, lambda f: f.integer("n", hi=8), "bad_value", id="above-bound"),
        pytest.param({"c": "x"}, lambda f: f.choice("c", ("a", "b")), "bad_value", id="not-a-choice"),
        pytest.param({"c": None}, lambda f: f.choice("c", ("a",)), "bad_value", id="null-choice"),
        pytest.param({"n": -1}, lambda f: f.integer("n", lo=0), "negative_count", id="negative-count"),
        pytest.param({"n": -1}, lambda f: f.integer("n", lo=1), "negative_count", id="negative-id"),
        pytest.param(
            {"ftm": 5, "fta": 3}, lambda f: f.made_attempted("ftm", "fta"), "ftm_gt_fta", id="made>attempted"
        ),
        pytest.param(
            {"ftm": 0, "fta": -1},
            lambda f: f.made_attempted("ftm", "fta"),
            "negative_count",
            id="neg-attempted",
        ),
    ],
)
def test_json_reasons(record: dict[str, Any], read: Read, expected: str) -> None:
    assert reason(record, read) == expected


@pytest.mark.parametrize(
    ("row", "read", "expected"),
    [
        pytest.param({}, lambda f: f.integer("g"), "missing_g", id="absent-column"),
        pytest.param({"g": " "}, lambda f: f.integer("g"), "missing_g", id="empty-integer"),
        pytest.param({"player": ""}, lambda f: f.text("player"), "missing_player", id="empty-text"),
        pytest.param({"g": "8.5"}, lambda f: f.integer("g"), "bad_g", id="not-an-integer"),
        pytest.param({"g": "201"}, lambda f: f.integer("g", lo=0, hi=200), "bad_g", id="above-bound"),
        pytest.param({"age": "5"}, lambda f: f.integer("age", lo=10), "bad_age", id="below-positive-bound"),
        pytest.param(
            {"season": "-5"}, lambda f: f.integer("season", lo=1900), "bad_season", id="negative-year"
        ),
        pytest.param({"date": "2013-13-29"}, lambda f: f.date("date"), "bad_date", id="impossible-date"),
        pytest.param({"date": ""}, lambda f: f.date("date"), "bad_date", id="empty-date"),
        pytest.param({"e": "yes"}, lambda f: f.flag("e"), "bad_e", id="flag-not-0-or-1"),
        pytest.param({"e": ""}, lambda f: f.flag("e"), "bad_e", id="empty-flag"),
        pytest.param(
            {"season_type": "preseason"},
            lambda f: f.choice("season_type", ("regular", "playoffs")),
            "bad_season_type",
            id="not-a-choice",
        ),
        pytest.param({"g": "-1"}, lambda f: f.integer("g", lo=0), "negative_count", id="negative-count"),
        pytest.param(
            {"ft": "130", "fta": "120"},
            lambda f: f.made_attempted("ft", "fta"),
            "ftm_gt_fta",
            id="made>attempted",
        ),
    ],
)
def test_csv_reasons(row: dict[str, str], read: Read, expected: str) -> None:
    assert reason(row, read, CSV) == expected


def test_a_json_record_must_be_an_object() -> None:
    with pytest.raises(ValidationError) as failure:
        Fields([1, 2], "season.games")
    assert failure.value.reason == "bad_type"
    assert str(failure.value) == "season.games is list, not an object"


def test_record_level_errors_keep_their_code_and_name_the_record() -> None:
    f = Fields({"home": "BOS"}, "game 1")
    error = f.error("same_teams", "home and away are both 'BOS'")
    assert (error.reason, str(error)) == ("same_teams", "game 1: home and away are both 'BOS'")
    assert str(Fields({}, dialect=CSV).error("duplicate", "game_id 1")) == "game_id 1"
    assert f.invalid("game_id", "not numeric").reason == "bad_value"
    assert Fields({}, dialect=CSV).invalid("game_id", "not numeric").reason == "bad_game_id"


def test_messages_name_the_record_and_the_field() -> None:
    with pytest.raises(ValidationError, match=r"^game 201400001: ftm 5 > fta 3$"):
        Fields({"ftm": 5, "fta": 3}, "game 201400001").made_attempted("ftm", "fta")
    with pytest.raises(ValidationError, match=r"^g='x' is not an integer$"):
        Fields({"g": "x"}, dialect=CSV).integer("g")


def test_json_values() -> None:
    f = Fields(
        {
            "n": 3,
            "s": "BOS",
            "b": False,
            "d": "2013-10-29",
            "t": "2013-10-30T01:30:00+02:00",
            "null": None,
            "c": "final",
        }
    )
    assert (f.integer("n", lo=0, hi=3), f.text("s"), f.flag("b")) == (3, "BOS", False)
    assert f.date("d") == dt.date(2013, 10, 29)
    assert f.time("t") == dt.datetime(2013, 10, 29, 23, 30, tzinfo=dt.UTC)
    assert f.time("t").tzinfo is dt.UTC
    assert f.choice("c", ("scheduled", "final")) == "final"
    assert f.is_null("null")
    nulls = (f.opt_integer("null"), f.opt_text("null"), f.opt_date("null"), f.opt_time("null"))
    assert nulls == (None, None, None, None)
    assert f.raw("null") is None


def test_csv_values_are_stripped_text_and_empty_is_null() -> None:
    f = Fields(
        {"g": " 82 ", "player": " A B ", "team": "", "e": "1", "date": "2013-10-29", "age": " "},
        dialect=CSV,
    )
    assert (f.integer("g", lo=0), f.text("player"), f.flag("e")) == (82, "A B", True)
    assert f.date("date") == dt.date(2013, 10, 29)
    assert (f.opt_text("team"), f.opt_integer("age", lo=10)) == (None, None)
    assert f.is_null("team")
    assert f.made_attempted("g", "g") == (82, 82)


GAME_FT = bounds.GAME_FREE_THROWS
SEASON_FT = bounds.SEASON_FREE_THROWS


@pytest.mark.parametrize(
    ("record", "read", "expected"),
    [
        pytest.param(
            {"ftm": 0, "fta": 2**63},
            lambda f: f.made_attempted("ftm", "fta", GAME_FT),
            "implausible_fta",
            id="game-fta-2^63",
        ),
        pytest.param(
            {"ftm": 10**6, "fta": 10**6},
            lambda f: f.made_attempted("ftm", "fta", GAME_FT),
            "implausible_fta",
            id="game-ftm=fta=10^6",
        ),
        pytest.param(
            {"ftm": 51, "fta": 51},
            lambda f: f.made_attempted("ftm", "fta", GAME_FT),
            "implausible_fta",
            id="51",
        ),
        pytest.param(
            {"ftm": 9, "fta": 3},
            lambda f: f.made_attempted("ftm", "fta", GAME_FT),
            "ftm_gt_fta",
            id="ftm>fta",
        ),
        pytest.param(
            {"ftm": 1681, "fta": 2000},
            lambda f: f.made_attempted("ftm", "fta", SEASON_FT),
            "implausible_ftm",
            id="season-ftm",
        ),
        pytest.param(
            {"g": 177}, lambda f: f.within("g", bounds.SEASON_GAMES), "implausible_games", id="games"
        ),
        pytest.param(
            {"g": -1}, lambda f: f.within("g", bounds.SEASON_GAMES), "negative_count", id="neg-games"
        ),
        pytest.param(
            {"m": 10**30},
            lambda f: f.opt_within("m", bounds.SEASON_MINUTES),
            "implausible_minutes",
            id="minutes",
        ),
        pytest.param(
            {"player_id": 2**63}, lambda f: f.within("player_id", bounds.PLAYER_ID), "bad_value", id="id-2^63"
        ),
        pytest.param({"season": 2101}, lambda f: f.within("season", bounds.SEASON), "bad_value", id="season"),
        pytest.param({"age": 200}, lambda f: f.opt_within("age", bounds.AGE), "bad_value", id="age"),
        pytest.param(
            {"id": "\u0663\u0668\u0660\u0665"}, lambda f: f.numeric_id("id"), "bad_value", id="arabic"
        ),
        pytest.param({"id": "\u00b2"}, lambda f: f.numeric_id("id"), "bad_value", id="superscript"),
        pytest.param({"id": "3805\n"}, lambda f: f.numeric_id("id"), "bad_value", id="newline"),
        pytest.param({"id": "+3805"}, lambda f: f.numeric_id("id"), "bad_value", id="sign"),
        pytest.param({"id": "0"}, lambda f: f.numeric_id("id"), "bad_value", id="zero"),
        pytest.param({"id": "9223372036854775808"}, lambda f: f.numeric_id("id"), "bad_value", id="id>int64"),
        pytest.param({"id": "1" * 5000}, lambda f: f.numeric_id("id"), "bad_value", id="5000-digits"),
        pytest.param({"id": 3805}, lambda f: f.numeric_id("id"), "bad_type", id="id-as-number"),
    ],
)
def test_json_bounds(record: dict[str, Any], read: Read, expected: str) -> None:
    assert reason(record, read) == expected


@pytest.mark.parametrize(
    ("row", "read", "expected"),
    [
        pytest.param(
            {"ftm": "0", "fta": "99999999999999999999"},
            lambda f: f.made_attempted("ftm", "fta", GAME_FT),
            "implausible_fta",
            id="game-fta-huge",
        ),
        pytest.param(
            {"ft": "1681", "fta": "1700"},
            lambda f: f.made_attempted("ft", "fta", SEASON_FT),
            "implausible_ftm",
            id="season-ft-names-the-quantity",
        ),
        pytest.param({"g": "177"}, lambda f: f.within("g", bounds.SEASON_GAMES), "implausible_games", id="g"),
        pytest.param(
            {"season": "1946"}, lambda f: f.within("season", bounds.SEASON), "bad_season", id="1946"
        ),
        pytest.param(
            {"player_id": "9000000000"},
            lambda f: f.opt_within("player_id", bounds.DATA_PLAYER_ID),
            "bad_player_id",
            id="derived-id-range",
        ),
        pytest.param({"game_id": "12a"}, lambda f: f.numeric_id("game_id"), "bad_game_id", id="game-id"),
    ],
)
def test_csv_bounds(row: dict[str, str], read: Read, expected: str) -> None:
    assert reason(row, read, CSV) == expected


def test_values_at_their_bounds_pass() -> None:
    f = Fields({"ftm": 50, "fta": 50, "id": " 0021300001 ", "season": 1947, "player_id": 2**63 - 1})
    assert f.made_attempted("ftm", "fta", GAME_FT) == (50, 50)
    assert f.within("season", bounds.SEASON) == 1947
    assert f.within("player_id", bounds.PLAYER_ID) == 2**63 - 1
    assert Fields({"id": " 0021300001 "}, dialect=CSV).numeric_id("id") == "0021300001"
    assert Fields({"n": None}).opt_within("n", bounds.AGE) is None


def test_a_rejection_carries_the_record_key() -> None:
    f = Fields({"ftm": 1, "fta": 2**63}, "box score 7 player 3", key="7/3")
    with pytest.raises(ValidationError) as failure:
        f.made_attempted("ftm", "fta", GAME_FT)
    assert (failure.value.reason, failure.value.key) == ("implausible_fta", "7/3")
    assert (
        str(failure.value)
        == "box score 7 player 3: fta=9223372036854775808 is above its plausible maximum 50"
    )
    assert Fields({}).error("x", "y").key is None
    with pytest.raises(ValidationError) as not_object:
        Fields([], "box score 7", key="7")
    assert not_object.value.key == "7"
