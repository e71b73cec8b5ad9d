"""Secrets and the process environment: the only module of the package that reads ``os.environ``.

A config file never holds a secret; it names the environment variable that does
(``token_env = "SCOREBEATER_ADMIN_TOKEN"``). The value is wrapped in :class:`Secret`, whose
``repr`` and ``str`` never show it, so it cannot leak into logs, errors or ``check-config``.

A secret pasted where a variable's name belongs (a DSN in ``dsn_env``, a token in
``token_env``) is refused without being echoed (:func:`env_name_problem`), and the
``user:password@`` part of a URL is masked wherever a URL is shown (:func:`redact_urls`).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from scorebeater.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_SECRET_MARKERS = ("://", "@", "=", ":")
# A variable's name is words joined by "_"; a token or key is one long run of letters and digits.
_LONG_RUN = 16
_MAX_NAME = 100
# Where a URL ends in a longer text (a repr, a message): blanks and quotes.
_URL_END = re.compile(r"[\s'\"]")


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


def looks_like_secret(value: str) -> bool:
    """Whether ``value`` looks like a secret (URL, DSN, ``key=value``, token), not a name.

    True for a value holding ``://``, ``@``, ``=``, ``:`` or blanks, one over 100 characters,
    or one with a run of 16+ characters between underscores that mixes letters and digits
    (``AKIAIOSFODNN7EXAMPLE``, a hex token); variable names are words joined by ``_``.
    """
    if any(marker in value for marker in _SECRET_MARKERS) or any(c.isspace() for c in value):
        return True
    if len(value) > _MAX_NAME:
        return True
    return any(
        len(run) >= _LONG_RUN and any(c.isdigit() for c in run) and any(c.isalpha() for c in run)
        for run in value.split("_")
    )


def env_name_problem(var: str) -> str | None:
    """Why ``var`` cannot name an environment variable (``A-Z``, ``0-9``, ``_``, no leading digit).

    Returns ``None`` for a valid name; the empty name is valid here (it means "no variable").
    The message never contains ``var``: a value in the wrong place may be the secret itself.
    """
    if not var:
        return None
    if looks_like_secret(var):
        return (
            "looks like a secret value, not an environment variable name (value not shown): "
            "put the secret in the environment and name the variable here"
        )
    if not set(var) <= _ENV_NAME_CHARS or var[0].isdigit():
        return (
            "must name an environment variable: A-Z, 0-9 and _, not starting with a digit (value not shown)"
        )
    return None


def redact_urls(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it replaced by ``***@``.

    A URL runs from its ``://`` to the next blank or quote; its userinfo, up to the last
    ``@`` (a password may hold ``/``, ``#`` or ``@`` unencoded). Linear in ``len(text)``.
    """
    parts: list[str] = []
    pos = 0
    while (start := text.find("://", pos)) != -1:
        start += 3
        found = _URL_END.search(text, start)
        end = found.start() if found else len(text)
        at = text.rfind("@", start, end)
        parts.append(text[pos:start])
        if at == -1:
            parts.append(text[start:end])
        else:
            parts.append("***")
            parts.append(text[at:end])
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def secret_from_env(var: str, *, env: Mapping[str, str] | None = None) -> Secret | None:
    """The secret held by environment variable ``var``; ``None`` when the name or the value is empty.

    Args:
        var: the variable's name; not checked here (see :func:`env_name_problem`).
        env: the environment to read (default ``os.environ``); tests pass a dict.

    Config files go through ``load_config``, which also validates the variable's name;
    command-line options through :func:`secret_from_option`.
    """
    if not var:
        return None
    value = (os.environ if env is None else env).get(var, "")
    return Secret(value) if value else None


def secret_from_option(
    var: str, *, option: str, required: bool, env: Mapping[str, str] | None = None
) -> Secret | None:
    """The secret in the environment variable a command-line option names (``--token-env VAR``).

    Args:
        var: the variable's name; empty: no secret (``None``).
        option: the option, for the error (``--token-env``).
        required: a named variable that is unset or empty is an error (else ``None``).
        env: the environment to read (default ``os.environ``); tests pass a dict.

    Raises:
        ConfigError: ``var`` is not a valid name (never echoed), or ``required`` and unset or empty.
    """
    problem = env_name_problem(var)
    if problem is not None:
        raise ConfigError(option, [problem])
    secret = secret_from_env(var, env=env)
    if secret is None and var and required:
        raise ConfigError(
            option,
            [f"environment variable {var} is not set or is empty (pass {option} '' to run without one)"],
        )
    return secret
