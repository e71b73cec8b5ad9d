"""The read API (``scorebeater/admin/read_api.py``) on every storage backend: list orders,
filters and cursor paging (every row exactly once, in order), CSV with ``Link: rel="next"``,
a player's view, outcomes, and 400s naming the parameter. Every JSON answer is validated
against ``openapi.yaml``. Storage batches are 64 rows, so every read streams several."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import aiohttp
import pyarrow as pa
import pytest
import yaml
from aiohttp.test_utils import TestServer, make_mocked_request
from openapi_schema_validator import OAS30Validator

from scorebeater.admin.app import create_app
from scorebeater.admin.read_api import _csv, _csv_cell, _csv_column
from scorebeater.storage.base import PREDICTIONS_SCHEMA, Storage, conform
from scorebeater.testing.admin import storage_only_state
from tests.contract.test_storage import T0, features, grid, outcomes, predictions

SEASON = 2014
PLAYERS = [97 * k + j for k in range(5) for j in range(1, 31)]
"""150 players: several storage batches of 64, probability ties (ids 100 apart), and inputs
within their bounds (``features`` grows them with ``id % 97``)."""
SHORT = set(PLAYERS[-11:])
"""Players with one prediction only (no previous one: change is null)."""


def _probability(player: int, seq: int) -> float:
    return ((player * 37) % 100) / 100 * 0.9 + seq / 1000 + (0.05 if player % 3 == 0 and seq == 3 else 0.0)


def _seqs(player: int) -> list[int]:
    return [3] if player in SHORT else [1, 2, 3]


def _predictions(role: str = "champion", shift: float = 0.0, version: int = 1) -> pa.Table:
    keys = [(p, SEASON, s, version) for p in PLAYERS for s in _seqs(p)]
    table = predictions(keys, role=role)
    probs = pa.array([min(1.0, _probability(k[0], k[2]) + shift) for k in keys], pa.float64())
    table = table.set_column(table.schema.get_field_index("probability"), "probability", probs)
    return conform(table, PREDICTIONS_SCHEMA, "test")


def _expected() -> dict[int, dict[str, Any]]:
    """Every player's expected item (the fields the test computes independently)."""
    latest = {
        r["player_id"]: r
        for r in features(grid(PLAYERS, [SEASON], [1, 2, 3])).to_pylist()
        if r["as_of_seq"] == 3
    }
    out = {}
    for p in PLAYERS:
        seqs = _seqs(p)
        prob = _probability(p, seqs[-1])
        change = None if len(seqs) < 2 else prob - _probability(p, seqs[-2])
        f = latest[p]
        out[p] = {
            "player_id": p,
            "player": f["player"],
            "team": f["team"],
            "probability": prob,
            "change": change,
            "ftm": round(f["ftm"]),
            "prev_ftm": round(f["prev_ftm"]),
            "team_games": round(f["team_games"]),
            "as_of_seq": 3,
            "outcome": {"beat": p % 4 == 0, "resolution": "final"} if p % 2 == 0 else None,
        }
    return out


EXPECTED = _expected()


def _order_key(order: str) -> Any:
    def key(p: int) -> tuple[float, float, int]:
        e = EXPECTED[p]
        if order == "probability":
            return (0, e["probability"], p)
        if order == "-probability":
            return (0, -e["probability"], p)
        if order == "player":
            return (0, 0, p)
        if e["change"] is None:
            return (1, 0, p)
        return (0, e["change"] if order == "change" else -e["change"], p)

    return key


# --- the app --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Api:
    url: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
        async with self.session.get(self.url + path, headers=headers) as resp:
            if resp.content_type == "application/json":
                body = await resp.json()
            else:
                assert resp.content_type == "text/csv", resp.content_type
                body = await resp.text()
            return resp.status, body, dict(resp.headers)


SPEC = yaml.safe_load(resources.files("scorebeater.admin").joinpath("openapi.yaml").read_text("utf-8"))


def _documented(path: str, status: int, body: Any) -> None:
    """Validate a JSON answer against the document's schema for the path and status."""
    response = SPEC["paths"][path]["get"]["responses"][str(status)]
    schema = {**response["content"]["application/json"]["schema"], "components": SPEC["components"]}
    OAS30Validator(schema).validate(body)


