"""Secrets and the process environment: the only module of the package that reads ``os.environ``.

A config file never holds a secret; it names the environment variable that does
(``token_env = "SCOREBEATER_ADMIN_TOKEN"``). The value is wrapped in :class:`Secret`, whose
``repr`` and ``str`` never show it, so it cannot leak into logs, errors or ``check-config``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class Secret:
    """A secret value read from the environment. Shows as ``Secret('***')`` everywhere."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret itself; call only where it is sent (an HTTP header, a DSN)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def env_name_problem(var: str) -> str | None:
    """Why ``var`` cannot name an environment variable (``A-Z``, ``0-9``, ``_``, no leading digit).

    Returns ``None`` for a valid name; the empty name is valid here (it means "no variable").
    """
    if var and (not set(var) <= _ENV_NAME_CHARS or var[0].isdigit()):
        return f"must name an environment variable (A-Z, 0-9, _), got {var!r}"
    return None


def secret_from_env(var: str, *, env: Mapping[str, str] | None = None) -> Secret | None:
    """The secret held by environment variable ``var``; ``None`` when the name or the value is empty.

    Args:
        var: the variable's name; not checked here (see :func:`env_name_problem`).
        env: the environment to read (default ``os.environ``); tests pass a dict.

    For commands that take no config file (``replay-api --token-env VAR``); config files go
    through ``load_config``, which also validates the variable's name.
    """
    if not var:
        return None
    value = (os.environ if env is None else env).get(var, "")
    return Secret(value) if value else None
