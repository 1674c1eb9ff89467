"""Output paths checked before any work starts: a clear error, not an ``OSError`` half-way through a command."""

from __future__ import annotations

import os
from pathlib import Path

from dsmpnn.errors import DsmpnnError

__all__ = ["check_output_path", "created_mode", "directory_mode"]


def check_output_path(path: str | os.PathLike, kind: str = "file", what: str = "--out") -> Path:
    """Refuse an output ``path`` that cannot be created: a file where a directory is expected (or the reverse), or
    a nearest existing ancestor that is a file or not writable. Creates nothing; returns ``Path(path)``.

    ``kind``: "file" or "directory"; ``what`` names the option or role in the message (e.g. "--out").
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise DsmpnnError(f"{path}: {what} is a directory, expected a file name")
    if kind == "directory" and path.exists() and not path.is_dir():
        raise DsmpnnError(f"{path}: {what} exists and is not a directory")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the nearest existing ancestor
        parent = parent.parent
    if not parent.is_dir():
        raise DsmpnnError(f"{path}: cannot create {what} here, because {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DsmpnnError(f"{path}: cannot create {what} here, because {parent} is not writable")
    return path


def created_mode(base: int = 0o777) -> int:
    """The mode ``open``/``mkdir`` give a new file (``base`` 0o666) or directory (0o777) under the current umask,
    ``base & ~umask``: for files and directories made by ``tempfile`` (always 0600/0700) and renamed into place."""
    mask = os.umask(0o022)
    os.umask(mask)
    return base & ~mask


def directory_mode() -> int:
    """:func:`created_mode` of a directory."""
    return created_mode(0o777)