@pytest.fixture(name="api")
async def _api(storage: Storage) -> AsyncIterator[Api]:
    await storage.write_features(features(grid(PLAYERS, [SEASON], [1, 2, 3])))
    await storage.write_features(features(grid([900], [SEASON - 1], [5])))  # another season
    await storage.write_predictions(_predictions())
    await storage.write_predictions(
        _predictions("challenger", shift=0.01, version=2).filter(
            pa.array([True] * 20 + [False] * (len(_predictions()) - 20))
        )
    )
    await storage.write_outcomes(outcomes([(p, SEASON, p % 4 == 0, "final") for p in PLAYERS if p % 2 == 0]))
    state = storage_only_state(storage)
    server = TestServer(create_app(state), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Api(f"http://127.0.0.1:{server.port}", session)
    finally:
        await server.close()


async def _all_pages(api: Api, query: str) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        path = f"/v1/predictions?{query}" + (f"&cursor={cursor}" if cursor else "")
        status, body, _ = await api.get(path)
        assert status == 200, body
        _documented("/v1/predictions", 200, body)
        items += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 100


def _check_item(item: dict[str, Any]) -> None:
    e = EXPECTED[item["player_id"]]
    for name in ("player", "team", "ftm", "prev_ftm", "team_games", "as_of_seq", "outcome"):
        assert item[name] == e[name], (name, item, e)
    assert item["probability"] == pytest.approx(e["probability"])
    if e["change"] is None:
        assert item["change"] is None
    else:
        assert item["change"] == pytest.approx(e["change"])
    assert item["model_version"] == 1
    assert item["as_of_time"] == (T0 + dt.timedelta(days=3)).isoformat()


# --- lists ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "limit"),
    [("-probability", 13), ("probability", 40), ("player", 64), ("change", 29), ("-change", 1000)],
)
async def test_every_order_pages_every_row_exactly_once_in_order(api: Api, order: str, limit: int) -> None:
    items, pages = await _all_pages(api, f"season={SEASON}&order={order}&limit={limit}")
    assert pages == math.ceil(len(PLAYERS) / limit)
    assert [i["player_id"] for i in items] == sorted(PLAYERS, key=_order_key(order))
    for item in items:
        _check_item(item)


@pytest.mark.parametrize("order", ["player", "-probability"])  # the storage's page; the streamed path
async def test_an_item_counts_as_of_its_prediction_while_a_newer_game_waits(
    api: Api, storage: Storage, order: str
) -> None:
    waiting = PLAYERS[:40:7]
    newer = features(grid(waiting, [SEASON], [4]), bump=2.0)  # every count moves: ftm too
    await storage.write_features(newer)  # the features stage ran; its predictions are not stored yet
    items, _ = await _all_pages(api, f"season={SEASON}&order={order}&limit=50")
    by_player = {i["player_id"]: i for i in items}
    for p in waiting:
        assert by_player[p]["as_of_seq"] == 3
        assert by_player[p]["ftm"] == EXPECTED[p]["ftm"]  # seq 3's, not seq 4's
        assert by_player[p]["team_games"] == EXPECTED[p]["team_games"]
    assert all(round(r["ftm"]) != EXPECTED[r["player_id"]]["ftm"] for r in newer.to_pylist())
    # Once the prediction at seq 4 is stored, the item moves to it, counts and all.
    await storage.write_predictions(predictions([(p, SEASON, 4, 1) for p in waiting]))
    items, _ = await _all_pages(api, f"season={SEASON}&order={order}&limit=50")
    by_player = {i["player_id"]: i for i in items}
    for row in newer.to_pylist():
        assert by_player[row["player_id"]]["as_of_seq"] == 4
        assert by_player[row["player_id"]]["ftm"] == round(row["ftm"])


async def test_default_order_and_limit(api: Api) -> None:
    status, body, _ = await api.get(f"/v1/predictions?season={SEASON}")
    assert status == 200
    assert body["order"] == "-probability"
    assert body["season"] == SEASON
    assert len(body["items"]) == 100
    assert body["next_cursor"] is not None


async def test_filters_combine_and_page(api: Api) -> None:
    query = f"season={SEASON}&team=bos&player=%C3%BCN%C3%8Fcode%201&min_probability=0.3&limit=4"
    items, _ = await _all_pages(api, query)
    expected = sorted(
        (
            p
            for p, e in EXPECTED.items()
            if e["team"] == "BOS" and "ünïcode 1" in e["player"].lower() and e["probability"] >= 0.3
        ),
        key=_order_key("-probability"),
    )
    assert expected
    assert [i["player_id"] for i in items] == expected


async def test_player_order_is_the_same_through_the_filtered_path(api: Api) -> None:
    """``order=player`` without filters is the storage's ordered page read; with a filter that
    keeps every row it is the streamed selection: both list the same items."""
    plain, _ = await _all_pages(api, f"season={SEASON}&order=player&limit=33")
    filtered, _ = await _all_pages(api, f"season={SEASON}&order=player&limit=33&min_probability=0")
    assert plain == filtered
    assert [i["player_id"] for i in plain] == PLAYERS


