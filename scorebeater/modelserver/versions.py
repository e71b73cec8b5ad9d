"""Which directories under a model's base path are versions, and when one has changed.

A child directory whose whole name is a decimal integer (fitting in an int64, as TF Serving
requires) is a version; anything else (``.tmp-3``, ``README``) is skipped. A version's
fingerprint (inodes, mtimes and sizes of the directory, ``saved_model.pb``/``.pbtxt`` and
``variables``) changes when it is replaced or completed, which is how the registry knows a
version that failed to load deserves another try.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

INT64_MAX = 2**63 - 1
_VERSION_DIR = re.compile(r"[0-9]+")

Fingerprint = tuple[int, ...]
"""Compared for equality only: its layout is not an interface."""


def scan_versions(base_path: Path) -> dict[int, tuple[Path, Fingerprint]] | None:
    """Version directories under ``base_path`` with their fingerprints; ``None`` if it is missing.

    Blocking (lists and stats the directory): call in a worker thread. A directory removed
    while listing is left out; a version spelt twice (``007`` and ``7``) counts once.
    """
    try:
        entries = sorted(os.scandir(base_path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    found: dict[int, tuple[Path, Fingerprint]] = {}
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry.name) or not entry.is_dir():
            continue
        version = int(entry.name)
        if version > INT64_MAX or version in found:  # "007" and "7": the first one wins
            continue
        path = Path(entry.path)
        try:
            st = entry.stat()
            parts = [st.st_ino, st.st_mtime_ns]
            for child in ("saved_model.pb", "saved_model.pbtxt", "variables"):
                with contextlib.suppress(FileNotFoundError):
                    cst = (path / child).stat()
                    parts += [cst.st_ino, cst.st_mtime_ns, cst.st_size]
        except FileNotFoundError:  # removed while listing
            continue
        found[version] = (path, tuple(parts))
    return found
