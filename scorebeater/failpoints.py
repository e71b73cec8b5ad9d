"""Failpoints: named places where a fault test makes this process misbehave on purpose.

Inert unless ``SCOREBEATER_FAILPOINTS`` is set in the environment (a dictionary lookup per hit
otherwise); set by the fault and replica tests only, never by a configuration file. Like
FreeBSD's ``fail(9)`` or TiKV's ``fail-rs``, it reaches moments that a signal sent from
outside hits only by luck: "paused right before a commit" is one.

Format: ``NAME=ACTION[;NAME=ACTION...]``. Names are the :data:`POINTS`; actions:

``stop:PATH``
    when the file ``PATH`` exists, delete it and ``SIGSTOP`` this process (it goes on where it
    stopped on ``SIGCONT``); the test creates the file when it wants the next hit to pause,
    so a point hit hundreds of times pauses exactly once, at a moment the test chose.
"""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import structlog

from scorebeater.errors import FatalError

log = structlog.get_logger(__name__)

ENV = "SCOREBEATER_FAILPOINTS"
POINTS = frozenset({"storage.commit"})
"""``storage.commit``: a storage commit is about to begin (Postgres: before its transaction;
object stores: before the manifest generation is created, the segments already uploaded)."""


@functools.cache
def _armed(spec: str) -> dict[str, Path]:
    """``{point: trigger file}`` from the variable's value.

    Raises:
        FatalError: an unknown point or action, or a malformed entry (named).
    """
    armed: dict[str, Path] = {}
    for entry in filter(None, (part.strip() for part in spec.split(";"))):
        name, _, action = entry.partition("=")
        kind, _, arg = action.partition(":")
        if name not in POINTS:
            known = ", ".join(sorted(POINTS))
            raise FatalError(f"{ENV}: unknown failpoint {name!r} in {entry!r} (known: {known})")
        if kind != "stop" or not arg:
            raise FatalError(f"{ENV}: {entry!r}: the action must be 'stop:PATH'")
        armed[name] = Path(arg)
    return armed


def check() -> None:
    """Validate ``SCOREBEATER_FAILPOINTS`` at start-up (a typo fails at once, not at the hit).

    Raises:
        FatalError: the value is malformed.
    """
    spec = os.environ.get(ENV)
    if spec:
        log.warning("failpoints.armed", points=sorted(_armed(spec)))


def hit(name: str) -> None:
    """Pass failpoint ``name``: act if it is armed and its trigger file exists."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    trigger = _armed(spec).get(name)
    if trigger is None:
        return
    try:
        trigger.unlink()
    except FileNotFoundError:
        return
    log.warning("failpoints.stop", point=name, pid=os.getpid())
    os.kill(os.getpid(), signal.SIGSTOP)
    log.warning("failpoints.resumed", point=name)
