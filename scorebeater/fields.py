"""One reason-coded field parser for every record that enters from outside the process.

The Score API records (JSON objects, :mod:`scorebeater.scoreapi.records`) and the data loader
(CSV rows, :mod:`scorebeater.data`) read their fields through :class:`Fields`: typed, checked
access to one record, where every failure is a :class:`~scorebeater.errors.ValidationError`
whose ``reason`` is a short, stable code. The codes label
``scorebeater_records_rejected_total{kind, reason}`` and key the loader's ``LoadReport``:
they are an interface (dashboards, alerts and tests read them), so they never change quietly.

The two sources differ in two ways, and only there; a :class:`Dialect` names which applies:

* **How values arrive.** JSON values are typed: an integer must be a JSON integer, ``null``
  is ``None``, an absent key is missing. CSV cells are text: surrounding blanks are stripped,
  an empty cell is null, integers and flags (``0``/``1``) are parsed from the text.
* **How reasons are named.** The Score API's codes name the fault (its rejections are counted
  per record kind); the loader's name the column (its report counts per file).

================================  ======================  ===================================
fault                             ``Dialect.JSON``        ``Dialect.CSV``
================================  ======================  ===================================
required field absent             ``missing_field``       ``missing_<key>`` (also: empty cell
                                                          of a required integer or text)
wrong type, unparsable            ``bad_type``            ``bad_<key>``
outside its bounds or choices     ``bad_value``           ``bad_<key>``
negative, below its lower bound   ``negative_count``      ``negative_count`` when the bound
                                                          is 0 (a count), else ``bad_<key>``
a count above its plausibility    ``implausible_<name>``  ``implausible_<name>``
bound (:mod:`scorebeater.bounds`)
made > attempted                  ``ftm_gt_fta``          ``ftm_gt_fta``
================================  ======================  ===================================

A plausibility bound (twice a historical record; 50 free throws a game) names the quantity,
not the column: the loader's ``ft`` and the Score API's ``ftm`` both give ``implausible_ftm``.
Other bounds of :mod:`scorebeater.bounds` (ids, seasons, ages) are ranges and fail as bad
values.

A date, date-time, flag or choice that is null or empty fails as a value that does not
parse (``bad_type`` / ``bad_<key>``), not as a missing one, in both dialects.
Record-level checks (``same_teams``, ``wrong_season``, ...) raise through :meth:`Fields.error`
with their own code. Every rejection carries the record's ``key`` when the caller has set it
(:attr:`Fields.key`), so a record fetched again and again can be counted once.
Nothing here does I/O or logs; counting and logging are the caller's.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, TypeVar

from scorebeater.bounds import GAME_ID, GAME_ID_MAX_LENGTH, Bound
from scorebeater.errors import ValidationError

MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"
NEGATIVE_COUNT = "negative_count"
FTM_GT_FTA = "ftm_gt_fta"

T = TypeVar("T")


class Dialect(enum.Enum):
    """Where a record comes from: how its values are encoded and how its reasons are named."""

    JSON = "json"
    CSV = "csv"

    def missing(self, key: str) -> str:
        """The reason for a required field that is absent (or an empty required CSV cell)."""
        return f"missing_{key}" if self is Dialect.CSV else MISSING_FIELD

    def bad_type(self, key: str) -> str:
        """The reason for a value of the wrong type, or text that does not parse."""
        return f"bad_{key}" if self is Dialect.CSV else BAD_TYPE

    def bad_value(self, key: str) -> str:
        """The reason for a well-typed value outside its bounds or choices."""
        return f"bad_{key}" if self is Dialect.CSV else BAD_VALUE

    def below(self, key: str, value: int, lo: int) -> str:
        """The reason for ``value < lo``: ``negative_count`` or a bad value (see the table)."""
        if value < 0 and (lo == 0 or self is Dialect.JSON):
            return NEGATIVE_COUNT
        return self.bad_value(key)


class Fields:
    """Typed, checked access to the fields of one record; every failure is a ``ValidationError``.

    ``what`` names the record in messages (``"game 201400001"``) and may be reassigned once
    the record's id is known; with an empty ``what`` messages name only the field (the loader
    prefixes its own ``file:line``). ``key`` is the record's identity for deduplication
    (``ValidationError.key``), likewise set once known. Reads have no side effects and may be
    repeated.

    Raises:
        ValidationError: ``bad_type`` at construction when ``record`` is not a JSON object.
    """

    __slots__ = ("_csv", "dialect", "key", "record", "what")

    def __init__(
        self, record: object, what: str = "", *, dialect: Dialect = Dialect.JSON, key: str | None = None
    ) -> None:
        if not isinstance(record, dict):
            raise ValidationError(BAD_TYPE, f"{what} is {type(record).__name__}, not an object", key=key)
        self.record: dict[str, Any] = record
        self.what = what
        self.key = key
        self.dialect = dialect
        # Checked for every field of every row the loader reads (~150k rows per load): a bool
        # attribute spares a global and an enum lookup each time.
        self._csv = dialect is Dialect.CSV

    # --- errors --------------------------------------------------------------------------------

    def error(self, reason: str, detail: str) -> ValidationError:
        """A rejection of this record with ``reason``; ``detail`` is prefixed with ``what``."""
        return ValidationError(reason, f"{self.what}: {detail}" if self.what else detail, key=self.key)

    def invalid(self, key: str, detail: str) -> ValidationError:
        """A rejection for an impossible value of ``key`` (``bad_value`` / ``bad_<key>``)."""
        return self.error(self.dialect.bad_value(key), detail)

    def _bad_type(self, key: str, value: object, expected: str) -> ValidationError:
        return self.error(self.dialect.bad_type(key), f"{key}={value!r} is not {expected}")

    # --- raw access ----------------------------------------------------------------------------

    def raw(self, key: str) -> Any:
        """The value exactly as it arrived. Raises ``missing_field`` / ``missing_<key>`` if absent."""
        try:
            return self.record[key]
        except KeyError:
            raise self.error(self.dialect.missing(key), f"{key} is missing") from None

    def _value(self, key: str) -> Any:
        """The value, with CSV text stripped; ``None`` for JSON null and for an empty CSV cell."""
        # raw() inlined here and in _required(): one call less per field of every loaded row.
        try:
            value = self.record[key]
        except KeyError:
            raise self.error(self.dialect.missing(key), f"{key} is missing") from None
        if self._csv:
            return value.strip() or None
        return value

    def _required(self, key: str) -> Any:
        """:meth:`_value`, where an empty CSV cell is missing (the only way a row leaves a field
        out); a JSON null goes on to fail its type check instead."""
        try:
            value = self.record[key]
        except KeyError:
            raise self.error(self.dialect.missing(key), f"{key} is missing") from None
        if self._csv:
            value = value.strip()
            if not value:
                raise self.error(self.dialect.missing(key), f"{key} is empty")
        return value

    def is_null(self, key: str) -> bool:
        """True for JSON ``null`` and an empty CSV cell. Raises ``missing_*`` if absent."""
        return self._value(key) is None

    # --- typed access --------------------------------------------------------------------------

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int:
        """A whole number within ``[lo, hi]`` (either bound optional).

        JSON wants an integer (not a float, not a boolean); CSV parses decimal text.
        """
        return self._integer(key, self._required(key), lo, hi)

    def opt_integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        """:meth:`integer`, or ``None`` when null."""
        value = self._value(key)
        return None if value is None else self._integer(key, value, lo, hi)

    def within(self, key: str, bound: Bound) -> int:
        """A whole number within ``bound`` (:mod:`scorebeater.bounds`).

        Above a plausibility bound it is ``implausible_<name>``; otherwise as :meth:`integer`.
        """
        return self._integer(key, self._required(key), bound.lo, bound.hi, bound)

    def opt_within(self, key: str, bound: Bound) -> int | None:
        """:meth:`within`, or ``None`` when null."""
        value = self._value(key)
        return None if value is None else self._integer(key, value, bound.lo, bound.hi, bound)

    def _integer(
        self, key: str, value: Any, lo: int | None, hi: int | None, bound: Bound | None = None
    ) -> int:
        if self._csv:
            try:
                number = int(value)
            except ValueError:
                raise self._bad_type(key, value, "an integer") from None
        elif type(value) is int:
            number = value
        else:
            raise self._bad_type(key, value, "an integer")
        if lo is not None and number < lo:
            raise self.error(self.dialect.below(key, number, lo), f"{key}={number} is below {lo}")
        if hi is not None and number > hi:
            raise self._above(key, number, hi, bound)
        return number

    def _above(self, key: str, number: int, hi: int, bound: Bound | None) -> ValidationError:
        if bound is not None and bound.implausible:
            return self.error(bound.reason, f"{key}={number} is above its plausible maximum {hi}")
        return self.invalid(key, f"{key}={number} is above {hi}")

    def text(self, key: str) -> str:
        """A non-empty string (stripped, for CSV)."""
        return self._text(key, self._required(key))

    def opt_text(self, key: str) -> str | None:
        """:meth:`text`, or ``None`` when null."""
        value = self._value(key)
        return None if value is None else self._text(key, value)

    def _text(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self._bad_type(key, value, "a non-empty string")
        return value

    def numeric_id(self, key: str, bound: Bound = GAME_ID) -> str:
        """An id of ASCII digits (leading zeros allowed, at most ``GAME_ID_MAX_LENGTH``) whose
        value is within ``bound``; returned as the text it arrived as."""
        value = self.text(key)
        # isdigit() alone would pass "٣" and "²"; int() alone would pass "+3", " 3" and "3_0".
        if not (value.isascii() and value.isdigit()):
            raise self.invalid(key, f"{key}={value!r} is not ASCII digits")
        if len(value) > GAME_ID_MAX_LENGTH or int(value) not in bound:
            raise self.invalid(key, f"{key}={value[:40]!r} is outside {bound}")
        return value

    def flag(self, key: str) -> bool:
        """A boolean: JSON ``true``/``false``, CSV ``1``/``0``."""
        value: object = self._value(key)
        if isinstance(value, bool):
            return value
        if self._csv and value in ("0", "1"):
            return value == "1"
        raise self._bad_type(key, value, "0 or 1" if self._csv else "a boolean")

    def choice(self, key: str, choices: tuple[T, ...]) -> T:
        """The one of ``choices`` equal to the value."""
        value = self._value(key)
        for choice in choices:
            if value == choice:
                return choice
        raise self.invalid(key, f"{key}={value!r} is not one of {choices}")

    def date(self, key: str) -> dt.date:
        """An ISO 8601 calendar date."""
        value = self._value(key)
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise self._bad_type(key, value, "an ISO date")

    def opt_date(self, key: str) -> dt.date | None:
        """:meth:`date`, or ``None`` when null."""
        return None if self.is_null(key) else self.date(key)

    def time(self, key: str) -> dt.datetime:
        """An RFC 3339 date-time with an offset, converted to UTC."""
        value = self._value(key)
        if not isinstance(value, str):
            raise self._bad_type(key, value, "an RFC 3339 date-time")
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self._bad_type(key, value, "an RFC 3339 date-time") from None
        if when.tzinfo is None:
            raise self._bad_type(key, value, "a date-time with an offset")
        return when.astimezone(dt.UTC)

    def opt_time(self, key: str) -> dt.datetime | None:
        """:meth:`time`, or ``None`` when null."""
        return None if self.is_null(key) else self.time(key)

    def made_attempted(
        self, made: str, attempted: str, bounds: tuple[Bound, Bound] | None = None
    ) -> tuple[int, int]:
        """Two counts, made then attempted; more made than attempted is ``ftm_gt_fta``.

        ``bounds`` (``(made, attempted)``, e.g. ``bounds.GAME_FREE_THROWS``) are checked
        attempted first: ``ftm = fta = 10**6`` is ``implausible_fta``, ``ftm = 9, fta = 3``
        is ``ftm_gt_fta`` whatever the bounds.
        """
        made_n, attempted_n = self.integer(made, lo=0), self.integer(attempted, lo=0)
        made_bound, attempted_bound = bounds or (None, None)
        if attempted_bound is not None and attempted_n > attempted_bound.hi:
            raise self._above(attempted, attempted_n, attempted_bound.hi, attempted_bound)
        if made_n > attempted_n:
            raise self.error(FTM_GT_FTA, f"{made} {made_n} > {attempted} {attempted_n}")
        if made_bound is not None and made_n > made_bound.hi:
            raise self._above(made, made_n, made_bound.hi, made_bound)
        return made_n, attempted_n


__all__ = [
    "BAD_TYPE",
    "BAD_VALUE",
    "FTM_GT_FTA",
    "MISSING_FIELD",
    "NEGATIVE_COUNT",
    "Dialect",
    "Fields",
]