async def test_a_filter_matching_nothing_is_an_empty_page(api: Api) -> None:
    status, body, _ = await api.get(f"/v1/predictions?season={SEASON}&team=NYK")
    assert (status, body["items"], body["next_cursor"]) == (200, [], None)
    status, body, _ = await api.get(f"/v1/predictions?season={SEASON + 1}")
    assert (status, body["items"]) == (200, [])


async def test_challenger_role(api: Api) -> None:
    items, _ = await _all_pages(api, f"season={SEASON}&role=challenger&order=player")
    # The first 20 rows were written as the challenger's: players 1..6 (3 each) and 7 (seqs 1, 2).
    assert [i["player_id"] for i in items] == list(range(1, 8))
    assert items[-1]["as_of_seq"] == 2
    assert items[0]["probability"] == pytest.approx(EXPECTED[1]["probability"] + 0.01)


async def test_csv_pages_through_link_headers(api: Api) -> None:
    path: str | None = f"/v1/predictions?season={SEASON}&order=player&limit=60"
    rows: list[dict[str, str]] = []
    while path is not None:
        status, text, headers = await api.get(path, Accept="text/csv")
        assert status == 200
        reader = csv.DictReader(io.StringIO(text))
        assert reader.fieldnames == [
            "player_id",
            "player",
            "team",
            "probability",
            "change",
            "ftm",
            "prev_ftm",
            "team_games",
            "season_games",
            "progress",
            "as_of_seq",
            "as_of_time",
            "model_version",
            "outcome_beat",
            "outcome_resolution",
        ]
        rows += list(reader)
        link = headers.get("Link")
        path = None if link is None else link.split(">", 1)[0].lstrip("<")
        assert link is None or link.endswith('; rel="next"')
    assert [int(r["player_id"]) for r in rows] == list(PLAYERS)
    first = rows[0]
    assert first["player"] == EXPECTED[1]["player"]
    assert first["outcome_beat"] == ""
    assert rows[1]["outcome_beat"] == "false"
    assert rows[3]["outcome_beat"] == "true"
    assert rows[-1]["change"] == ""


# --- players and outcomes ---------------------------------------------------------------------------


async def test_player_view(api: Api) -> None:
    status, body, _ = await api.get("/v1/players/4")
    assert status == 200, body
    _documented("/v1/players/{player_id}", 200, body)
    assert body["player"] == EXPECTED[4]["player"]
    assert body["names"] == [EXPECTED[4]["player"]]
    assert body["teams"] == ["LAL"]
    assert body["seasons"] == [SEASON]
    assert body["season"] == SEASON
    assert [h["as_of_seq"] for h in body["history"]] == [1, 2, 3]
    assert [h["probability"] for h in body["history"]] == pytest.approx(
        [_probability(4, s) for s in (1, 2, 3)]
    )
    assert body["history"][-1]["ftm"] == EXPECTED[4]["ftm"]
    assert body["outcome"]["beat"] is True
    assert body["outcome"]["resolution"] == "final"
    status, body, _ = await api.get("/v1/players/900")
    _documented("/v1/players/{player_id}", 200, body)
    assert (status, body["season"], body["history"], body["outcome"]) == (200, SEASON - 1, [], None)


@pytest.mark.parametrize("path", ["/v1/players/12345", f"/v1/players/4?season={SEASON - 1}"])
async def test_unknown_player_or_season_is_404(api: Api, path: str) -> None:
    status, body, _ = await api.get(path)
    assert status == 404, body
    assert body["error"]["code"] == "not_found"


async def test_outcomes_page_in_player_order_and_csv(api: Api) -> None:
    got: list[dict[str, Any]] = []
    cursor = None
    while True:
        status, body, _ = await api.get(
            f"/v1/outcomes?season={SEASON}&limit=16" + (f"&cursor={cursor}" if cursor else "")
        )
        assert status == 200, body
        _documented("/v1/outcomes", 200, body)
        got += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [o["player_id"] for o in got] == [p for p in PLAYERS if p % 2 == 0]
    assert got[0]["player"] == EXPECTED[2]["player"]
    assert got[0]["beat"] is False
    status, text, headers = await api.get(f"/v1/outcomes?season={SEASON}&limit=5", Accept="text/csv")
    assert status == 200
    assert 'rel="next"' in headers["Link"]
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][:3] == ["player_id", "player", "season"]
    assert len(lines) == 6


