"""Publishing a SavedModel for TF Serving: staged, checked, then one atomic rename.

Layout (TF Serving's model base path)::

    model/score_beater/
        1/                      a published version (never overwritten)
            saved_model.pb, variables/, assets/
            assets.extra/model_card.json   version, seasons, metrics, input schema, revision
            assets.extra/blessing.json     the promotion gate's decision
            assets.extra/reference.json    the fitted rows' distribution (drift reference)
        .tmp-<random>/          a candidate being staged (ignored by TF Serving: not an integer)
        .publish.lock           serialises version allocation between concurrent publishers

:func:`stage` exports the Keras model into a ``.tmp-*`` directory; the gate loads it from
there; :func:`publish` writes the model card and blessing into it and renames it to the next
integer version under an exclusive lock, so a reader (TF Serving's file-system poller, the
stand-in) sees either no version or a complete one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from scorebeater import drift
from scorebeater.errors import ScorebeaterError

log = structlog.get_logger(__name__)

EXTRA_DIR = "assets.extra"
MODEL_CARD = "model_card.json"
BLESSING = "blessing.json"
REFERENCE = drift.REFERENCE_FILE
_LOCK = ".publish.lock"
_TMP_PREFIX = ".tmp-"


class PublishError(ScorebeaterError):
    """A candidate could not be staged or published; ``path`` is where it failed."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


def versions(base_path: Path) -> list[int]:
    """Published versions under ``base_path`` (integer directory names), ascending; [] if none."""
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir() if p.is_dir() and p.name.isdigit())


def latest_version(base_path: Path) -> int | None:
    """The highest published version, or ``None`` when nothing is published."""
    found = versions(base_path)
    return found[-1] if found else None


def read_extra(version_dir: Path, name: str) -> dict[str, Any] | None:
    """A JSON file from ``<version>/assets.extra/``; ``None`` if it does not exist.

    Raises:
        PublishError: the file exists but is not a JSON object.
    """
    path = version_dir / EXTRA_DIR / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PublishError(path, f"unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise PublishError(path, "is not a JSON object")
    return data


def code_revision(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the working tree (``+dirty`` when it has changes), else ``None``."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        head = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [git, "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(  # noqa: S603
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def stage(model: Any, base_path: Path) -> Path:
    """Export a Keras model as a TF Serving SavedModel into a fresh ``.tmp-*`` directory.

    Raises:
        PublishError: the export failed (the partial directory is removed).
    """
    base_path.mkdir(parents=True, exist_ok=True)
    tmp = base_path / f"{_TMP_PREFIX}{secrets.token_hex(6)}"
    try:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PublishError(tmp, f"SavedModel export failed: {exc}") from exc
    log.info("training.model_staged", path=str(tmp))
    return tmp


def discard(staged: Path) -> None:
    """Remove a staged candidate that will not be published (idempotent)."""
    if staged.name.startswith(_TMP_PREFIX):
        shutil.rmtree(staged, ignore_errors=True)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _publish_lock(base_path: Path) -> Iterator[None]:
    with (base_path / _LOCK).open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def publish(
    staged: Path,
    card: Mapping[str, Any],
    blessing: Mapping[str, Any],
    reference: drift.Reference | None = None,
) -> int:
    """Publish a staged candidate as the next version; returns the version number.

    Under an exclusive lock on the base path: choose ``v = max(existing) + 1``, write the
    model card (with ``version = v``), the blessing and the drift ``reference`` (when given:
    :mod:`scorebeater.training.reference`) into ``assets.extra/``, fsync the
    tree, and ``os.rename`` the staged directory to ``<base>/<v>``. A version is never
    overwritten: ``rename`` onto an existing version directory fails rather than replaces.

    Raises:
        PublishError: the staged directory is missing or the rename failed.
    """
    base_path = staged.parent
    if not (staged / "saved_model.pb").is_file():
        raise PublishError(staged, "not a staged SavedModel (no saved_model.pb)")
    with _publish_lock(base_path):
        version = (latest_version(base_path) or 0) + 1
        target = base_path / str(version)
        _write_json(staged / EXTRA_DIR / MODEL_CARD, {**card, "version": version})
        _write_json(staged / EXTRA_DIR / BLESSING, {**blessing, "version": version})
        if reference is not None:
            stamped = dataclasses.replace(
                reference, meta={**reference.meta, "model_version": version, "added_after_export": False}
            )
            _write_json(staged / EXTRA_DIR / REFERENCE, stamped.as_json())
        _fsync_tree(staged)
        if target.exists():
            raise PublishError(target, "version directory already exists; refusing to overwrite")
        try:
            staged.rename(target)
        except OSError as exc:
            raise PublishError(target, f"rename failed: {exc}") from exc
        _fsync_dir(base_path)
    log.info("training.model_published", path=str(target), version=version)
    return version


def record_decision(report_dir: Path, decision: Mapping[str, Any]) -> Path:
    """Keep a gate decision that was not published (``<report_dir>/gate/<time>-<id>.json``)."""
    stamp = str(decision.get("decided_at", "unknown")).replace(":", "").replace("-", "")
    path = report_dir / "gate" / f"{stamp}-{secrets.token_hex(3)}.json"
    _write_json(path, decision)
    return path
