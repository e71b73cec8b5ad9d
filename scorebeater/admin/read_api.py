"""The admin API's read side: a season's predictions, a player, a season's outcomes (JSON or CSV).

``GET /v1/predictions?season=S`` lists every player's latest prediction of one role with his
name, team, counts so far and outcome; ``GET /v1/players/{id}`` gives a player's names,
teams, seasons and one season's prediction history; ``GET /v1/outcomes?season=S`` lists a
season's outcomes. ``openapi.yaml`` documents the parameters and fields.

Memory: nothing here holds a season's rows (the object stores' full scans do hold the key
columns of the season's segments while they pick each player's latest row). Two ways to a page:

* ``order=player`` without ``team``/``player``/``min_probability``: the storage's ordered page
  read, :meth:`~scorebeater.storage.base.Storage.read_latest_predictions_page`, which returns
  the rows after the cursor's player id with each one's previous probability (for
  ``change``), the feature row it was made from (name, team, counts: never a newer game's
  beside an older game's probability) and outcome. O(limit) on every
  backend: on Postgres one statement of index probes; on the object stores the Parquet row
  groups whose ``player_id`` statistics reach the page's id range (see
  ``bench/README.md``'s ``bench_read_api`` for the rates against a raw scan).
* Any other order or filter: the season's latest predictions are streamed in batches of
  ``storage.batch_rows`` and only the ``limit + 1`` first rows after the cursor in the
  requested order are kept (a merge of the held rows with each batch's), so a page holds
  O(limit + batch) rows; the page players' previous predictions come from one streamed pass
  over the season's prediction history, filtered to them. O(season) time per page, on every
  backend: listing a whole season page by page this way is quadratic in its size. The page's
  players are then joined with their latest feature rows (``read_latest_features(player_ids=
  ...)``) and outcomes (``read_outcomes(player_ids=...)``): index lookups on Postgres, a
  filtered pass over the season's latest rows on the object stores. A player whose latest
  feature row is newer than his prediction (its game's prediction not stored yet) gets the
  row the prediction was made from instead (``read_features_at``: a probe each on Postgres,
  a filtered pass over the season's feature history on the object stores, only then).

A page's JSON or CSV is built column by column (Arrow kernels, then one Python list per
field), not field by field. What adds memory beyond the page:

* ``team=``/``player=`` filters first collect the matching player ids (8 bytes per matching
  player) from the season's latest feature rows;
* ``order=change``/``-change`` needs every player's change before it can order: it keeps the
  two latest prediction points of every player of the season (about 64 bytes per player, no
  other column) while streaming the history.

Cursors are opaque: base64url JSON of the order, the sort key of the page's last row and its
player id, and a hash of the filters (a cursor used with other filters or another order is a
400 naming ``cursor``). Paging is by key, so a page never repeats or skips a row that did not
change in between; a row whose probability changes while a client pages in probability order
may be seen twice or not at all (the stored state moved under it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import csv
import dataclasses
import hashlib
import io
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from scorebeater.bounds import PLAYER_ID, SEASON
from scorebeater.errors import StorageError, StorageUnavailable
from scorebeater.httpsurface import ApiError, int_param, json_response, query_params, shown
from scorebeater.storage.base import PAGE_PLAYER_COLUMNS, PAGE_SCHEMA, PREDICTION_ROLES

if TYPE_CHECKING:
    from scorebeater.admin.app import AdminState

ORDERS = ("probability", "-probability", "player", "change", "-change")
"""``order=``: by probability (ascending, or descending with ``-``), by player id, or by change
(players without a previous prediction last, either way). Ties go by player id."""
DEFAULT_ORDER = "-probability"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_NAME_QUERY = 100
_TEAM = re.compile(r"[A-Za-z]{2,4}")  # the data has GS, NY, SA, UTAH, ...
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

PREDICTION_FIELDS = (
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
)
"""An item's fields in CSV column order; ``outcome`` follows as ``outcome_beat``, ``outcome_resolution``."""
OUTCOME_FIELDS = (
    "player_id",
    "player",
    "season",
    "beat",
    "resolution",
    "resolved_seq",
    "resolved_at",
    "resolved_early_seq",
    "resolved_early_at",
    "ftm",
    "prev_ftm",
)
COUNTS = ("ftm", "prev_ftm", "team_games", "season_games")
"""Feature columns shown as integers (stored as float32 model inputs)."""
_PAGE_COLUMNS = ("player_id", "as_of_seq", "as_of_time", "model_version", "probability", "progress")