def test_csv_cells_that_could_start_a_formula_are_quoted() -> None:
    """CSV injection: a string cell starting with = + - @ tab or CR gets a leading ', as OWASP
    recommends; numbers (a negative change too), booleans and empty cells are left as they are."""
    request = make_mocked_request("GET", f"/v1/predictions?season={SEASON}")
    header = ["player", "team", "change", "probability", "beat"]
    rows: list[list[object]] = [
        ["=HYPERLINK(A1)", "-X", -0.25, 0.5, True],
        ["@SUM(A1)", "+1", None, 0.1, False],
        ["\tTab", "\rCR", -1, 0.2, None],
        ["O'Neal = fine", "", 0.0, 0.3, None],
    ]
    response = _csv(request, header, rows, None)
    assert response.text is not None
    lines = list(csv.reader(io.StringIO(response.text)))
    assert lines[0] == header
    assert lines[1] == ["'=HYPERLINK(A1)", "'-X", "-0.25", "0.5", "true"]
    assert lines[2] == ["'@SUM(A1)", "'+1", "", "0.1", "false"]
    assert lines[3] == ["'\tTab", "'\rCR", "-1", "0.2", ""]
    assert lines[4] == ["O'Neal = fine", "", "0.0", "0.3", ""]
    assert float(lines[1][2]) == -0.25  # a negative change is still a number


def test_listing_csv_cells_are_made_column_by_column_as_cell_by_cell() -> None:
    """The listing's vectorised cells (``_csv_column``) are ``_csv_cell``'s, formula guard too."""
    columns = [
        pa.array(["=HYPERLINK(A1)", "-X", "@SUM(A1)", "+1", "\tTab", "\rCR", "O'Neal = fine", "", None]),
        pa.array([True, False, None, True, False, None, True, False, None]),
        pa.array([-0.25, None, 0.0, 1.0, 0.1, -1.0, 2.5, 0.3, None]),
        pa.array([1, 2, None, 4, 5, 6, 7, 8, 9], pa.int64()),
    ]
    for column in columns:
        expected = [_csv_cell(v) for v in column.to_pylist()]
        assert [("" if v is None else v) for v in _csv_column(column)] == expected


# --- bad parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("", "season"),
        ("season=abc", "season"),
        (f"season={SEASON}&order=name", "order"),
        (f"season={SEASON}&team=BOSTON", "team"),
        (f"season={SEASON}&team=B0S", "team"),
        (f"season={SEASON}&min_probability=1.5", "min_probability"),
        (f"season={SEASON}&min_probability=nan", "min_probability"),
        (f"season={SEASON}&min_probability=1e-3", "min_probability"),
        (f"season={SEASON}&limit=0", "limit"),
        (f"season={SEASON}&limit=1001", "limit"),
        (f"season={SEASON}&cursor=garbage", "cursor"),
        (f"season={SEASON}&cursor=eyJrIjpbMCwwLCJ4Il19", "cursor"),
        (f"season={SEASON}&role=boss", "role"),
        (f"season={SEASON}&player=", "player"),
        (f"season={SEASON}&colour=red", "colour"),
    ],
)
async def test_bad_parameters_are_400_naming_them(api: Api, query: str, param: str) -> None:
    status, body, _ = await api.get(f"/v1/predictions?{query}")
    assert status == 400, body
    assert body["error"]["param"] == param
    _documented("/v1/predictions", 400, body)


async def test_a_cursor_of_other_filters_or_order_is_refused(api: Api) -> None:
    _, body, _ = await api.get(f"/v1/predictions?season={SEASON}&limit=5")
    cursor = body["next_cursor"]
    for other in ("order=player", "team=BOS", "role=challenger", "min_probability=0.1"):
        status, body, _ = await api.get(f"/v1/predictions?season={SEASON}&limit=5&{other}&cursor={cursor}")
        assert (status, body["error"]["param"]) == (400, "cursor")
    status, body, _ = await api.get(f"/v1/outcomes?season={SEASON}&cursor={cursor}")
    assert (status, body["error"]["param"]) == (400, "cursor")


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/outcomes", "season"),
        (f"/v1/outcomes?season={SEASON}&limit=x", "limit"),
        ("/v1/players/0", "player_id"),
        ("/v1/players/4?season=1800", "season"),
    ],
)
async def test_bad_parameters_of_players_and_outcomes(api: Api, path: str, param: str) -> None:
    status, body, _ = await api.get(path)
    assert (status, body["error"]["param"]) == (400, param)
