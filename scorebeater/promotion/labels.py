"""A model's version labels in TF Serving's ``models.config``: read them, move one atomically.

TF Serving re-reads the file every ``--model_config_file_poll_wait_seconds`` (the stand-in when
its mtime or size changes), so the file must never be seen half-written: the new text goes to a
temporary file in the same directory, is fsynced, replaces the old file with ``os.replace``
(atomic on POSIX), and the directory is fsynced so the rename survives a crash. A reader sees
the old file or the new one, never a mix; a failure before the rename leaves the old file as it
was. Only the label's value changes (see
:func:`~scorebeater.modelserver.modelsconfig.set_version_label`): comments and layout stay.

Every function here blocks (file I/O): call it through ``asyncio.to_thread`` in async code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from scorebeater.errors import ConfigError
from scorebeater.modelserver.modelsconfig import parse_models_config, set_version_label


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read: {exc}"]) from exc


def read_labels(path: Path, model: str) -> dict[str, int]:
    """``model``'s labels in the file at ``path`` (label -> version; ``{}`` when it has none).

    Raises:
        ConfigError: the file is unreadable or invalid, or declares no model ``model``.
    """
    models = parse_models_config(_read(path), source=str(path), base_dir=path.parent)
    for source in models:
        if source.name == model:
            return dict(source.labels)
    raise ConfigError(str(path), [f"declares no model {model!r} (declared: {[m.name for m in models]})"])


def write_atomically(path: Path, text: str) -> None:
    """Replace the file at ``path`` with ``text`` atomically and durably.

    The temporary file (``.<name>.*.tmp`` in the same directory, so the rename never crosses a
    file system) keeps the old file's permission bits. It is removed when anything fails.

    Raises:
        OSError: the directory is not writable, the disk is full, ...
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileNotFoundError):
            tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)  # os.replace: atomic on POSIX
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_label(path: Path, *, model: str, label: str, version: int) -> int | None:
    """Point ``model``'s ``label`` at ``version`` in the file at ``path``; the previous version.

    Idempotent: when the label already names ``version`` the file is not touched. Does not
    check that the version is served (the caller does: TF Serving refuses a label on a
    version that is not AVAILABLE).

    Returns:
        The version the label named before (``None``: the label was absent and is added).

    Raises:
        ConfigError: the file is unreadable or invalid, declares no model ``model``, or the
            label is not a valid TF Serving label.
        OSError: the new file cannot be written (the old one is left as it was).
    """
    text = _read(path)
    new, previous = set_version_label(text, model=model, label=label, version=version, source=str(path))
    if previous != version:
        write_atomically(path, new)
    return previous