def _iso(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", message, param=param)


def _storage_failed(exc: StorageError) -> ApiError:
    code = "storage_unavailable" if isinstance(exc, StorageUnavailable) else "storage_error"
    return ApiError(503, code, f"storage: {exc}")


def _season(request: web.Request, *, required: bool) -> int | None:
    raw = request.query.get("season")
    if raw is None:
        if required:
            raise _bad("season", "season is required (?season=S, the season's end year)")
        return None
    return int_param(raw, "season", lo=SEASON.lo, hi=SEASON.hi)


def _probability_param(raw: str, name: str) -> float:
    """A plain decimal in 0..1 (no exponent, sign, ``nan`` or ``inf``)."""
    if _DECIMAL.fullmatch(raw) is None or not 0.0 <= float(raw) <= 1.0:
        raise _bad(name, f"{name} must be a decimal number in 0..1, got {shown(raw)}")
    return float(raw)


def _wants_csv(request: web.Request) -> bool:
    """Whether ``Accept`` prefers ``text/csv`` to ``application/json``: each one's quality is
    that of its most specific media range (``text/csv``, then ``text/*``, then ``*/*``; 0 if
    none names it); a tie goes to the one whose range comes first, and JSON is the default.
    A malformed quality counts as 1, as if it were absent."""
    ranges: dict[str, tuple[float, int]] = {}
    for index, part in enumerate(request.headers.get("Accept", "").split(",")):
        media, *params = (p.strip().lower() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q" and _QUALITY.fullmatch(value.strip()):
                q = float(value)
        ranges.setdefault(media, (q, index))

    def preference(kind: str, family: str) -> tuple[float, int]:
        for media in (kind, f"{family}/*", "*/*"):
            if media in ranges:
                q, index = ranges[media]
                return q, -index
        return 0.0, 0

    csv_q, json_q = preference("text/csv", "text"), preference("application/json", "application")
    return csv_q[0] > 0 and csv_q > json_q


_QUALITY = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
"""RFC 9110's qvalue: 0 to 1 with at most three decimals."""


# --- cursors --------------------------------------------------------------------------------------

Key = tuple[float, float, int]
"""A row's position in an order: (nulls-last flag, signed value, player id), compared as a tuple."""


def _filter_hash(*parts: object) -> str:
    return hashlib.blake2b(orjson.dumps(list(parts)), digest_size=8).hexdigest()


def encode_cursor(order: str, key: Key, filters: str) -> str:
    """The opaque cursor after the row at ``key`` (base64url JSON, unpadded)."""
    raw = orjson.dumps({"o": order, "k": [key[0], key[1], key[2]], "f": filters})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(raw: str, order: str, filters: str) -> Key:
    """The key a cursor of :func:`encode_cursor` holds.

    Raises:
        ApiError: 400 naming ``cursor``: not one of ours, or made for another order or filters.
    """
    body: Any = None
    with contextlib.suppress(ValueError, binascii.Error, orjson.JSONDecodeError):
        # Ours are about 100 characters.
        if len(raw) <= 512 and raw.isascii():  # noqa: PLR2004
            body = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    key = body.get("k") if isinstance(body, dict) else None
    if (
        not isinstance(key, list)
        or len(key) != 3  # noqa: PLR2004
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in key)
        or not isinstance(key[2], int)
        or not all(np.isfinite(key[:2]))
        # A tampered id out of the stored range would overflow the storage's int64 filters.
        or not PLAYER_ID.lo - 1 <= key[2] <= PLAYER_ID.hi
    ):
        raise _bad("cursor", f"cursor is not a cursor this API returned: {shown(raw)}")
    same = body.get("o") == order and body.get("f") == filters
    if not same:
        raise _bad("cursor", "cursor belongs to another order or other filters: start again without it")
    return float(key[0]), float(key[1]), int(key[2])


# --- bounded selection ------------------------------------------------------------------------------


def _keys(order: str, probability: np.ndarray, change: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (flag, value) sort columns of ``order`` (player id comes third)."""
    zeros = np.zeros(len(probability))
    if order == "probability":
        return zeros, probability
    if order == "-probability":
        return zeros, -probability
    if order == "player":
        return zeros, zeros
    missing = np.isnan(change)
    value = np.where(missing, 0.0, change)
    return missing.astype(np.float64), (value if order == "change" else -value)


def _after(a: np.ndarray, b: np.ndarray, p: np.ndarray, key: Key) -> np.ndarray:
    """Mask of the rows strictly after ``key`` in (a, b, p) order."""
    ka, kb, kp = key
    mask: np.ndarray = (a > ka) | ((a == ka) & ((b > kb) | ((b == kb) & (p > kp))))
    return mask


@dataclass
class TopRows:
    """The first ``size`` rows in (``_a``, ``_b``, ``player_id``) order of everything offered."""

    size: int
    held: pa.Table | None = None

    def offer(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        table = rows if self.held is None else pa.concat_tables([self.held, rows])
        if table.num_rows > self.size:
            order = np.lexsort(
                (
                    table.column("player_id").to_numpy(),
                    table.column("_b").to_numpy(),
                    table.column("_a").to_numpy(),
                )
            )
            table = table.take(pa.array(order[: self.size]))
        self.held = table.combine_chunks()

    def sorted(self) -> pa.Table | None:
        if self.held is None:
            return None
        order = np.lexsort(
            (
                self.held.column("player_id").to_numpy(),
                self.held.column("_b").to_numpy(),
                self.held.column("_a").to_numpy(),
            )
        )
        return self.held.take(pa.array(order))


# --- change: each player's previous prediction -----------------------------------------------------


class LastTwo:
    """Per player, his latest prediction point and the latest one before its ``as_of_seq``.

    Rows are offered batch by batch in any order; the state holds at most two rows per player
    offered (``player_id``, ``as_of_seq``, ``model_version``, ``probability``).
    """

    def __init__(self) -> None:
        self._state: pa.Table | None = None

    def offer(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        rows = rows.select(["player_id", "as_of_seq", "model_version", "probability"])
        table = rows if self._state is None else pa.concat_tables([self._state, rows])
        pid = table.column("player_id").to_numpy()
        seq = table.column("as_of_seq").to_numpy().astype(np.int64)
        ver = table.column("model_version").to_numpy()
        order = np.lexsort((-ver, -seq, pid))
        pid_s, seq_s = pid[order], seq[order]
        start = np.ones(len(order), dtype=bool)
        start[1:] = pid_s[1:] != pid_s[:-1]
        group = np.cumsum(start) - 1
        before = np.flatnonzero(seq_s < seq_s[start][group])
        first_before = before[np.r_[True, group[before][1:] != group[before][:-1]]] if len(before) else before
        keep = np.sort(np.concatenate([order[start], order[first_before]]))
        self._state = table.take(pa.array(keep)).combine_chunks()

    def changes(self) -> tuple[np.ndarray, np.ndarray]:
        """Player ids (ascending) and their change: latest minus previous probability (NaN: none)."""
        if self._state is None:
            return np.empty(0, dtype=np.int64), np.empty(0)
        state = self._state
        pid = state.column("player_id").to_numpy()
        seq = state.column("as_of_seq").to_numpy().astype(np.int64)
        ver = state.column("model_version").to_numpy()
        prob = state.column("probability").to_numpy()
        order = np.lexsort((-ver, -seq, pid))
        pid_s, prob_s = pid[order], prob[order]
        start = np.ones(len(order), dtype=bool)
        start[1:] = pid_s[1:] != pid_s[:-1]
        ids = pid_s[start]
        change = np.full(len(ids), np.nan)
        # The second row of a player's group (if any) is his previous point.
        second = np.flatnonzero(~start)
        group = np.cumsum(start) - 1
        change[group[second]] = prob_s[second - 1] - prob_s[second]
        return ids, change


def _lookup(ids: np.ndarray, values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``values`` of ``wanted`` ids in the ascending ``ids`` (NaN where absent)."""
    out = np.full(len(wanted), np.nan)
    if not len(ids):
        return out
    at = np.clip(np.searchsorted(ids, wanted), 0, len(ids) - 1)
    found = ids[at] == wanted
    out[found] = values[at[found]]
    return out


# --- the routes -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    season: int
    order: str
    team: str | None
    player: str | None
    min_probability: float | None
    limit: int
    role: str
    after: Key | None

    @property
    def by_player_id(self) -> bool:
        """Player order without filters: the storage's ordered page read serves it."""
        return (
            self.order == "player"
            and self.team is None
            and self.player is None
            and self.min_probability is None
        )

    @property
    def filters(self) -> str:
        return _filter_hash(self.season, self.order, self.team, self.player, self.min_probability, self.role)


def _list_query(request: web.Request) -> ListQuery:
    query_params(request, ("season", "order", "team", "player", "min_probability", "limit", "cursor", "role"))
    season = _season(request, required=True)
    assert season is not None  # noqa: S101 - required
    order = request.query.get("order", DEFAULT_ORDER)
    if order not in ORDERS:
        raise _bad("order", f"order must be one of {', '.join(ORDERS)}, got {shown(order)}")
    team = request.query.get("team")
    if team is not None:
        if _TEAM.fullmatch(team) is None:
            raise _bad("team", f"team must be a team code of 2-4 letters, got {shown(team)}")
        team = team.upper()
    player = request.query.get("player")
    if player is not None and not 1 <= len(player) <= MAX_NAME_QUERY:
        raise _bad("player", f"player must be 1..{MAX_NAME_QUERY} characters of a name")
    raw_min = request.query.get("min_probability")
    min_probability = None if raw_min is None else _probability_param(raw_min, "min_probability")
    limit = int_param(request.query.get("limit", str(DEFAULT_LIMIT)), "limit", lo=1, hi=MAX_LIMIT)
    role = request.query.get("role", "champion")
    if role not in PREDICTION_ROLES:
        raise _bad("role", f"role must be one of {', '.join(PREDICTION_ROLES)}, got {shown(role)}")
    query = ListQuery(season, order, team, player, min_probability, limit, role, None)
    cursor = request.query.get("cursor")
    if cursor is None:
        return query
    return dataclasses.replace(query, after=decode_cursor(cursor, order, query.filters))


async def _aclosed(gen: AsyncGenerator[pa.Table, None]) -> AsyncGenerator[pa.Table, None]:
    async with contextlib.aclosing(gen):
        async for table in gen:
            yield table


MAX_CONCURRENT_READS = 4
"""Read requests served at once (each may stream a season from storage)."""
READ_QUEUE_S = 10.0
"""How long a read request waits for a slot before a 503."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ReadRoutes:
    """The read endpoints over one daemon's :class:`~scorebeater.admin.app.AdminState`."""

    def __init__(self, state: AdminState) -> None:
        self._state = state
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_READS)

    @property
    def _storage(self) -> Any:
        return self._state.ctx.storage

    def register(self, app: web.Application) -> None:
        app.router.add_get("/v1/predictions", self._bounded(self.list_predictions))
        app.router.add_get(r"/v1/players/{player_id}", self._bounded(self.get_player))
        app.router.add_get("/v1/outcomes", self._bounded(self.list_outcomes))

    def _bounded(self, handler: Handler) -> Handler:
        """``handler`` run by at most :data:`MAX_CONCURRENT_READS` requests at once.

        These endpoints are open and a page may stream a whole season from storage, on the
        loop the stages run on: past the bound a request waits :data:`READ_QUEUE_S` for a
        slot, then gets a 503 with ``Retry-After`` instead of piling up.
        """

        async def bounded(request: web.Request) -> web.StreamResponse:
            try:
                await asyncio.wait_for(self._slots.acquire(), READ_QUEUE_S)
            except TimeoutError:
                raise ApiError(
                    503,
                    "busy",
                    f"{MAX_CONCURRENT_READS} read requests are running: try again shortly",
                    headers={"Retry-After": "1"},
                ) from None
            try:
                response = await handler(request)
            finally:
                self._slots.release()
            response.headers["Vary"] = "Accept"  # JSON or CSV by the request's Accept: caches must key on it
            return response

        return bounded

    # --- GET /v1/predictions ---

    async def _candidates(self, q: ListQuery) -> np.ndarray | None:
        """Ids of the players whose latest feature row matches ``team``/``player`` (None: no filter)."""
        if q.team is None and q.player is None:
            return None
        found: list[np.ndarray] = []
        async for table in _aclosed(self._storage.read_latest_features(season=q.season)):
            mask = pa.scalar(value=True)
            if q.team is not None:
                mask = pc.and_(mask, pc.equal(pc.utf8_upper(table.column("team")), q.team))
            if q.player is not None:
                mask = pc.and_(mask, pc.match_substring(table.column("player"), q.player, ignore_case=True))
            found.append(table.column("player_id").filter(mask).to_numpy())
        return np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)

    async def _history_changes(
        self, season: int, role: str, wanted: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        last_two = LastTwo()
        value_set = None if wanted is None else pa.array(wanted, pa.int64())
        async for table in _aclosed(self._storage.read_predictions(season=season, role=role)):
            rows = (
                table if value_set is None else table.filter(pc.is_in(table.column("player_id"), value_set))
            )
            last_two.offer(rows)
        return last_two.changes()

    async def _player_page(self, q: ListQuery) -> tuple[pa.Table | None, bool]:
        """``order=player`` without filters: the storage's ordered page read, which carries
        each row's previous probability, feature columns and outcome (O(limit) on every
        backend)."""
        page = await self._storage.read_latest_predictions_page(
            season=q.season,
            after_player_id=None if q.after is None else q.after[2],
            limit=q.limit + 1,
            role=q.role,
        )
        if not page.num_rows:
            return None, False
        more = page.num_rows > q.limit
        page = page.slice(0, q.limit)
        change = pc.subtract(page.column("probability"), page.column("previous_probability"))
        zeros = pa.array(np.zeros(page.num_rows))
        rows = page.select([*_PAGE_COLUMNS, *PAGE_PLAYER_COLUMNS, *_OUTCOME_COLUMNS])
        rows = rows.append_column("change", change)
        return rows.append_column("_a", zeros).append_column("_b", zeros), more

    async def _page(self, q: ListQuery) -> tuple[pa.Table | None, bool]:
        """The page's rows in order (with ``change``), and whether more follow."""
        if q.by_player_id:
            return await self._player_page(q)
        candidates = await self._candidates(q)
        if candidates is not None and not len(candidates):
            return None, False
        changes = None
        if q.order in {"change", "-change"}:
            changes = await self._history_changes(q.season, q.role, candidates)
        value_set = None if candidates is None else pa.array(candidates, pa.int64())
        top = TopRows(q.limit + 1)
        reads = self._storage.read_predictions(season=q.season, latest_only=True, role=q.role)
        async for batch in _aclosed(reads):
            table = batch.select(list(_PAGE_COLUMNS))
            if value_set is not None:
                table = table.filter(pc.is_in(table.column("player_id"), value_set))
            if q.min_probability is not None:
                table = table.filter(pc.greater_equal(table.column("probability"), q.min_probability))
            if not table.num_rows:
                continue
            pid = table.column("player_id").to_numpy()
            change = np.full(len(pid), np.nan) if changes is None else _lookup(*changes, pid)
            a, b = _keys(q.order, table.column("probability").to_numpy(), change)
            table = table.append_column("change", pa.array(change, from_pandas=True))
            table = table.append_column("_a", pa.array(a)).append_column("_b", pa.array(b))
            if q.after is not None:
                table = table.filter(pa.array(_after(a, b, pid, q.after)))
            top.offer(table)
        rows = top.sorted()
        if rows is None:
            return None, False
        more = rows.num_rows > q.limit
        rows = rows.slice(0, q.limit)
        if changes is None:
            ids, change = await self._history_changes(q.season, q.role, rows.column("player_id").to_numpy())
            page_change = _lookup(ids, change, rows.column("player_id").to_numpy())
            index = rows.schema.get_field_index("change")
            rows = rows.set_column(index, "change", pa.array(page_change, from_pandas=True))
        return rows, more

    async def _features(self, season: int, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        if not ids:
            return found
        reads = self._storage.read_latest_features(season=season, player_ids=ids)
        async for table in _aclosed(reads):
            for row in table.select(["player_id", "player", "team", *COUNTS]).to_pylist():
                found[row["player_id"]] = row
        return found

    async def _outcomes(self, season: int, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        if not ids:
            return found
        async for table in _aclosed(self._storage.read_outcomes(season=season, player_ids=ids)):
            for row in table.to_pylist():
                found[row["player_id"]] = row
        return found

    async def _with_players(self, season: int, rows: pa.Table) -> pa.Table:
        """``rows`` with their players' feature columns and outcome (as the storage's page has
        them): index lookups on Postgres, a filtered pass over the season's latest rows on the
        object stores."""
        ids = rows.column("player_id").to_pylist()
        columns = ["player_id", "as_of_seq", *PAGE_PLAYER_COLUMNS]
        features = [
            t.select(columns)
            async for t in _aclosed(self._storage.read_latest_features(season=season, player_ids=ids))
        ]
        if features:
            # Players whose newer game's features wait for their prediction: their counts come
            # from the row the prediction was made from, never a later game's (as on the
            # storage's page). Only they are read again: for the champion, the moment after a
            # game; for the challenger, as long as the shadow lags (see read_features_at).
            latest = pa.concat_tables(features)
            joined = _joined(rows, latest)
            newer = pc.fill_null(
                pc.greater(joined.column("as_of_seq"), rows.column("as_of_seq")), fill_value=False
            )
            behind = rows.filter(newer)
            if behind.num_rows:
                points = dict(
                    zip(
                        behind.column("player_id").to_pylist(),
                        behind.column("as_of_seq").to_pylist(),
                        strict=True,
                    )
                )
                at_points = [
                    t.select(columns)
                    async for t in _aclosed(self._storage.read_features_at(season=season, points=points))
                ]
                keep = pc.invert(pc.is_in(latest.column("player_id"), value_set=behind.column("player_id")))
                features = [latest.filter(keep), *at_points]
        outcomes = [
            t.select(["player_id", "beat", "resolution"]).rename_columns(["player_id", *_OUTCOME_COLUMNS])
            async for t in _aclosed(self._storage.read_outcomes(season=season, player_ids=ids))
        ]
        for found, names in ((features, PAGE_PLAYER_COLUMNS), (outcomes, _OUTCOME_COLUMNS)):
            if found:
                joined = _joined(rows, pa.concat_tables(found))
                for name in names:
                    rows = rows.append_column(name, joined.column(name))
            else:
                for name, kind in zip(names, _NULL_TYPES[names], strict=True):
                    rows = rows.append_column(name, pa.nulls(rows.num_rows, kind))
        return rows

    async def list_predictions(self, request: web.Request) -> web.Response:
        """A page of the season's latest predictions (see the module doc for cost and memory)."""
        q = _list_query(request)
        try:
            rows, more = await self._page(q)
            if rows is not None and not q.by_player_id:
                rows = await self._with_players(q.season, rows)
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        cursor = None
        if more and rows is not None:
            last = (
                rows.column("_a")[-1].as_py(),
                rows.column("_b")[-1].as_py(),
                rows.column("player_id")[-1].as_py(),
            )
            cursor = encode_cursor(q.order, last, q.filters)
        fields = _item_arrays(rows)
        if _wants_csv(request):
            header = [*PREDICTION_FIELDS, *_OUTCOME_COLUMNS]
            lines = zip(*(_csv_column(fields[name]) for name in header), strict=True)
            return _csv(request, header, lines, cursor, cells=True)
        columns = [fields[name].to_pylist() for name in (*PREDICTION_FIELDS, *_OUTCOME_COLUMNS)]
        resolution, beat = columns.pop(), columns.pop()
        outcome = [
            None if b is None else {"beat": b, "resolution": r} for b, r in zip(beat, resolution, strict=True)
        ]
        items = [dict(zip(_ITEM_KEYS, values, strict=True)) for values in zip(*columns, outcome, strict=True)]
        return json_response({"season": q.season, "order": q.order, "items": items, "next_cursor": cursor})

    # --- GET /v1/outcomes ---

    async def list_outcomes(self, request: web.Request) -> web.Response:
        """A page of the season's outcomes in player id order (streamed; O(limit + batch) memory)."""
        query_params(request, ("season", "limit", "cursor"))
        season = _season(request, required=True)
        assert season is not None  # noqa: S101 - required
        limit = int_param(request.query.get("limit", str(DEFAULT_LIMIT)), "limit", lo=1, hi=MAX_LIMIT)
        filters = _filter_hash(season, "outcomes")
        raw_cursor = request.query.get("cursor")
        after = None if raw_cursor is None else decode_cursor(raw_cursor, "player", filters)[2]
        top = TopRows(limit + 1)
        try:
            async for batch in _aclosed(self._storage.read_outcomes(season=season)):
                table = batch
                if after is not None:
                    table = table.filter(pc.greater(table.column("player_id"), after))
                zeros = pa.array(np.zeros(table.num_rows))
                top.offer(table.append_column("_a", zeros).append_column("_b", zeros))
            rows = top.sorted()
            page = [] if rows is None else rows.slice(0, limit).to_pylist()
            names = await self._features(season, [r["player_id"] for r in page])
        except StorageError as exc:
            raise _storage_failed(exc) from exc
        items = [
            {
                **{f: _iso(r[f]) for f in OUTCOME_FIELDS if f != "player"},
                "player": names.get(r["player_id"], {}).get("player", ""),
            }
            for r in page
        ]
        items = [{f: item[f] for f in OUTCOME_FIELDS} for item in items]
        cursor = None
        if rows is not None and rows.num_rows > limit:
            cursor = encode_cursor("player", (0.0, 0.0, page[-1]["player_id"]), filters)
        if _wants_csv(request):
            return _csv(
                request, list(OUTCOME_FIELDS), ([i[f] for f in OUTCOME_FIELDS] for i in items), cursor
            )
        return json_response({"season": season, "items": items, "next_cursor": cursor})

    # --- GET /v1/players/{id} ---

    async def get_player(self, request: web.Request) -> web.Response:
        """A player's names, teams and seasons, and one season's champion history with counts.

        Cost: the season's feature history is streamed once (filtered to him) for his counts at
        each as-of point; memory O(his rows + batch).
        """
        query_params(request, ("season",))
        player_id = int_param(request.match_info["player_id"], "player_id", lo=PLAYER_ID.lo, hi=PLAYER_ID.hi)
        wanted_season = _season(request, required=False)
        try:
            return await self._player(player_id, wanted_season)
        except StorageError as exc:
            raise _storage_failed(exc) from exc

    async def _player(self, player_id: int, wanted_season: int | None) -> web.Response:
        latest: list[dict[str, Any]] = []
        async for table in _aclosed(self._storage.read_latest_features(player_ids=[player_id])):
            latest.extend(table.select(["season", "as_of_seq", "player", "team"]).to_pylist())
        if not latest:
            raise ApiError(404, "not_found", f"unknown player {player_id}: no feature row is stored for him")
        latest.sort(key=lambda r: r["season"])
        seasons = [r["season"] for r in latest]
        season = seasons[-1] if wanted_season is None else wanted_season
        if season not in seasons:
            raise ApiError(404, "not_found", f"player {player_id} has no season {season}; he has {seasons}")
        points: dict[int, dict[str, Any]] = {}
        reads = self._storage.read_predictions(season=season, player_id=player_id, role="champion")
        async for table in _aclosed(reads):
            for row in table.to_pylist():
                held = points.get(row["as_of_seq"])
                if held is None or row["model_version"] > held["model_version"]:
                    points[row["as_of_seq"]] = row
        counts: dict[int, dict[str, Any]] = {}
        one = pa.array([player_id], pa.int64())
        async for table in _aclosed(self._storage.read_feature_history(seasons=[season])):
            mine = table.filter(pc.is_in(table.column("player_id"), one))
            for row in mine.select(["as_of_seq", *COUNTS]).to_pylist():
                counts[row["as_of_seq"]] = row
        outcome = (await self._outcomes(season, [player_id])).get(player_id)
        history = []
        for seq in sorted(points):
            p = points[seq]
            c = counts.get(seq, {})
            history.append(
                {
                    "as_of_seq": seq,
                    "as_of_time": _iso(p["as_of_time"]),
                    "probability": p["probability"],
                    "model_version": p["model_version"],
                    **{k: round(c[k]) if c.get(k) is not None else 0 for k in COUNTS},
                    "progress": round(float(p["progress"]), 4),
                }
            )
        body = {
            "player_id": player_id,
            "player": latest[-1]["player"],
            "names": list(dict.fromkeys(r["player"] for r in latest)),
            "teams": list(dict.fromkeys(r["team"] for r in latest)),
            "seasons": seasons,
            "season": season,
            "history": history,
            "outcome": None
            if outcome is None
            else {k: _iso(outcome[k]) for k in OUTCOME_FIELDS if k != "player"},
        }
        return json_response(body)


def _isoformat(times: pa.ChunkedArray) -> pa.Array:
    """UTC timestamps as ``datetime.isoformat`` writes them (``...T03:00:00+00:00``), vectorised:
    each distinct time is formatted once (a page's rows mostly share a few as-of times)."""
    encoded = pc.dictionary_encode(_one_chunk(times))
    text = pc.strftime(encoded.dictionary, format="%Y-%m-%dT%H:%M:%S")
    text = pc.replace_substring_regex(text, pattern=r"\.000000$", replacement="")
    text = pc.binary_join_element_wise(text, "+00:00", "")
    return text.take(encoded.indices)


def _joined(rows: pa.Table, other: pa.Table) -> pa.Table:
    """``rows`` left-joined with ``other`` on ``player_id``, in ``rows``' order."""
    order = pa.array(np.arange(rows.num_rows))
    table = rows.select(["player_id"]).append_column("_i", order)
    return table.join(other, "player_id", join_type="left outer").sort_by("_i")


_OUTCOME_COLUMNS = ("outcome_beat", "outcome_resolution")
_NULL_TYPES = {
    PAGE_PLAYER_COLUMNS: [PAGE_SCHEMA.field(name).type for name in PAGE_PLAYER_COLUMNS],
    _OUTCOME_COLUMNS: [PAGE_SCHEMA.field(name).type for name in _OUTCOME_COLUMNS],
}


def _item_arrays(rows: pa.Table | None) -> dict[str, pa.Array]:
    """A page's item fields (:data:`PREDICTION_FIELDS`, then ``outcome_beat`` and
    ``outcome_resolution``) as Arrow arrays in row order, from ``rows`` (a page's
    :data:`_PAGE_COLUMNS` with ``change``, :data:`PAGE_PLAYER_COLUMNS` and
    :data:`_OUTCOME_COLUMNS`).

    Vectorised (a page is up to 1,000 rows; a Python step per field and row would dominate
    the page's time). A player without a feature row gets ``""`` and zero counts; a missing
    ``change`` is null; counts are whole numbers (stored as float32 model inputs), ``progress``
    is rounded to 4 places, ``as_of_time`` is ISO 8601 as ``datetime.isoformat`` writes it.
    """
    if rows is None:
        rows = pa.table(
            {name: pa.array([], _ITEM_TYPES.get(name, pa.float64())) for name in _ITEM_SOURCE_COLUMNS}
        )
    change = rows.column("change").combine_chunks()
    fields: dict[str, pa.Array] = {
        "player_id": rows.column("player_id"),
        "player": pc.fill_null(rows.column("player"), ""),
        "team": pc.fill_null(rows.column("team"), ""),
        "probability": rows.column("probability"),
        "change": pc.if_else(pc.is_nan(change), pa.scalar(None, pa.float64()), change),
        **{
            c: pc.fill_null(pc.round(rows.column(c).cast(pa.float64())), 0.0).cast(pa.int64()) for c in COUNTS
        },
        "progress": pc.round(rows.column("progress").cast(pa.float64()), 4),
        "as_of_seq": rows.column("as_of_seq"),
        "as_of_time": _isoformat(rows.column("as_of_time")),
        "model_version": rows.column("model_version"),
        "outcome_beat": rows.column("outcome_beat"),
        "outcome_resolution": rows.column("outcome_resolution"),
    }
    return {name: _one_chunk(value) for name, value in fields.items()}


_ITEM_KEYS = (*PREDICTION_FIELDS, "outcome")
_ITEM_SOURCE_COLUMNS = (*_PAGE_COLUMNS, "change", *PAGE_PLAYER_COLUMNS, *_OUTCOME_COLUMNS)
_ITEM_TYPES = {f.name: f.type for f in PAGE_SCHEMA}


def _one_chunk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Leading characters a spreadsheet may take for a formula (OWASP's CSV injection list)."""


def _csv_cell(value: object) -> object:
    """One CSV field: ``None`` empty, booleans ``true``/``false``, a string that could start a
    formula behind a ``'`` (OWASP's defence against CSV injection); numbers as they are, so a
    negative ``change`` stays a number."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_column(values: pa.Array) -> list[object]:
    """A column's CSV cells as :func:`_csv_cell` makes them, vectorised: strings that could
    start a formula behind a ``'``, booleans ``true``/``false``, null as ``None`` (which the
    ``csv`` module writes as an empty field), numbers as they are."""
    if pa.types.is_string(values.type):
        formula = pc.match_substring_regex(values, _FORMULA_PATTERN)
        values = pc.if_else(formula, pc.binary_join_element_wise("'", values, ""), values)
    elif pa.types.is_boolean(values.type):
        values = pc.if_else(values, "true", "false")
    return values.to_pylist()  # type: ignore[no-any-return]


_FORMULA_PATTERN = "^[=+@\\-\t\r]"
""":data:`_FORMULA_START` as a regular expression."""


def _csv(
    request: web.Request,
    header: list[str],
    rows: Iterable[Sequence[object]],
    cursor: str | None,
    *,
    cells: bool = False,
) -> web.Response:
    """CSV with a header row; ``None`` as an empty field; the next page in ``Link: rel="next"``.

    String cells starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a
    leading ``'`` (:func:`_csv_cell`), so a stored name cannot run as a spreadsheet formula;
    numbers are written as numbers. ``cells``: ``rows`` hold cells made so already
    (:func:`_csv_column`), written as they are.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    if cells:
        writer.writerows(rows)
    else:
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row])
    headers = {}
    if cursor is not None:
        headers["Link"] = f'<{request.rel_url.update_query(cursor=cursor)}>; rel="next"'
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8", headers=headers)


def add_read_routes(app: web.Application, state: AdminState) -> None:
    """Add ``GET /v1/predictions``, ``/v1/players/{player_id}`` and ``/v1/outcomes`` to ``app``."""
    ReadRoutes(state).register(app)
